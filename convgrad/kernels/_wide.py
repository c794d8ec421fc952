"""Numba compilers whose functions LLVM vectorises 512 bits wide on AVX-512 CPUs.

LLVM's tuning for Intel's AVX-512 processors prefers 256-bit vectors (the
``prefer-256-bit`` feature; AMD's Zen 4 and 5 get 512 bits), so numba emits
ymm code there unless told otherwise. The process-wide switch
(``NUMBA_CPU_FEATURES`` without ``prefer-256-bit``) is the user's to set, not a
library's, and measured on a 2-core Intel Xeon it slowed the tiny problems'
serial kernels (lenet2 1.07-1.08x the time) while it sped up the dense ones.
These pipelines instead give chosen functions LLVM's per-function attribute
``"prefer-vector-width"="512"``, which is what clang's
``-mprefer-vector-width=512`` sets. On CPUs without AVX-512 LLVM still picks
the widest vectors it has (256 or 128 bits), so the attribute is harmless there.

- ``WideCompiler``: every compiled signature of the function is wide.
- ``WideNoAliasCompiler``: every signature wide, and ``noalias`` on.

Use: ``@njit(pipeline_class=WideCompiler)``. Numba's ``inline="always"`` helpers
inlined into such a function are compiled with it; a function it calls (not
inlined) keeps its own width.

It relies on two numba internals (the lowering class of the ``NativeLowering``
pass, and llvmlite's function attribute set); if the attribute set is not as
expected, functions compile as with numba's default pipeline.
"""

from numba.core import lowering
from numba.core.compiler import Compiler, DefaultPassBuilder
from numba.core.compiler_machinery import register_pass
from numba.core.typed_passes import NativeLowering

PREFER_512 = '"prefer-vector-width"="512"'


class _WideLower(lowering.Lower):
    """Numba's lowering, with the preferred vector width set on the function it lowers."""

    def lower_normal_function(self, fndesc):
        super().lower_normal_function(fndesc)
        attributes = getattr(self.function, "attributes", None)
        if isinstance(attributes, set):
            # llvmlite's FunctionAttributes.add takes only the attribute names it
            # knows; a string attribute added to the set is written out as it is
            set.add(attributes, PREFER_512)


def _lowering_pass(lower_class: type, name: str) -> type:
    """Numba's NativeLowering pass, lowering with ``lower_class``."""

    @register_pass(mutates_CFG=True, analysis_only=False)
    class _Lowering(NativeLowering):
        _name = name

        @property
        def lowering_class(self):
            return lower_class

    return _Lowering


class WideCompiler(Compiler):
    """Numba's default nopython pipeline, lowering with ``prefer-vector-width`` 512."""

    lowering_pass = _lowering_pass(_WideLower, "convgrad_wide_lowering")

    def define_pipelines(self):
        if self.state.flags.force_pyobject:
            return super().define_pipelines()
        manager = DefaultPassBuilder.define_nopython_pipeline(self.state)
        manager.passes = [
            (self.lowering_pass if kind is NativeLowering else kind, description)
            for kind, description in manager.passes
        ]
        manager.finalize()
        return [manager]


class WideNoAliasCompiler(WideCompiler):
    """``WideCompiler`` with numba's ``noalias`` flag on."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)
