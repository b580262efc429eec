"""A full memory fence callable from Python, for processes that hand data over through shared memory.

The oracle's processes (replicas.py) publish a message by writing it into a shared buffer and then
raising a sequence number; a reader that sees the number must also see the message. x86-64 keeps
stores in order anyway, but ARM does not (stores and loads may be reordered by the CPU), and a plain
NumPy store carries no ordering. `fence()` emits LLVM's sequentially consistent fence (`mfence` /
`dmb ish`): the writer calls it between the message and the number, the reader between seeing the
number and reading the message.
"""

from __future__ import annotations

from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _seq_cst_fence(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit("void()", cache=True, nogil=True)
def fence():
    """Order every load and store before this call before every one after it (across cores)."""
    _seq_cst_fence()
