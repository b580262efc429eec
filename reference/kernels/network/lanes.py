"""Float64 row sums over 8 interleaved partial sums, as explicit vector IR (Numba intrinsics).

Batch norm's reductions (kernels/network/elementwise.py: `_row_sum`, `_row_dot`, `_row_centred_squares`) add
a row into 8 float64 partial sums, partial j taking the values j, j + 8, j + 16, ..., then combine
them as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)): a fixed association, so the result does
not depend on the machine. Written as 8 scalar accumulators, LLVM left them scalar (79 `vaddsd`, no
vector add in the kernels: ~1 cycle per value). Here the 8 partials are the 8 lanes of one
<8 x double> accumulator (two AVX registers): each iteration loads 8 values, widens them to float64
and adds them lane by lane, which is the same operation on the same values in the same order, so the
same bits (tests/reference/test_kernels_lanes.py checks them against the scalar loops), ~3x faster.

Each intrinsic covers the first n - n % 8 values of a 1-D C-contiguous float32 / float64 row and
returns the combined partials; the caller adds the remaining values (its scalar tail). No fast-math
flag is set on any instruction, so LLVM may not reassociate the adds or contract a multiply into them.

Numba caches a kernel by its own file: after editing this one, clear NUMBA_CACHE_DIR or touch the files
whose kernels use it (elementwise.py, bn_silu.py).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LANES = 8
_F64 = ir.DoubleType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _is_row(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype in (types.float32,
                                                                                           types.float64)


def _row_loader(context, builder, row_type, row):
    """(n, load) for a row: load(builder, i) is the <8 x dtype> of values i..i+7 (unaligned)."""
    ary = context.make_array(row_type)(context, builder, value=row)
    elt = context.get_data_type(row_type.dtype)
    vec = ir.VectorType(elt, LANES)
    align = row_type.dtype.bitwidth // 8

    def load(b, i):
        return b.load(b.gep(ary.data, [i], inbounds=True, source_etype=elt), typ=vec, align=align)
    return builder.extract_value(ary.shape, 0), load


def _widened(builder, v, dtype):
    """v as <8 x double> (float32 -> float64 is exact)."""
    return builder.fpext(v, ir.VectorType(_F64, LANES)) if dtype == types.float32 else v


def _lane_sums(builder, n, term):
    """The IR loop: acc = sum of term(i) over i = 0, 8, 16, ... below n - n % 8, lane by lane from +0.0;
    returns ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) as a double."""
    vec = ir.VectorType(_F64, LANES)
    zero = ir.Constant(vec, None)
    end = builder.sub(n, builder.srem(n, ir.Constant(_I64, LANES)))
    entry = builder.basic_block
    loop = builder.append_basic_block("lanes.loop")
    done = builder.append_basic_block("lanes.done")
    builder.cbranch(builder.icmp_signed(">", end, ir.Constant(_I64, 0)), loop, done)

    builder.position_at_end(loop)
    i = builder.phi(_I64)
    acc = builder.phi(vec)
    summed = builder.fadd(acc, term(builder, i))
    following = builder.add(i, ir.Constant(_I64, LANES))
    i.add_incoming(ir.Constant(_I64, 0), entry)
    i.add_incoming(following, loop)
    acc.add_incoming(zero, entry)
    acc.add_incoming(summed, loop)
    builder.cbranch(builder.icmp_signed("<", following, end), loop, done)

    builder.position_at_end(done)
    total = builder.phi(vec)
    total.add_incoming(zero, entry)
    total.add_incoming(summed, loop)
    a = [builder.extract_element(total, ir.Constant(_I32, j)) for j in range(LANES)]
    add = builder.fadd
    return add(add(add(a[0], a[1]), add(a[2], a[3])), add(add(a[4], a[5]), add(a[6], a[7])))


@intrinsic
def lanes_sum(typingctx, r):
    """The 8 partial sums of r[:n - n % 8] (float64), combined."""
    if not _is_row(r):
        return None

    def codegen(context, builder, signature, args):
        n, load = _row_loader(context, builder, r, args[0])
        return _lane_sums(builder, n, lambda b, i: _widened(b, load(b, i), r.dtype))
    return types.float64(r), codegen


@intrinsic
def lanes_dot(typingctx, a, b):
    """The 8 partial sums of float64(a[i]) * float64(b[i]) over i < n - n % 8 (n = len(a) = len(b)), combined."""
    if not (_is_row(a) and _is_row(b)):
        return None

    def codegen(context, builder, signature, args):
        n, load_a = _row_loader(context, builder, a, args[0])
        _, load_b = _row_loader(context, builder, b, args[1])
        return _lane_sums(builder, n, lambda bl, i: bl.fmul(_widened(bl, load_a(bl, i), a.dtype),
                                                            _widened(bl, load_b(bl, i), b.dtype)))
    return types.float64(a, b), codegen


@intrinsic
def lanes_centred_squares(typingctx, r, mu):
    """The 8 partial sums of float64(d) * float64(d), d = r[i] - mu rounded to r's dtype, combined."""
    if not _is_row(r) or mu != r.dtype:
        return None

    def codegen(context, builder, signature, args):
        n, load = _row_loader(context, builder, r, args[0])
        vec = ir.VectorType(context.get_data_type(r.dtype), LANES)
        one_lane = builder.insert_element(ir.Constant(vec, None), args[1], ir.Constant(_I32, 0))
        mus = builder.shuffle_vector(one_lane, one_lane, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

        def term(b, i):
            d = _widened(b, b.fsub(load(b, i), mus), r.dtype)
            return b.fmul(d, d)
        return _lane_sums(builder, n, term)
    return types.float64(r, mu), codegen


# ---- NumPy twins (the same adds in the same order: the same bits) ------------------------------------
def _lanes_combined_naive(terms: np.ndarray) -> float:
    """terms[:n - n % 8] (float64) added into 8 partials lane by lane, from +0.0, then combined as the IR does."""
    acc = np.zeros(LANES)
    for i in range(0, terms.shape[0] - terms.shape[0] % LANES, LANES):
        acc += terms[i:i + LANES]  # lane j adds term i + j: one IEEE add per lane, in order
    return float(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])))


def lanes_sum_naive(r: np.ndarray) -> float:
    return _lanes_combined_naive(r.astype(np.float64))


def lanes_dot_naive(a: np.ndarray, b: np.ndarray) -> float:
    return _lanes_combined_naive(a.astype(np.float64) * b.astype(np.float64))


def lanes_centred_squares_naive(r: np.ndarray, mu) -> float:
    d = (r - r.dtype.type(mu)).astype(np.float64)  # each difference rounded to r's dtype first
    return _lanes_combined_naive(d * d)


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"lanes_sum": "lanes_sum_naive", "lanes_dot": "lanes_dot_naive",
         "lanes_centred_squares": "lanes_centred_squares_naive"}
