"""Numba loop kernels: one module per memory layout, one kernel per function.

Every kernel *adds* its result into a destination array the caller provides
(zeroed, or holding gradients to accumulate into), takes C-contiguous,
native-byte-order, writeable arrays in its layout and plain ints for the
geometry, and parallelises only over indices that own their output, so the
result is the same bits whatever the thread count.
"""
