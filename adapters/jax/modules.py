"""EfficientNet V1/V2 building blocks in Flax NNX (needs nothing but jax and flax).

This file is both the runtime of `effv2_adapters.jax` and the body of every file that
`effv2 generate --framework jax` writes, so a generated model and `build_model(spec)` run
the very same code. The network is described by a CONFIG table (see `config_from_resolved`
in effv2_adapters.network_table): each row is a resolved unit's fields under their own names,
plus the init rule of every tensor the unit owns; channel counts, kernels, strides, SE widths,
residual flags, drop-path rates and inits come from that table and are never recomputed here.

Layout: NHWC activations and HWIO kernels inside (Flax's native layouts); `EfficientNet.__call__`
takes NHWC images. `forward` / `forward_backward` below take the canonical NCHW images and
are `jax.jit`-compiled. Canonical tensors (OIHW conv kernels, depthwise C x 1 x k x k, dense
(out, in)) are converted at the boundary by `to_canonical` / `load_canonical`; the Flax
state path of every tensor maps to its canonical name by a fixed renaming:

    <unit>.conv.kernel (kh, kw, in/groups, out)  <->  <unit>.conv.weight (out, in/groups, kh, kw)
    <se>.reduce.kernel / <se>.expand.kernel      <->  <se>.reduce.weight / <se>.expand.weight
    <unit>.bn.scale / bias / mean / var          <->  <unit>.bn.weight / bias / running_mean / running_var
    classifier.kernel (in, out)                  <->  classifier.weight (out, in)

Semantics (docs/internals.md): optional in-model input normalisation; conv + BN (+ activation)
units with TF "same" padding computed from the actual input size (extra pixel after) or
symmetric k//2 padding; squeeze-and-excitation; residual with drop path; global average pool,
dropout, dense. BN in training normalises with the biased batch variance and updates the
running statistics with momentum in the PyTorch convention (r = (1 - m) r + m batch), folding
in the biased or the unbiased variance as configured. Convolutions and matmuls run at
`Precision.HIGHEST`.

Random regularisers take optional external masks: `masks["blocks.<i>.drop_path"]` of shape (N,)
and `masks["classifier.dropout"]` of shape (N, features), values 0/1 (1 = keep). Missing masks
are drawn from the model's `nnx.Rngs` stream `dropout`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PRECISION = jax.lax.Precision.HIGHEST


# ---- dtypes ---------------------------------------------------------------------------------
def as_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype from a name, numpy or jax dtype; float64 switches on `jax_enable_x64`."""
    dt = np.dtype(getattr(dtype, "dtype", dtype))
    if dt not in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(jnp.bfloat16), np.dtype(np.float16)):
        raise ValueError(f"unsupported dtype {dtype!r}; use float32, float64, float16 or bfloat16")
    if dt == np.float64 and not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)  # float32 arrays stay float32: every array here has an explicit dtype
    return dt


def _const(shape: Tuple[int, ...], value: float, dtype: Any) -> jax.Array:
    """A constant array, made in numpy and put on the device (no per-shape compilation)."""
    return jnp.asarray(np.full(shape, value, np.dtype(dtype)))


