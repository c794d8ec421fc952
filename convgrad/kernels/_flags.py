"""Compile flags shared by every kernel, defined once."""

# LLVM fast-math flags *without* ``nnan`` and ``ninf``: reassociation (needed for
# reductions to vectorise), FMA contraction, no signed zeros, reciprocal and
# approximate functions. Leaving out nnan/ninf keeps IEEE NaN and Inf semantics,
# so a NaN or Inf in an input reaches exactly the gradient entries it should.
# (``fastmath=True`` would let LLVM assume that NaN/Inf never occur.)
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
