"""`resolve`: the one place where an `ArchitectureSpec` becomes concrete numbers.

Scaling, channel and depth rounding, SE width, residual rules, drop-path rates,
layer sequences, spatial sizes and the canonical parameter table (names, shapes,
roles, initialisers) are computed here and nowhere else. Backends walk the
resulting tables; that is what makes the reference, PyTorch and JAX agree by
construction.

Canonical names: a conv+BN unit `U` owns `U.conv.weight` (OIHW; depthwise C x 1 x k x k)
and `U.bn.{weight,bias,running_mean,running_var}`; an SE unit `S` owns
`S.reduce.{weight,bias}` and `S.expand.{weight,bias}` (1x1 conv kernels, OIHW); the
classifier owns `classifier.weight` (out, in) and `classifier.bias`. Units are
`stem`, `blocks.<i>.{expand,dw,se,project,fused}` and `head`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, Union

from .architecture import ArchitectureSpec
from .rounding import conv_output_size, round_channels, round_repeats

Size = tuple[int, int]


@dataclass(frozen=True)
class InitRule:
    """How a tensor is initialised: kind and its scale (std for normals, bound for uniform)."""

    kind: Literal["normal", "truncated_normal", "uniform", "zeros", "ones"]
    scale: float = 0.0


@dataclass(frozen=True)
class ParamEntry:
    """One tensor of the canonical parameter table."""

    name: str
    shape: tuple[int, ...]
    role: Literal[
        "conv_kernel", "depthwise_kernel", "se_kernel", "se_bias", "dense_kernel", "dense_bias",
        "bn_gamma", "bn_beta", "bn_running_mean", "bn_running_var",
    ]
    trainable: bool
    init: InitRule
    unit: str = ""
    """The unit that owns the tensor ('blocks.3.project', 'classifier'): no backend parses names."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Slot = Literal["stem", "expand", "dw", "se", "project", "fused", "head"]


@dataclass(frozen=True)
class ConvBN:
    """Conv (no bias) -> BN -> activation (None: none). Depthwise when groups == in_channels."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    activation: str | None
    """The activation's name ('silu', 'relu', ...), or None for a linear unit (the projection)."""
    in_size: Size
    out_size: Size
    kind: Literal["conv_bn"] = "conv_bn"
    slot: Slot = "stem"
    """The unit's attribute name in its block (its canonical name's last part)."""

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class SqueezeExcite:
    """mean over H, W -> 1x1 conv (bias) -> activation -> 1x1 conv (bias) -> gate -> scale the input."""

    name: str
    channels: int
    squeeze_channels: int
    size: Size
    kind: Literal["se"] = "se"
    activation: str = "silu"
    gate: Literal["sigmoid", "hard_sigmoid"] = "sigmoid"
    slot: Slot = "se"


Layer = Union[ConvBN, SqueezeExcite]


@dataclass(frozen=True)
class BlockPlan:
    """One block: its layers in order, then the residual (with drop path) when it has one."""

    index: int
    stage: int
    position: int
    type: Literal["fused_mbconv", "mbconv"]
    in_channels: int
    out_channels: int
    expanded_channels: int
    se_channels: int
    kernel: int
    stride: int
    residual: bool
    drop_path_rate: float
    in_size: Size
    out_size: Size
    layers: tuple[Layer, ...]

    @property
    def name(self) -> str:
        return f"blocks.{self.index}"


@dataclass(frozen=True)
class Classifier:
    """Global average pool -> dropout -> dense (with bias)."""

    name: str
    in_features: int
    out_features: int
    dropout: float