# ---- padding --------------------------------------------------------------------------------
def conv_padding(convention: str, size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding along one axis: TF SAME (the extra pixel goes after) or k//2."""
    if convention == "tf_same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    if convention == "symmetric":
        return kernel // 2, kernel // 2
    raise ValueError(f"unknown padding convention {convention!r}")


# ---- activations ----------------------------------------------------------------------------
def relu6(x: jax.Array) -> jax.Array:
    return jnp.minimum(jnp.maximum(x, 0), 6)


def activate(name: str, x: jax.Array) -> jax.Array:
    """silu x*sigmoid(x); relu; relu6 min(max(x, 0), 6); hard_swish x*relu6(x + 3)/6; the SE gates
    sigmoid and hard_sigmoid relu6(x + 3)/6."""
    if name == "silu":
        return x * jax.nn.sigmoid(x)
    if name == "sigmoid":
        return jax.nn.sigmoid(x)
    if name == "hard_sigmoid":
        return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
    if name == "relu":
        return jnp.maximum(x, 0)
    if name == "relu6":
        return relu6(x)
    if name == "hard_swish":
        return x * relu6(x + 3) / 6
    raise ValueError(f"unknown activation {name!r}")


# ---- leaf modules ---------------------------------------------------------------------------
class Conv(nnx.Module):
    """A conv kernel (HWIO; depthwise k x k x 1 x C), optionally with a bias, and its padding rule."""

    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, groups: int = 1, bias: bool = False,
                 padding: str = "symmetric", dtype: Any = np.float32):
        self.kernel = nnx.Param(_const((size, size, cin // groups, cout), 0.0, dtype))
        self.bias = nnx.Param(_const((cout,), 0.0, dtype)) if bias else None
        self.size, self.stride, self.groups, self.padding = size, stride, groups, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.size, self.stride
        if k == 1 and s == 1 and self.groups == 1:  # a 1x1 conv is a matmul over channels (and compiles faster)
            y = jnp.matmul(x, self.kernel[0, 0], precision=PRECISION)
            return y if self.bias is None else y + self.bias[...]
        pads = [conv_padding(self.padding, x.shape[1], k, s), conv_padding(self.padding, x.shape[2], k, s)]
        if self.groups > 1:  # depthwise (the only grouped conv a spec has)
            return self._depthwise(x, pads)
        y = jax.lax.conv_general_dilated(x, self.kernel[...], (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=self.groups, precision=PRECISION)
        return y if self.bias is None else y + self.bias[...]

    def _depthwise(self, x: jax.Array, pads) -> jax.Array:
        """Depthwise conv as the sum of k*k strided taps, each scaled per channel.

        XLA's CPU backend lowers the weight gradient of a grouped convolution to a dense C x C one:
        gigabytes per layer at EfficientNetV2-L widths (a V2-L gradient asked for 35 GB). Taps are
        elementwise, so forward and backward stay as small as the activations.
        """
        k, s = self.size, self.stride
        xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
        ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
        w = self.kernel[...]
        y = None
        for i in range(k):
            for j in range(k):
                tap = xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * w[i, j, 0]
                y = tap if y is None else y + tap
        return y if self.bias is None else y + self.bias[...]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
    """Training-mode BN over (N, H, W) of NHWC `x`: (y, batch mean, biased batch variance).

    y = (x - mean) / sqrt(var + eps) * scale + bias. The gradient is the closed form (one pass of two
    channel sums), not autodiff through the statistics: the same numbers, and about half the XLA
    kernels to compile. The statistics outputs carry no gradient (they only feed running averages).
    """
    y, res = _bn_train_fwd(x, scale, bias, eps)
    return y, res[1], res[2]


def _bn_train_fwd(x, scale, bias, eps):
    mean = jnp.mean(x, axis=(0, 1, 2))
    xc = x - mean
    var = jnp.mean(jnp.square(xc), axis=(0, 1, 2))  # biased: normalises
    y = xc / jnp.sqrt(var + eps) * scale + bias
    return y, (x, mean, var, scale)


def _bn_train_vjp_fwd(x, scale, bias, eps):
    y, res = _bn_train_fwd(x, scale, bias, eps)
    return (y, res[1], res[2]), res


def _bn_train_vjp_bwd(eps, res, cotangents):
    x, mean, var, scale = res
    dy = cotangents[0]
    n = x.shape[0] * x.shape[1] * x.shape[2]
    inv = 1.0 / jnp.sqrt(var + eps)
    xhat = (x - mean) * inv
    dbias = jnp.sum(dy, axis=(0, 1, 2))
    dscale = jnp.sum(dy * xhat, axis=(0, 1, 2))
    dx = (scale * inv / n) * (n * dy - dbias - xhat * dscale)
    return dx, dscale, dbias


batch_norm_train.defvjp(_bn_train_vjp_fwd, _bn_train_vjp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train_grouped(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, groups: int):
    """`batch_norm_train` with statistics per group: the batch cut into `groups` contiguous groups of
    N/groups samples, each normalised with its own mean and biased variance over (N/groups, H, W).

    Returns (y, mean, var) with mean and var of shape (groups, C). Under SPMD `jit` on a batch sharded
    over devices, a group inside one device stays local; a group spanning devices is reduced across them.
    """
    y, res = _bn_group_fwd(x, scale, bias, eps, groups)
    return y, res[1][:, 0, 0, 0], res[2][:, 0, 0, 0]


def _bn_group_fwd(x, scale, bias, eps, groups):
    xg = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    mean = jnp.mean(xg, axis=(1, 2, 3), keepdims=True)
    xc = xg - mean
    var = jnp.mean(jnp.square(xc), axis=(1, 2, 3), keepdims=True)
    y = xc / jnp.sqrt(var + eps) * scale + bias
    return y.reshape(x.shape), (xg, mean, var, scale)


def _bn_group_vjp_fwd(x, scale, bias, eps, groups):
    y, res = _bn_group_fwd(x, scale, bias, eps, groups)
    return (y, res[1][:, 0, 0, 0], res[2][:, 0, 0, 0]), res


def _bn_group_vjp_bwd(eps, groups, res, cotangents):
    xg, mean, var, scale = res
    dy = cotangents[0].reshape(xg.shape)
    n = xg.shape[1] * xg.shape[2] * xg.shape[3]
    inv = 1.0 / jnp.sqrt(var + eps)
    xhat = (xg - mean) * inv
    dbias = jnp.sum(dy, axis=(1, 2, 3), keepdims=True)
    dscale = jnp.sum(dy * xhat, axis=(1, 2, 3), keepdims=True)
    dx = (scale * inv / n) * (n * dy - dbias - xhat * dscale)
    n_all = xg.shape[0] * xg.shape[1]
    return dx.reshape((n_all,) + xg.shape[2:]), jnp.sum(dscale, axis=(0, 1, 2, 3)), jnp.sum(dbias, axis=(0, 1, 2, 3))


batch_norm_train_grouped.defvjp(_bn_group_vjp_fwd, _bn_group_vjp_bwd)


class BatchNorm(nnx.Module):
    """BN over (N, H, W): scale, bias (Param) and mean, var (BatchStat); momentum in the PyTorch convention."""

    def __init__(self, channels: int, eps: float, momentum: float, running_var: str, dtype: Any = np.float32):
        if running_var not in ("biased", "unbiased"):
            raise ValueError(f"unknown running_var estimator {running_var!r}")
        self.scale = nnx.Param(_const((channels,), 1.0, dtype))
        self.bias = nnx.Param(_const((channels,), 0.0, dtype))
        self.mean = nnx.BatchStat(_const((channels,), 0.0, dtype))
        self.var = nnx.BatchStat(_const((channels,), 1.0, dtype))
        self.eps, self.momentum, self.estimator = float(eps), float(momentum), running_var
        # Trainers set these (static attributes: each value compiles its own step): `groups` > 1 cuts
        # the batch into that many contiguous statistics groups; `frozen` keeps BN in inference mode
        # (running statistics, not updated) while the rest of the network trains.
        self.groups: Optional[int] = None
        self.frozen = False

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        if training and self.frozen:
            training = False
        if training and self.groups is not None and self.groups > 1:
            y, mean, var = batch_norm_train_grouped(x, self.scale[...], self.bias[...], self.eps, self.groups)
            n = (x.shape[0] // self.groups) * x.shape[1] * x.shape[2]
            if self.estimator == "unbiased":
                if n < 2:
                    raise ValueError("batch norm: the unbiased running variance needs more than one value per "
                                     f"channel and statistics group (got {n})")
                var = var * (n / (n - 1))
            mean, folded = jnp.mean(mean, axis=0), jnp.mean(var, axis=0)
        elif training:
            y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.eps)
            n = x.shape[0] * x.shape[1] * x.shape[2]
            folded = var * (n / (n - 1)) if self.estimator == "unbiased" and n > 1 else var
        if training:
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(folded)
            return y
        return (x - self.mean[...]) / jnp.sqrt(self.var[...] + self.eps) * self.scale[...] + self.bias[...]


class Dense(nnx.Module):
    """y = x @ kernel + bias, kernel (in, out)."""

    def __init__(self, fin: int, fout: int, dtype: Any = np.float32):
        self.kernel = nnx.Param(_const((fin, fout), 0.0, dtype))
        self.bias = nnx.Param(_const((fout,), 0.0, dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.matmul(x, self.kernel[...], precision=PRECISION) + self.bias[...]


# ---- units ----------------------------------------------------------------------------------
class ConvBN(nnx.Module):
    """pad -> conv (no bias) -> BN -> activation (if `act`)."""

    def __init__(self, row: dict, cfg: dict, dtype: Any):
        bn = cfg["batch_norm"]
        self.conv = Conv(row["in_channels"], row["out_channels"], row["kernel"], row["stride"], row["groups"], False,
                         cfg["padding"], dtype)
        self.bn = BatchNorm(row["out_channels"], bn["eps"], bn["momentum"], bn["running_var"], dtype)
        self.act = row["activation"]

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        x = self.bn(self.conv(x), training)
        return x if self.act is None else activate(self.act, x)


class SqueezeExcite(nnx.Module):
    """x * gate(expand(act(reduce(mean_HW(x))))), 1x1 convs with bias; gate sigmoid or hard_sigmoid."""

    def __init__(self, row: dict, cfg: dict, dtype: Any):
        self.reduce = Conv(row["channels"], row["squeeze_channels"], 1, bias=True, dtype=dtype)
        self.expand = Conv(row["squeeze_channels"], row["channels"], 1, bias=True, dtype=dtype)
        self.act, self.gate = row["activation"], row["gate"]

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = activate(self.act, self.reduce(s))
        return x * activate(self.gate, self.expand(s))


UNITS = {"conv_bn": ConvBN, "se": SqueezeExcite}


class Block(nnx.Module):
    """Fused-MBConv or MBConv: its layers in order, then residual with drop path when it has one."""

    def __init__(self, row: dict, cfg: dict, dtype: Any):
        order = []
        for layer in row["layers"]:
            name = layer["slot"]  # expand | dw | se | project | fused
            setattr(self, name, UNITS[layer["kind"]](layer, cfg, dtype))
            order.append(name)
        self.order = tuple(order)
        self.residual = bool(row["residual"])
        self.drop_path_rate = float(row["drop_path_rate"])

    def __call__(self, x: jax.Array, training: bool, mask: Optional[jax.Array] = None,
                 rngs: Optional[nnx.Rngs] = None) -> jax.Array:
        out = x
        for name in self.order:
            out = getattr(self, name)(out, training)
        if not self.residual:
            return out
        rate = self.drop_path_rate
        if training and rate > 0.0:
            if mask is None:
                mask = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, (x.shape[0],))
            out = out * (mask.astype(out.dtype).reshape(-1, 1, 1, 1) / (1.0 - rate))
        return x + out


class EfficientNet(nnx.Module):
    """stem -> blocks -> head -> global average pool -> dropout -> classifier; NHWC input."""

    def __init__(self, cfg: dict, dtype: Any = np.float32, seed: int = 0):
        dtype = as_dtype(dtype)
        norm = cfg["normalization"]
        self.name = str(cfg["name"])
        self.dtype = dtype.name
        self.normalize = bool(norm["in_model"])
        self.input_mean = tuple(float(v) for v in norm["mean"])
        self.input_std = tuple(float(v) for v in norm["std"])
        self.stem = ConvBN(cfg["stem"], cfg, dtype)
        self.blocks = nnx.List([Block(row, cfg, dtype) for row in cfg["blocks"]])
        self.head = ConvBN(cfg["head"], cfg, dtype)
        cls = cfg["classifier"]
        self.dropout = float(cls["dropout"])
        self.classifier = Dense(cls["in_features"], cls["out_features"], dtype)
        self.rngs = nnx.Rngs(dropout=seed)

    def features(self, x: jax.Array, training: bool = False,
                 masks: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
        """Pooled features (N, head channels) of NHWC images."""
        masks = masks or {}
        x = x.astype(self.dtype)
        if self.normalize:
            x = (x - jnp.asarray(self.input_mean, x.dtype)) / jnp.asarray(self.input_std, x.dtype)
        x = self.stem(x, training)
        for i, block in enumerate(self.blocks):
            x = block(x, training, masks.get(f"blocks.{i}.drop_path"), self.rngs)
        x = self.head(x, training)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, training: bool = False,
                 masks: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
        """Logits for NHWC images; training uses batch statistics (and updates the running ones)."""
        f = self.features(x, training, masks)
        if training and self.dropout > 0.0:
            mask = (masks or {}).get("classifier.dropout")
            if mask is None:
                mask = jax.random.bernoulli(self.rngs.dropout(), 1.0 - self.dropout, f.shape)
            f = f * mask.astype(f.dtype) / (1.0 - self.dropout)
        return self.classifier(f)


# ---- compiled entry points (canonical NCHW images) ------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, x, training, masks):
    model = nnx.merge(graphdef, state)
    y = model(jnp.transpose(x, (0, 2, 3, 1)), training, masks)
    return y, nnx.state(model)


@functools.partial(jax.jit, static_argnums=(0,))
def _forward_backward(graphdef, params, rest, x, dlogits, masks):
    def objective(p, r):
        r = jax.tree.map(lambda a: a, r)  # fresh Variables at this trace level (BN statistics are written)
        model = nnx.merge(graphdef, p, r)
        y = model(jnp.transpose(x, (0, 2, 3, 1)), True, masks)
        return jnp.sum(y * dlogits.astype(y.dtype)), (y, nnx.state(model, nnx.Not(nnx.Param)))

    (_, (y, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(params, rest)
    return y, grads, new_rest


def _masks(masks: Optional[Mapping[str, Any]], dtype) -> Dict[str, jax.Array]:
    return {k: jnp.asarray(np.asarray(v), dtype) for k, v in (masks or {}).items()}


def forward(model: EfficientNet, x: Any, training: bool = False,
            masks: Optional[Mapping[str, Any]] = None) -> jax.Array:
    """Logits for NCHW images (jit-compiled); training=True updates `model`'s BN running statistics."""
    graphdef, state = nnx.split(model)
    y, state = _forward(graphdef, state, jnp.asarray(np.asarray(x), model.dtype), bool(training),
                        _masks(masks, model.dtype))
    if training:
        nnx.update(model, state)
    return y


def forward_backward(model: EfficientNet, x: Any, dlogits: Any, masks: Optional[Mapping[str, Any]] = None):
    """Training-mode logits and the gradient of sum(logits * dlogits) (an `nnx.State` of Params), jit-compiled.

    Updates `model`'s BN running statistics (and its rng counter)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    y, grads, rest = _forward_backward(graphdef, params, rest, jnp.asarray(np.asarray(x), model.dtype),
                                       jnp.asarray(np.asarray(dlogits), model.dtype), _masks(masks, model.dtype))
    nnx.update(model, rest)
    return y, grads
