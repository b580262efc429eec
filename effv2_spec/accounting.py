"""Parameter and multiply-accumulate counts, per unit, per block and in total.

Parameters are counted from the resolved parameter table (so the table and the
count cannot disagree); MACs are those of conv and dense layers (SE's 1x1 convs
included, on their 1x1 pooled input), at the resolved image size. BN, activations,
pooling and the residual add are not counted, as torchvision and timm do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .resolve import ConvBN, Layer, ResolvedModel, SqueezeExcite


@dataclass(frozen=True)
class UnitCount:
    name: str
    kind: str
    params: int
    macs: int
    out_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Accounting:
    units: tuple[UnitCount, ...]
    params: int
    buffers: int
    macs: int

    @property
    def params_with_buffers(self) -> int:
        """Trainable parameters plus BN running statistics (Keras `count_params()`)."""
        return self.params + self.buffers


def unit_macs(unit: Layer) -> int:
    if isinstance(unit, ConvBN):
        oh, ow = unit.out_size
        return oh * ow * unit.out_channels * (unit.in_channels // unit.groups) * unit.kernel * unit.kernel
    if isinstance(unit, SqueezeExcite):
        return 2 * unit.channels * unit.squeeze_channels
    raise TypeError(f"unknown unit {unit!r}")


def unit_shape(unit: Layer) -> tuple[int, int, int]:
    if isinstance(unit, ConvBN):
        return (unit.out_channels, *unit.out_size)
    return (unit.channels, *unit.size)


def count(resolved: ResolvedModel) -> Accounting:
    """Count parameters (trainable, and BN buffers separately) and MACs of `resolved`."""
    by_prefix: dict[str, int] = {}
    for p in resolved.params:
        if p.trainable:
            by_prefix[p.unit] = by_prefix.get(p.unit, 0) + p.numel
    units = []
    for unit in resolved.units():
        units.append(UnitCount(unit.name, unit.kind, by_prefix.get(unit.name, 0), unit_macs(unit), unit_shape(unit)))
    c = resolved.classifier
    units.append(UnitCount(c.name, "dense", by_prefix.get(c.name, 0), c.in_features * c.out_features,
                           (c.out_features, 1, 1)))
    params = sum(p.numel for p in resolved.params if p.trainable)
    buffers = sum(p.numel for p in resolved.params if not p.trainable)
    total_units = sum(u.params for u in units)
    if total_units != params:  # a unit prefix rule that misses a tensor would silently skew per-block rows
        raise AssertionError(f"per-unit parameters {total_units} != table total {params}")
    return Accounting(tuple(units), params, buffers, sum(u.macs for u in units))


def block_rows(resolved: ResolvedModel, acc: Accounting) -> list[dict]:
    """One row per stem / block / head / classifier with shapes, params and MACs."""
    per_unit = {u.name: u for u in acc.units}
    stem = resolved.stem
    rows = [_row("stem", "conv", stem.in_size, per_unit["stem"], resolved.input_channels, stem.out_channels,
                 stem.stride)]
    for b in resolved.blocks:
        params = sum(per_unit[layer.name].params for layer in b.layers)
        macs = sum(per_unit[layer.name].macs for layer in b.layers)
        rows.append({
            "name": b.name, "stage": b.stage, "type": b.type, "kernel": b.kernel, "stride": b.stride,
            "in_channels": b.in_channels, "out_channels": b.out_channels, "expanded_channels": b.expanded_channels,
            "se_channels": b.se_channels, "residual": b.residual, "drop_path_rate": b.drop_path_rate,
            "in_shape": [b.in_channels, *b.in_size], "out_shape": [b.out_channels, *b.out_size],
            "params": params, "macs": macs,
        })
    head = resolved.head
    rows.append(_row("head", "conv", head.in_size, per_unit["head"], head.in_channels, head.out_channels, 1))
    c = per_unit["classifier"]
    rows.append({"name": "classifier", "type": "dense", "in_channels": resolved.classifier.in_features,
                 "out_channels": resolved.classifier.out_features, "params": c.params, "macs": c.macs,
                 "in_shape": [resolved.classifier.in_features], "out_shape": [resolved.classifier.out_features]})
    return rows


def _row(name, kind, in_size, unit: UnitCount, cin, cout, stride) -> dict:
    return {"name": name, "type": kind, "kernel": None, "stride": stride, "in_channels": cin, "out_channels": cout,
            "in_shape": [cin, *in_size], "out_shape": list(unit.out_shape), "params": unit.params, "macs": unit.macs}


# ---- will a training run fit in memory? ------------------------------------------------------------
#: copies of the parameters a training step holds: weights, gradients, two optimiser slots, EMA
_PARAM_COPIES = 5
#: arrays the forward pass keeps per layer output for the backward pass (conv out, BN out, activation)
_ACTIVATION_COPIES = 3


class ResourceError(ValueError):
    """A run that cannot fit in this machine's memory; said before anything large is allocated."""


def training_bytes(resolved: ResolvedModel, batch: int, dtype_bytes: int) -> int:
    """A lower estimate of the memory one training step needs (parameters, their copies, activations)."""
    params = sum(p.numel for p in resolved.params)
    activations = sum(batch * _elements(unit_shape(u)) for u in resolved.units())
    return dtype_bytes * (_PARAM_COPIES * params + _ACTIVATION_COPIES * activations)


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None when the system does not say."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_training_fits(spec, image_size: int, batch: int, dtype: str, memory: int | None = None) -> None:
    """Raise `ResourceError` when a training step of `spec` at `image_size` and `batch` cannot fit in memory.

    The estimate is a lower bound, so a refusal is certain to be right; a run that passes may
    still need more (the data set, framework overhead)."""
    from .resolve import resolve

    memory = physical_memory() if memory is None else memory
    if memory is None:
        return
    size = max(image_size, spec.total_stride)
    need = training_bytes(resolve(spec, size), batch, 8 if dtype == "float64" else 4)
    if need > memory:
        raise ResourceError(f"{spec.name}: a training step at batch {batch} and {size} px in {dtype} needs at least "
                            f"{need / 2**30:,.1f} GiB (parameters, gradients, optimiser state, activations); "
                            f"this machine has {memory / 2**30:,.1f} GiB: use a smaller batch, image size or model")
