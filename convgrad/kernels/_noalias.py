"""A numba compiler that promises LLVM that a function's arrays do not overlap.

LLVM vectorises a loop over several arrays only after checking, at run time,
that the ranges it writes do not overlap the ranges it reads: one check per
pair of a written and another accessed array. A loop of many arrays (a pixel's
nine taps, four pixels at a time) needs so many that LLVM gives up on
vectorising it ("too many memory checks needed") or spends longer on the
checks than on a short loop. Numba's ``noalias`` flag, set by this pipeline
(``@njit(pipeline_class=NoAliasCompiler)``), marks every pointer argument of the
function ``noalias``, and the checks go away.

Only for functions whose written arrays never overlap any other array argument
(read-only arguments may overlap each other). convgrad's public API guarantees
that for the arrays it passes in: results go to fresh buffers or to ``out``
arrays that share no memory with the inputs (``_arrays.destination``). Numba's
own ``inline="always"`` would drop the flag (it inlines numba IR into a caller
compiled without it), so such functions are called, not inlined by numba.
"""

from numba.core.compiler import Compiler


class NoAliasCompiler(Compiler):
    """Numba's default pipeline with the ``noalias`` flag on."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)
