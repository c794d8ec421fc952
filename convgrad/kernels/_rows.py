"""The flat kernels' shifted plane rows (``nchw_flat.py``), written in LLVM IR.

At stride 1 the flat kernels copy each input channel into KW planes, plane q
the zero-padded channel moved left by q*dw columns with grad_output's row
pitch OW (``shifted_rows``), and add KW such planes of grad_input back into
the channel (``add_shifted_rows``); where grad_input's weighted columns (``_columns.py``)
fit in one piece, ``add_column_taps`` adds them into the channel's rows without the
planes. Rows are short (8-64 values): as numba
loops (a memcpy per row, or a row loop LLVM guards with overlap checks) the
two took a third of lenet2's backward. Here each row is a few vectors with
masked loads and stores: the lanes outside the image, or past the row, are
not touched (a masked lane is never read, even at an address outside the
array).

Arrays are C-contiguous of one float dtype, addressed by flat offsets; the
caller keeps every unmasked value in bounds. The kernels that call into this
file are cached on disk by their own source: after editing it, delete
``nchw_flat.*`` in ``kernels/__pycache__``.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._blocks import _lane_numbers, _masked_access, _splat
from ._columns import c_float_arrays
from ._lanes import _data, _Vectors


def _float_array_of(array, dtype) -> bool:
    """Whether ``array`` is an array of ``dtype`` (any layout: addressed by the caller's steps)."""
    return isinstance(array, types.Array) and array.dtype == dtype


class _Row:
    """Masked vector steps along one row, for ``v``'s vectors."""

    def __init__(self, builder, v, index):
        self.builder, self.v, self.index = builder, v, index
        self.columns = _lane_numbers(v, index)
        mask_type = ir.VectorType(ir.IntType(1), v.lanes)
        self.masked_load, self.masked_store = _masked_access(builder, v, mask_type)
        self.alignment = ir.Constant(ir.IntType(32), v.width)

    def within(self, first, lo, hi):
        """The lanes of columns first + lane in [lo, hi)."""
        b = self.builder
        column = b.add(_splat(b, first, self.v.lanes), self.columns)
        above = b.icmp_signed(">=", column, _splat(b, lo, self.v.lanes))
        return b.and_(above, b.icmp_signed("<", column, _splat(b, hi, self.v.lanes)))

    def load(self, data, at, mask):
        address = self.builder.bitcast(self.builder.gep(data, [at]), self.v.vector.as_pointer())
        return self.builder.call(self.masked_load, [address, self.alignment, mask, self.v.zero])

    def store(self, value, data, at, mask):
        address = self.builder.bitcast(self.builder.gep(data, [at]), self.v.vector.as_pointer())
        self.builder.call(self.masked_store, [value, address, self.alignment, mask])

    def steps(self, count):
        """A loop over the vectors of a row of ``count`` values: yields the first column."""
        lanes = ir.Constant(self.index, self.v.lanes)
        vectors = self.builder.sdiv(
            self.builder.add(count, ir.Constant(self.index, self.v.lanes - 1)), lanes
        )
        return cgutils.for_range(self.builder, vectors), lanes


def _arrays_and_row(context, builder, sig, dst_value, src_value, src_arg):
    """Both arrays' data, and the row steps in the destination dtype's vectors (``row.v``)."""
    v = _Vectors(context, builder, sig.args[0].dtype)
    d_data = _data(context, builder, sig.args[0], dst_value)
    s_data = _data(context, builder, sig.args[src_arg], src_value)
    return d_data, s_data, _Row(builder, v, context.get_value_type(types.intp))


def _add_planes_into_rows(builder, row, d_data, d_at, d_step, rows, width, planes, pl, dw, pitch,
                          plane_term):  # fmt: skip
    """dst[d_at + r*d_step + c] += the sum over q < planes, in order, of plane q's term.

    For r < rows and c < width, a vector of columns at a time:
    ``plane_term(r, q, column, mask)`` gives plane q's terms for the columns c
    of the vector as ``column`` = c + pl - q*dw, the lanes outside ``mask``
    (c past the row, or ``column`` outside [0, pitch)) zero.
    """
    zero = ir.Constant(rows.type, 0)
    total = cgutils.alloca_once(builder, row.v.vector)
    with cgutils.for_range(builder, rows) as line:
        target = builder.add(d_at, builder.mul(line.index, d_step))
        loop, lanes = row.steps(width)
        with loop as step:
            first = builder.mul(step.index, lanes)
            in_row = row.within(first, zero, width)
            builder.store(row.load(d_data, builder.add(target, first), in_row), total)
            with cgutils.for_range(builder, planes) as plane:
                move = builder.sub(pl, builder.mul(plane.index, dw))
                # columns c with 0 <= c + move < pitch
                lo, hi = builder.sub(zero, move), builder.sub(pitch, move)
                mask = builder.and_(in_row, row.within(first, lo, hi))
                term = plane_term(line.index, plane.index, builder.add(first, move), mask)
                builder.store(builder.fadd(builder.load(total), term), total)
            row.store(builder.load(total), d_data, builder.add(target, first), in_row)


@intrinsic
def shifted_rows(
    typingctx, dst, dst_at, rows, pitch, src, src_at, src_step, top, height, width, move
):
    """A shifted plane: dst[dst_at + u*pitch + v] = src[src_at + (u - top)*src_step + v - move].

    For u < rows and v < pitch, where row u - top of the source (``height`` rows
    of ``width`` values, ``src_step`` apart) and its column v - move exist; 0
    elsewhere. ``src`` may be any strided array whose rows are contiguous.
    """
    if not (c_float_arrays(dst) and _float_array_of(src, dst.dtype)):
        return None
    intp = types.intp
    signature = types.void(dst, intp, intp, intp, src, intp, intp, intp, intp, intp, intp)

    def codegen(context, builder, sig, args):
        d_value, d_at, rows, pitch, s_value, s_at, s_step, top, height, width, move = args
        d_data, s_data, row = _arrays_and_row(context, builder, sig, d_value, s_value, 4)
        zero = ir.Constant(rows.type, 0)
        with cgutils.for_range(builder, rows) as line:
            r = builder.sub(line.index, top)
            inside = builder.and_(
                builder.icmp_signed(">=", r, zero), builder.icmp_signed("<", r, height)
            )
            # an empty column range when the row lies outside the source
            lo = builder.select(inside, move, zero)
            hi = builder.select(inside, builder.add(move, width), zero)
            source = builder.sub(builder.add(s_at, builder.mul(r, s_step)), move)
            target = builder.add(d_at, builder.mul(line.index, pitch))
            loop, lanes = row.steps(pitch)
            with loop as step:
                first = builder.mul(step.index, lanes)
                values = row.load(s_data, builder.add(source, first), row.within(first, lo, hi))
                row.store(
                    values, d_data, builder.add(target, first), row.within(first, zero, pitch)
                )
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def add_shifted_rows(
    typingctx, dst, dst_at, dst_step, rows, width, src, src_at, pitch, plane_step, planes, pl, dw
):
    """Shifted planes added back into an image's rows, plane by plane.

        dst[dst_at + r*dst_step + c] += sum over q < planes of
                                        src[src_at + q*plane_step + r*pitch + c + pl - q*dw]

    for r < rows and c < width, each term where its column c + pl - q*dw lies
    in [0, pitch); in order of q (as separate row additions would). ``dst`` may
    be any strided array whose rows are contiguous.
    """
    if not (c_float_arrays(src) and _float_array_of(dst, src.dtype)):
        return None
    intp = types.intp
    signature = types.void(dst, intp, intp, intp, intp, src, intp, intp, intp, intp, intp, intp)

    def codegen(context, builder, sig, args):
        d_value, d_at, d_step, rows, width, s_value, s_at, pitch, plane_step, planes, pl, dw = args
        d_data, s_data, row = _arrays_and_row(context, builder, sig, d_value, s_value, 5)

        def plane_term(line, q, column, mask):
            at = builder.add(s_at, builder.mul(line, pitch))
            at = builder.add(builder.add(at, builder.mul(q, plane_step)), column)
            return row.load(s_data, at, mask)

        _add_planes_into_rows(
            builder, row, d_data, d_at, d_step, rows, width, planes, pl, dw, pitch, plane_term
        )
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def add_column_taps(
    typingctx, dst, dst_at, dst_step, rows, width, src, src_at, column_step, out_rows, pitch, top,
    kh, kw, dh, pl, dw,
):  # fmt: skip
    """Weighted columns added into an image's rows at their taps' shifts (stride 1).

        dst[dst_at + r*dst_step + c] += sum over q < kw of (sum over p < kh of
            src[src_at + (p*kw + q)*column_step + o*pitch + c + pl - q*dw]),
        o = r + top - p*dh,

    for r < rows and c < width, each term where its output row o lies in
    [0, out_rows) and its column c + pl - q*dw in [0, pitch). The sums run in
    the order of the shifted planes that ``add_shifted_rows`` adds back (a
    plane q's taps in order of p, from zero; the planes in order of q), so the
    result has their bits without the planes. ``dst`` may be any strided array
    whose rows are contiguous; ``src`` is C-contiguous.
    """
    if not (c_float_arrays(src) and _float_array_of(dst, src.dtype)):
        return None
    intp = types.intp
    signature = types.void(dst, *[intp] * 4, src, *[intp] * 10)

    def codegen(context, builder, sig, args):
        d_value, d_at, d_step, rows, width, s_value, s_at, column_step = args[:8]
        out_rows, pitch, top, kh, kw, dh, pl, dw = args[8:]
        d_data, s_data, row = _arrays_and_row(context, builder, sig, d_value, s_value, 5)
        zero = ir.Constant(rows.type, 0)
        plane = cgutils.alloca_once(builder, row.v.vector)

        def plane_term(line, q, column, mask):  # plane q's taps p, from zero, in order
            builder.store(row.v.zero, plane)
            with cgutils.for_range(builder, kh) as tap_row:
                p = tap_row.index
                o = builder.sub(builder.add(line, top), builder.mul(p, dh))
                inside = builder.and_(
                    builder.icmp_signed(">=", o, zero), builder.icmp_signed("<", o, out_rows)
                )
                with builder.if_then(inside):
                    at = builder.mul(builder.add(builder.mul(p, kw), q), column_step)
                    at = builder.add(builder.add(s_at, at), builder.mul(o, pitch))
                    term = row.load(s_data, builder.add(at, column), mask)
                    builder.store(builder.fadd(builder.load(plane), term), plane)
            return builder.load(plane)

        _add_planes_into_rows(
            builder, row, d_data, d_at, d_step, rows, width, kw, pl, dw, pitch, plane_term
        )
        return context.get_dummy_value()

    return signature, codegen
