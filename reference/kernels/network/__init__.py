"""The network's compute (Numba): the kernels behind ops/ and the optimisers.

elementwise (batch norm's fused passes, SiLU's backward, the plane reductions of squeeze-excite and
the head), silu (SiLU forward with its own exp), bn_silu (train-mode BN + SiLU fused), im2col and
layout (the convolutions' data movement), depthwise (the depthwise convolution), lanes (the float64
8-lane row sums behind batch norm's reductions), sgd (the SGD-with-momentum update). Importing this
package imports none of them.
"""
