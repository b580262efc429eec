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


@njit("boolean(int64[::1], int64, int64)", cache=True, nogil=True)
def poll_all_reached(seq, k, polls):
    """Up to `polls` reads of every sequence number (a fence before each, so each read is a fresh load):
    True once all of them are >= k, with a fence after (the messages are read after the numbers)."""
    for _ in range(polls):
        _seq_cst_fence()
        low = seq[0]
        for q in range(1, seq.shape[0]):
            low = min(low, seq[q])
        if low >= k:
            _seq_cst_fence()
            return True
    return False


@njit("boolean(uint8[::1], uint8[::1], int64[::1], int64, int64, int64)", cache=True, nogil=True)
def publish_and_poll(slot, message, seq, rank, k, polls):
    """Copy `message` into this process's `slot`, fence, raise seq[rank] to k (whoever sees k sees the
    message), then `poll_all_reached(seq, k, polls)`: one compiled call for the common case of an
    exchange, where the other processes arrive within microseconds."""
    for i in range(message.shape[0]):
        slot[i] = message[i]
    _seq_cst_fence()
    seq[rank] = k
    return poll_all_reached(seq, k, polls)


# ---- NumPy twins of what the compiled calls compute in one process (their ordering has none) -----------
def poll_all_reached_naive(seq, k, polls) -> bool:
    return polls > 0 and int(seq.min()) >= k


def publish_and_poll_naive(slot, message, seq, rank, k, polls):
    """(slot, seq, reached) after `publish_and_poll`, the arguments left as they are."""
    slot, seq = slot.copy(), seq.copy()
    slot[:message.shape[0]] = message
    seq[rank] = k
    return slot, seq, poll_all_reached_naive(seq, k, polls)


# compiled entry point -> its NumPy twin, or None with the reason (tests/reference/test_kernel_twins.py)
TWINS = {"fence": None, "poll_all_reached": "poll_all_reached_naive", "publish_and_poll": "publish_and_poll_naive"}
NO_TWIN_REASONS = {"fence": "computes no value: it only orders loads and stores across cores (replicas.py; "
                            "tests/reference/test_replicas.py checks the exchanges it orders)"}