@dataclass(frozen=True)
class ResolvedModel:
    """Everything a backend needs to build the network, as plain tables."""

    spec: ArchitectureSpec
    image_size: Size
    width: float
    depth: float
    stem: ConvBN
    blocks: tuple[BlockPlan, ...]
    head: ConvBN
    classifier: Classifier
    params: tuple[ParamEntry, ...]
    _by_name: dict[str, ParamEntry] = field(repr=False, compare=False, default_factory=dict)

    # conventions, read once so backends do not reach into the spec
    @property
    def padding(self) -> str:
        return self.spec.conventions.padding

    @property
    def activation(self) -> str:
        return self.spec.conventions.activation

    @property
    def bn_eps(self) -> float:
        return self.spec.conventions.batch_norm.eps

    @property
    def bn_momentum(self) -> float:
        return self.spec.conventions.batch_norm.momentum

    @property
    def bn_running_var(self) -> str:
        return self.spec.conventions.batch_norm.running_var

    @property
    def input_channels(self) -> int:
        return self.spec.input.channels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def normalize_in_model(self) -> bool:
        return self.spec.input.normalization.in_model

    @property
    def input_mean(self) -> tuple[float, ...]:
        """Per-channel mean subtracted from the input (inside the model only when normalize_in_model)."""
        return tuple(float(v) for v in self.spec.input.normalization.mean)

    @property
    def input_std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.spec.input.normalization.std)

    def param(self, name: str) -> ParamEntry:
        return self._by_name[name]

    def trainable(self) -> tuple[ParamEntry, ...]:
        return tuple(p for p in self.params if p.trainable)

    def buffers(self) -> tuple[ParamEntry, ...]:
        return tuple(p for p in self.params if not p.trainable)

    def units(self) -> tuple[Layer, ...]:
        """Every conv/SE unit in execution order (stem, block layers, head)."""
        out: list[Layer] = [self.stem]
        for block in self.blocks:
            out.extend(block.layers)
        out.append(self.head)
        return tuple(out)


def compound_image_size(spec: ArchitectureSpec, size: int) -> int:
    """A base image size scaled by gamma^phi under V1 compound scaling (unchanged otherwise)."""
    compound = spec.scaling.compound
    if compound is None:
        return size
    return int(round(size * compound.gamma**compound.phi))


class ImageSizeError(ValueError):
    """An image size the network cannot take. `rule` is the message without the field's name, so a
    command names its own option: f"--image-size: {exc.rule}"."""

    def __init__(self, rule: str):
        super().__init__(f"image_size: {rule}")
        self.rule = rule


def resolve(spec: ArchitectureSpec, image_size: int | Size | None = None) -> ResolvedModel:
    """Resolve `spec` at `image_size` (default: the spec's eval size, compound-scaled for V1).

    Raises ImageSizeError below the network's total stride (the rule the spec applies to its own
    input sizes): every command that resolves at a user's size gets the check from here."""
    if image_size is None:
        image_size = compound_image_size(spec, spec.input.eval_image_size)
    size: Size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shown = str(size[0]) if size[0] == size[1] else f"{size[0]} x {size[1]}"
    if min(size) < 1:
        raise ImageSizeError(f"must be >= 1 (got {shown})")
    if min(size) < spec.total_stride:
        raise ImageSizeError(f"must be >= the network's total stride {spec.total_stride} (got {shown})")
    return _Resolver(spec).run(size)


