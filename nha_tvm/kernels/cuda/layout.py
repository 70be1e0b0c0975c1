"""The thread layout shared by the hand-mapped CUDA kernels: a block of 256 threads seen as a
16 x 16 grid; thread (ty, tx) owns output rows ty + 16 a and columns tx + 16 b, so a warp
(two values of ty) reads consecutive words along a row and broadcasts along a column."""

THREADS = 256
# bytes of static shared memory a CUDA block may have; also the dynamic size from which TVM's
# CUDA runtime opts a kernel into more than that in all (``kernel_plan.launchable``)
STATIC_SHARED_LIMIT = 48 << 10
TX = 16
LOG2_TX = 4  # shuffle steps that reduce over the TX lanes of a row
TY = THREADS // TX
WARPS = THREADS // 32


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
