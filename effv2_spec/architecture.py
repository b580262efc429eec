"""`ArchitectureSpec`: an EfficientNet V1/V2 network as a stage table plus conventions.

Every convention on which published implementations disagree (padding, BN, SE width,
the expand-1 fused block, stochastic depth, initialisation, channel rounding) is a
field here, with the official google/automl choice as its default. Nothing about the
network is left to a backend's defaults; `resolve` derives everything else.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from .base import SPEC_VERSION, SafeName, SpecModel

PositiveInt = Annotated[int, Field(ge=1)]
# Upper bounds: far above every published model, low enough that sizes stay ordinary machine
# integers and a typo (10^12 channels) is refused here rather than as a MemoryError or a hang later.
MAX_CHANNELS = 16384
MAX_IMAGE_SIZE = 8192
Channels = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
Kernel = Annotated[int, Field(ge=1, le=15, description="odd kernel size")]
Stride = Literal[1, 2]
SeRatio = Annotated[float, Field(gt=0.0, le=1.0)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


def _check_odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd (got {value}); even kernels have no centre and break 'same' padding")
    return value


class Normalization(SpecModel):
    """Input normalisation `(x - mean) / std` on raw pixel values in [0, 255], per channel."""

    mean: Annotated[tuple[float, ...], Field(max_length=64)] = (128.0, 128.0, 128.0)
    """Per-channel mean subtracted from raw pixels; official V2-S/M/L/XL: 128 ((x-128)/128)."""
    std: Annotated[tuple[float, ...], Field(max_length=64)] = (128.0, 128.0, 128.0)
    """Per-channel divisor; every entry must be > 0. ImageNet (B0-B3, V1): 58.395, 57.12, 57.375."""
    in_model: bool = False
    """True when the model itself normalises its input (Keras); False when the data pipeline does."""

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in value):
            raise ValueError("every std entry must be > 0")
        return value


class EvalPreprocessing(SpecModel):
    """How one evaluation image becomes an `eval_image_size` square (docs/evaluation.md).

    Pixels are resampled as uint8 RGB with Pillow's filter named by `interpolation`; then the
    network input is normalised by `normalization` (outside or inside the model). With S the
    eval size and f the crop fraction:
    'crop_then_resize': centre square of side int(f * min(H, W)), offset ((H - c + 1) // 2,
    (W - c + 1) // 2), resized to S x S (google/automl, efficientnet and effnetv1 pipelines);
    'shorter_side': shorter side to floor(S / f), the other int(floor(S / f) * long / short),
    then a centre S x S crop (torchvision, timm crop_mode 'center');
    'whole_image': the whole image to floor(S / f) x floor(S / f) (aspect ratio not kept), then
    a centre S x S crop (google/automl V2 at S >= 320, timm crop_mode 'squash', Keras load_img).
    Centre crops of the last two start at int(round((H - S) / 2)) (torchvision's rule)."""

    resize: Literal["crop_then_resize", "shorter_side", "whole_image"] = "whole_image"
    """Resize policy (official V2 S/M/L/XL at S >= 320: 'whole_image', no crop)."""
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"
    """Resampling filter, by Pillow's name (official V2 S/M/L/XL: bilinear; B0-B3 and V1: bicubic)."""
    crop_fraction: Annotated[float, Field(ge=0.25, le=1.0)] = 1.0
    """Fraction of the resized image kept by the centre crop, in [0.25, 1]; official B0-B3 and V1:
    S / (S + 32) (0.875 at 224), V2 S/M/L/XL: 1.0 (timm's crop_pct). The bound keeps the resize
    before the crop (S / crop_fraction a side) within 4 S."""


class InputSpec(SpecModel):
    """What the network consumes: NCHW images of `channels` channels."""

    channels: Annotated[int, Field(ge=1, le=64)] = 3
    """Input channels (3 for RGB)."""
    train_image_size: ImageSize
    """Training resolution (the last progressive stage's size; official S: 300)."""
    eval_image_size: ImageSize
    """Evaluation resolution (official S: 384)."""
    normalization: Normalization = Normalization()
    """How raw pixels become network input."""
    eval_preprocessing: EvalPreprocessing = EvalPreprocessing()
    """How an evaluation image is resized and cropped to eval_image_size (effv2 predict / eval)."""

    @model_validator(mode="after")
    def _norm_matches_channels(self) -> "InputSpec":
        n = self.channels
        if len(self.normalization.mean) != n or len(self.normalization.std) != n:
            raise ValueError(
                f"normalization: mean and std need one entry per input channel ({n}); "
                f"got {len(self.normalization.mean)} and {len(self.normalization.std)}"
            )
        return self


class StemSpec(SpecModel):
    """Conv k x k (no bias) -> BN -> activation."""

    kernel: Kernel = 3
    """Stem kernel (official: 3)."""
    stride: Stride = 2
    """Stem stride (official: 2)."""
    channels: Channels
    """Stem output channels before width scaling (official: the first stage's input filters)."""

    _odd = field_validator("kernel")(_check_odd)


class _StageBase(SpecModel):
    kernel: Kernel
    """Kernel of the depthwise conv (MBConv) or of the fused k x k conv (Fused-MBConv). Odd."""
    stride: Stride
    """Stride of the stage's first block; repeats use stride 1."""
    expand_ratio: Annotated[float, Field(ge=1.0, le=16.0)]
    """Expansion factor; the expanded width is int(block input channels * expand_ratio)."""
    out_channels: Channels
    """Stage output channels before width scaling."""
    repeats: Annotated[int, Field(ge=1, le=64)]
    """Blocks in the stage before depth scaling (rounded up after scaling)."""
    se_ratio: SeRatio | None = None
    """Squeeze-and-excitation ratio in (0, 1], or null for no SE."""

    _odd = field_validator("kernel")(_check_odd)


class FusedMBConvStage(_StageBase):
    """Fused-MBConv: k x k conv (expand, with stride) -> [SE] -> 1x1 project; see `fused_expand1`."""

    type: Literal["fused_mbconv"]


class MBConvStage(_StageBase):
    """MBConv: [1x1 expand] -> k x k depthwise (stride) -> [SE] -> 1x1 project."""

    type: Literal["mbconv"]


Stage = Annotated[Union[FusedMBConvStage, MBConvStage], Field(discriminator="type")]


class HeadSpec(SpecModel):
    """Conv 1x1 -> BN -> activation -> global average pool -> dropout -> dense."""

    channels: Channels = 1280
    """Head conv channels before width scaling (official 1280; B2 and B3 get 1408/1536 by scaling)."""
    dropout: Probability = 0.2
    """Dropout rate before the classifier (official S 0.2, M 0.3, L/XL 0.4)."""


class CompoundScaling(SpecModel):
    """EfficientNet V1 compound scaling: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    phi: Annotated[float, Field(ge=0.0, le=16.0)]
    """Compound coefficient."""
    alpha: Annotated[float, Field(ge=1.0, le=4.0)] = 1.2
    """Depth base (V1 paper grid search: 1.2)."""
    beta: Annotated[float, Field(ge=1.0, le=4.0)] = 1.1
    """Width base (V1 paper: 1.1)."""
    gamma: Annotated[float, Field(ge=1.0, le=4.0)] = 1.15
    """Resolution base (V1 paper: 1.15)."""

    @model_validator(mode="after")
    def _derived_in_bounds(self) -> "CompoundScaling":
        # the derived multipliers obey the bounds the explicit width and depth have
        for base, what in ((self.alpha, "depth"), (self.beta, "width")):
            if base**self.phi > 16.0:
                raise ValueError(f"phi: gives {what} multiplier {base**self.phi:.4g} > 16 "
                                 f"(the bound on scaling.{what})")
        return self


class ScalingSpec(SpecModel):
    """Width/depth multipliers and the channel-rounding rule."""

    width: Annotated[float, Field(gt=0.0, le=16.0)] = 1.0
    """Channel multiplier (official B2: 1.1, B3: 1.2; S/M/L/XL bake scaling into the table: 1.0)."""
    depth: Annotated[float, Field(gt=0.0, le=16.0)] = 1.0
    """Repeat multiplier; repeats become ceil(repeats * depth)."""
    compound: CompoundScaling | None = None
    """V1 compound scaling; when set, width and depth must stay 1.0 and are derived from phi."""
    divisor: Annotated[int, Field(ge=1, le=1024)] = 8
    """Channels are rounded to a multiple of this (half up)."""
    min_channels: Channels = 8
    """Lower bound on any rounded channel count."""
    round_limit: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """The '10% rule': if rounding loses more than (1 - round_limit), add one divisor.
    0 disables it (official V2, Keras); 0.9 enables it (official V1, torchvision)."""

    @model_validator(mode="after")
    def _compound_exclusive(self) -> "ScalingSpec":
        if self.compound is not None and (self.width != 1.0 or self.depth != 1.0):
            raise ValueError("compound: width and depth must stay 1.0 when compound scaling is set (phi derives them)")
        return self


class BatchNormSpec(SpecModel):
    """Batch normalisation conventions (stated in the PyTorch momentum convention)."""

    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    """Added to the variance (official/Keras/torchvision V2: 1e-3; PyTorch default: 1e-5)."""
    momentum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """Weight of the new batch statistic: running = (1 - m) * running + m * batch.
    Keras/TF `momentum=0.9` is 0.1 here."""
    running_var: Literal["unbiased", "biased"] = "biased"
    """Estimator folded into running_var: 'biased' (TF/Keras, divide by n) or 'unbiased' (PyTorch, n - 1)."""


class SESpec(SpecModel):
    """How squeeze-and-excitation width is derived."""

    width_rule: Literal["int", "round", "divisible"] = "int"
    """'int': max(1, int(base * ratio)) (official, Keras); 'round': max(1, round(base * ratio)) (timm);
    'divisible': round_channels(base * ratio) with the scaling divisor (d-li14)."""
    base: Literal["block_input", "expanded"] = "block_input"
    """Channels the ratio applies to: the block's input (official) or the expanded width."""
    activation: Literal["silu", "relu"] | None = None
    """Activation between the two SE convs; null: the network's activation (official: swish, as
    torchvision's SqueezeExcitation(activation=SiLU)). 'relu' is MobileNetV3's and timm's
    `se_layer` with act_layer=ReLU."""
    gate: Literal["sigmoid", "hard_sigmoid"] = "sigmoid"
    """The gate on the excitation: sigmoid (official, torchvision, Keras); hard_sigmoid = relu6(x + 3) / 6
    (MobileNetV3, torch.nn.Hardsigmoid)."""


class StochasticDepthSpec(SpecModel):
    """Drop path on residual blocks: block i of N drops with probability rate * i / N."""

    rate: Probability = 0.2
    """Final rate (official survival_prob 0.8, i.e. 0.2); 0 disables drop path."""


class InitSpec(SpecModel):
    """Default initialisation (only matters when training from scratch)."""

    conv: Literal["normal_fan_out", "truncated_normal_fan_out"] = "normal_fan_out"
    """Conv kernels: N(0, sqrt(2 / fan_out)) (official, torchvision, timm) or truncated (Keras)."""
    depthwise_fan_out: Literal["kernel_area", "channels_times_kernel_area"] = "kernel_area"
    """Depthwise fan_out: k*k (official, timm, Keras) or C*k*k (torchvision, d-li14)."""
    dense: Literal["uniform_fan_out", "normal_0.001"] = "uniform_fan_out"
    """Classifier kernel: U(-1/sqrt(out), 1/sqrt(out)) (official, torchvision, timm) or N(0, 0.001) (d-li14)."""
    se: Literal["conv_fan_out", "normal_0.001"] = "conv_fan_out"
    """SE reduce/expand kernels: as conv kernels, N(0, sqrt(2 / fan_out)) (official, torchvision, timm, Keras),
    or N(0, 0.001) (d-li14, whose SE layers are nn.Linear under its dense init)."""


class Conventions(SpecModel):
    """Every choice on which published implementations differ; defaults are google/automl's."""

    padding: Literal["tf_same", "symmetric"] = "tf_same"
    """'tf_same': TF SAME (pad total max((ceil(H/s)-1)s+k-H, 0), extra pixel bottom/right);
    'symmetric': k//2 on every side (PyTorch). They differ only for stride 2 on even sizes."""
    batch_norm: BatchNormSpec = BatchNormSpec()
    """Batch normalisation constants."""
    activation: Literal["silu", "relu", "relu6", "hard_swish"] = "silu"
    """Activation everywhere, SE hidden layer included (official: SiLU)."""
    se: SESpec = SESpec()
    """Squeeze-and-excitation width rule."""
    fused_expand1: Literal["single_conv", "expand_project"] = "single_conv"
    """Fused-MBConv with expand 1: one k x k conv + BN + act (official, torchvision, timm tf_, Keras)
    or k x k conv + BN + act then 1x1 + BN (d-li14, timm rw)."""
    stochastic_depth: StochasticDepthSpec = StochasticDepthSpec()
    """Drop-path schedule."""
    init: InitSpec = InitSpec()
    """Initialisers."""


class ArchitectureSpec(SpecModel):
    """An EfficientNet V1/V2 network."""

    effv2_spec_version: Literal["1.0"] = SPEC_VERSION
    """Spec format version."""
    kind: Literal["architecture"] = "architecture"
    """Document kind, so one validator can tell specs, schedules and training configs apart."""
    name: SafeName
    """Name (presets use the official model names): ASCII letters, digits, '.', '_', '-'; it names
    the default output folder runs/<name>."""
    num_classes: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Classifier outputs."""
    input: InputSpec
    """Input channels, sizes and normalisation."""
    stem: StemSpec
    """The stem conv."""
    stages: Annotated[list[Stage], Field(min_length=1, max_length=32)]
    """Stages in order; each stage's input is the previous stage's output (the stem's for the first)."""
    head: HeadSpec = HeadSpec()
    """Head conv, pooling, dropout and classifier."""
    scaling: ScalingSpec = ScalingSpec()
    """Width/depth scaling and channel rounding."""
    conventions: Conventions = Conventions()
    """Implementation conventions."""

    @model_validator(mode="after")
    def _image_covers_stride(self) -> "ArchitectureSpec":
        total = self.total_stride
        compound = self.scaling.compound
        if compound is not None and self.input.eval_image_size * compound.gamma**compound.phi > MAX_IMAGE_SIZE:
            raise ValueError(f"scaling.compound.phi: scales input.eval_image_size beyond {MAX_IMAGE_SIZE} px")
        for field in ("train_image_size", "eval_image_size"):
            size = getattr(self.input, field)
            if size < total:
                raise ValueError(
                    f"input.{field}: must be >= the network's total stride {total} (got {size})"
                )
        return self

    @property
    def total_stride(self) -> int:
        stride = self.stem.stride
        for stage in self.stages:
            stride *= stage.stride
        return stride