class _Resolver:
    def __init__(self, spec: ArchitectureSpec):
        self.spec = spec
        sc = spec.scaling
        if sc.compound is not None:
            self.width = sc.compound.beta**sc.compound.phi
            self.depth = sc.compound.alpha**sc.compound.phi
        else:
            self.width, self.depth = sc.width, sc.depth
        self.params: list[ParamEntry] = []

    def channels(self, c: float) -> int:
        sc = self.spec.scaling
        return round_channels(c, self.width, sc.divisor, sc.min_channels, sc.round_limit)

    def run(self, size: Size) -> ResolvedModel:
        spec = self.spec
        stem_out = self.channels(spec.stem.channels)
        stem = self.conv("stem", spec.input.channels, stem_out, spec.stem.kernel, spec.stem.stride, 1, True, size)
        plans = self.stage_plan(stem_out)
        total = len(plans)
        rate = spec.conventions.stochastic_depth.rate
        blocks = []
        cur = stem.out_size
        for index, (stage_idx, pos, stage, block_in, out, stride) in enumerate(plans):
            block = self.block(index, stage_idx, pos, stage, block_in, out, stride, cur, rate * index / total)
            blocks.append(block)
            cur = block.out_size
        last = plans[-1][4]
        head_ch = self.channels(spec.head.channels)
        head = self.conv("head", last, head_ch, 1, 1, 1, True, cur)
        classifier = Classifier("classifier", head_ch, spec.num_classes, spec.head.dropout)
        self.dense(classifier)
        params = tuple(self.params)
        return ResolvedModel(
            spec=spec, image_size=size, width=self.width, depth=self.depth, stem=stem, blocks=tuple(blocks),
            head=head, classifier=classifier, params=params, _by_name={p.name: p for p in params},
        )

    def stage_plan(self, stem_out: int) -> list[tuple]:
        rows = []
        stage_in = stem_out
        for s, stage in enumerate(self.spec.stages):
            out = self.channels(stage.out_channels)
            for j in range(round_repeats(stage.repeats, self.depth)):
                rows.append((s, j, stage, stage_in if j == 0 else out, out, stage.stride if j == 0 else 1))
            stage_in = out
        return rows

    def se_width(self, block_in: int, expanded: int, ratio: float) -> int:
        conv = self.spec.conventions.se
        base = block_in if conv.base == "block_input" else expanded
        if conv.width_rule == "int":
            return max(1, int(base * ratio))
        if conv.width_rule == "round":
            return max(1, round(base * ratio))
        sc = self.spec.scaling
        return round_channels(base * ratio, 1.0, sc.divisor, sc.min_channels, sc.round_limit)

    def block(self, index, stage_idx, pos, stage, block_in, out, stride, size, drop_rate) -> BlockPlan:
        p = f"blocks.{index}"
        k = stage.kernel
        expanded = int(block_in * stage.expand_ratio)
        se = self.se_width(block_in, expanded, stage.se_ratio) if stage.se_ratio else 0
        layers: list[Layer] = []
        cur = size
        if stage.type == "mbconv":
            if stage.expand_ratio != 1:
                layers.append(self.conv(f"{p}.expand", block_in, expanded, 1, 1, 1, True, cur))
            layers.append(self.conv(f"{p}.dw", expanded, expanded, k, stride, expanded, True, cur))
            cur = layers[-1].out_size
            if se:
                layers.append(self.squeeze(f"{p}.se", expanded, se, cur))
            layers.append(self.conv(f"{p}.project", expanded, out, 1, 1, 1, False, cur))
        elif stage.expand_ratio == 1 and self.spec.conventions.fused_expand1 == "single_conv":
            # official FusedMBConvBlock with expand 1: SE (if any) on the input, then one conv + BN + act
            if se:
                layers.append(self.squeeze(f"{p}.se", block_in, se, cur))
            layers.append(self.conv(f"{p}.fused", block_in, out, k, stride, 1, True, cur))
        else:
            layers.append(self.conv(f"{p}.expand", block_in, expanded, k, stride, 1, True, cur))
            cur = layers[-1].out_size
            if se:
                layers.append(self.squeeze(f"{p}.se", expanded, se, cur))
            layers.append(self.conv(f"{p}.project", expanded, out, 1, 1, 1, False, cur))
        residual = stride == 1 and block_in == out
        return BlockPlan(
            index=index, stage=stage_idx, position=pos, type=stage.type, in_channels=block_in, out_channels=out,
            expanded_channels=expanded, se_channels=se, kernel=k, stride=stride, residual=residual,
            drop_path_rate=drop_rate if residual else 0.0, in_size=size, out_size=layers[-1].out_size
            if isinstance(layers[-1], ConvBN) else cur, layers=tuple(layers),
        )

    # ---- units and their parameters -------------------------------------------------
    def conv(self, name, cin, cout, k, stride, groups, act, size) -> ConvBN:
        out_size = (conv_output_size(size[0], k, stride), conv_output_size(size[1], k, stride))
        activation = self.spec.conventions.activation if act else None
        unit = ConvBN(name, cin, cout, k, stride, groups, activation, tuple(size), out_size,
                      slot=name.rsplit(".", 1)[-1])
        init = self.spec.conventions.init
        depthwise = groups > 1
        # TF sees a depthwise kernel as (k, k, C, 1): fan_out = k*k; PyTorch's kaiming sees C*k*k
        fan_out = k * k if depthwise and init.depthwise_fan_out == "kernel_area" else k * k * cout
        role = "depthwise_kernel" if depthwise else "conv_kernel"
        self.add(name, "conv.weight", (cout, cin // groups, k, k), role, True, self.conv_init(fan_out))
        self.batch_norm(name, cout)
        return unit

    def squeeze(self, name, channels, squeeze, size) -> SqueezeExcite:
        dense = self.spec.conventions.init.se == "normal_0.001"
        self.add(name, "reduce.weight", (squeeze, channels, 1, 1), "se_kernel", True,
                 InitRule("normal", 0.001) if dense else self.conv_init(squeeze))
        self.add(name, "reduce.bias", (squeeze,), "se_bias", True, InitRule("zeros"))
        self.add(name, "expand.weight", (channels, squeeze, 1, 1), "se_kernel", True,
                 InitRule("normal", 0.001) if dense else self.conv_init(channels))
        self.add(name, "expand.bias", (channels,), "se_bias", True, InitRule("zeros"))
        conv = self.spec.conventions
        return SqueezeExcite(name, channels, squeeze, tuple(size), activation=conv.se.activation or conv.activation,
                             gate=conv.se.gate)

    def dense(self, c: Classifier) -> None:
        if self.spec.conventions.init.dense == "uniform_fan_out":
            init = InitRule("uniform", 1.0 / math.sqrt(c.out_features))
        else:
            init = InitRule("normal", 0.001)
        self.add(c.name, "weight", (c.out_features, c.in_features), "dense_kernel", True, init)
        self.add(c.name, "bias", (c.out_features,), "dense_bias", True, InitRule("zeros"))

    def batch_norm(self, unit, channels) -> None:
        self.add(unit, "bn.weight", (channels,), "bn_gamma", True, InitRule("ones"))
        self.add(unit, "bn.bias", (channels,), "bn_beta", True, InitRule("zeros"))
        self.add(unit, "bn.running_mean", (channels,), "bn_running_mean", False, InitRule("zeros"))
        self.add(unit, "bn.running_var", (channels,), "bn_running_var", False, InitRule("ones"))

    def conv_init(self, fan_out: int) -> InitRule:
        std = math.sqrt(2.0 / fan_out)
        if self.spec.conventions.init.conv == "truncated_normal_fan_out":
            # Keras VarianceScaling: a normal truncated at 2 std, widened so the variance stays 2/fan_out
            return InitRule("truncated_normal", std / 0.87962566103423978)
        return InitRule("normal", std)

    def add(self, unit: str, name: str, shape, role, trainable, init) -> None:
        """Tensor `name` of `unit` (canonical name: unit.name)."""
        self.params.append(ParamEntry(f"{unit}.{name}", tuple(int(s) for s in shape), role, trainable, init, unit))


def as_resolved(source) -> ResolvedModel:
    """A ResolvedModel from a ResolvedModel, an ArchitectureSpec, or a preset name / spec path:
    the one coercion every backend's entry points accept."""
    if isinstance(source, ResolvedModel):
        return source
    if isinstance(source, ArchitectureSpec):
        return resolve(source)
    if isinstance(source, (str, os.PathLike)):
        from .documents import load_architecture  # documents, and what it imports, need not load for a resolve

        return resolve(load_architecture(source))
    raise TypeError(f"expected an ArchitectureSpec, ResolvedModel, preset name or path, got {type(source).__name__}")
