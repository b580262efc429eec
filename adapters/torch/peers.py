"""Weight exchange with torchvision and timm EfficientNet / EfficientNetV2 state dicts.

Both peers use PyTorch layouts (conv OIHW, depthwise C x 1 x k x k, linear (out, in)), so a
conversion is a renaming derived from the resolved block table (names read
from each library's module attributes):

* torchvision `efficientnet_v2_{s,m,l}` (and V1 `efficientnet_b*`): `features.0.{0,1}` stem,
  `features.{stage+1}.{j}.block.{k}.{0,1}` (conv, BN) or `.block.{k}.fc1/fc2` (SE), where k is the
  layer's position in the block, `features.{n_stages+1}` head, `classifier.1` dense.
* timm `tf_efficientnetv2_*` (and `tf_efficientnet_*`): `conv_stem`/`bn1`, `blocks.{stage}.{j}.*`
  with `conv`+`bn1` (fused, expand 1), `conv_exp`+`bn1`, `conv_pwl`+`bn2` (fused),
  `conv_pw`+`bn1`, `conv_dw`+`bn2`, `conv_pwl`+`bn3` (MBConv), `conv_dw`+`bn1`, `conv_pw`+`bn2`
  (MBConv without expansion), `se.conv_reduce/conv_expand`; `conv_head`/`bn2`, `classifier`.

* efficientnet_pytorch (lukemelas/EfficientNet-PyTorch, V1 B0-B8 and L2): see
  `efficientnet_pytorch_names`.
* d-li14/efficientnetv2.pytorch `effnetv2_{s,m,l,xl}`: see `dli14_names`; its SE layers are nn.Linear,
  so SE kernels are reshaped between (out, in) and the canonical (out, in, 1, 1). Pair its weights
  with the `*-dli14` presets.

`num_batches_tracked` has no canonical counterpart: dropped on import, written as 0 on export.
Behaviour (padding, BN eps, SE width) is the spec's business: pair torchvision weights with a
`*-torchvision` preset (symmetric padding) and timm `tf_` weights with the official presets.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from effv2_spec.resolve import ResolvedModel, SqueezeExcite
from effv2_spec.weights import WeightsError, atomic_write_bytes, check_tensors, mismatch, reproducible_safetensors

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")


def _resolved(spec: Any) -> ResolvedModel:
    from effv2_spec.resolve import as_resolved

    return as_resolved(spec)


# ---- name tables -----------------------------------------------------------------------------
def _unit_pairs(unit, conv: str, bn: str | None = None) -> list[tuple[str, str]]:
    """(canonical, peer) tensor names of one unit; for SE `conv`/`bn` are the reduce/expand prefixes."""
    if isinstance(unit, SqueezeExcite):
        return [(f"{unit.name}.reduce.{t}", f"{conv}.{t}") for t in ("weight", "bias")] + \
               [(f"{unit.name}.expand.{t}", f"{bn}.{t}") for t in ("weight", "bias")]
    return [(f"{unit.name}.conv.weight", f"{conv}.weight")] + [(f"{unit.name}.bn.{t}", f"{bn}.{t}") for t in BN_TENSORS]


def torchvision_names(resolved: ResolvedModel) -> list[tuple[str, str]]:
    """(canonical name, torchvision name) for every tensor, in torchvision's state_dict order."""
    pairs = _unit_pairs(resolved.stem, "features.0.0", "features.0.1")
    for block in resolved.blocks:
        base = f"features.{block.stage + 1}.{block.position}.block"
        for k, unit in enumerate(block.layers):
            if isinstance(unit, SqueezeExcite):
                pairs += _unit_pairs(unit, f"{base}.{k}.fc1", f"{base}.{k}.fc2")
            else:
                pairs += _unit_pairs(unit, f"{base}.{k}.0", f"{base}.{k}.1")
    head = f"features.{len(resolved.spec.stages) + 1}"
    pairs += _unit_pairs(resolved.head, f"{head}.0", f"{head}.1")
    pairs += [("classifier.weight", "classifier.1.weight"), ("classifier.bias", "classifier.1.bias")]
    return pairs


def timm_names(resolved: ResolvedModel) -> list[tuple[str, str]]:
    """(canonical name, timm name) for every tensor, in timm's state_dict order."""
    pairs = _unit_pairs(resolved.stem, "conv_stem", "bn1")
    for block in resolved.blocks:
        base = f"blocks.{block.stage}.{block.position}"
        kinds = [u.slot for u in block.layers]
        if "fused" in kinds:  # ConvBnAct
            convs = {"fused": ("conv", "bn1")}
        elif block.type == "fused_mbconv":  # EdgeResidual
            convs = {"expand": ("conv_exp", "bn1"), "project": ("conv_pwl", "bn2")}
        elif "expand" in kinds:  # InvertedResidual
            convs = {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")}
        else:  # DepthwiseSeparableConv
            convs = {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}
        for unit, kind in zip(block.layers, kinds):
            if kind == "se":
                pairs += _unit_pairs(unit, f"{base}.se.conv_reduce", f"{base}.se.conv_expand")
            else:
                conv, bn = convs[kind]
                pairs += _unit_pairs(unit, f"{base}.{conv}", f"{base}.{bn}")
    pairs += _unit_pairs(resolved.head, "conv_head", "bn2")
    pairs += [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    return pairs


#: efficientnet_pytorch (lukemelas/EfficientNet-PyTorch) module names by slot: (conv, BN) or (reduce, expand)
_LUKEMELAS_SLOTS = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1"),
                    "se": ("_se_reduce", "_se_expand"), "project": ("_project_conv", "_bn2")}


def efficientnet_pytorch_names(resolved: ResolvedModel) -> list[tuple[str, str]]:
    """(canonical name, efficientnet_pytorch name) for every tensor: `_conv_stem`/`_bn0`,
    `_blocks.{i}._{expand_conv,bn0,depthwise_conv,bn1,se_reduce,se_expand,project_conv,bn2}` with one
    flat block index (as ours), `_conv_head`/`_bn1`, `_fc`. The library builds V1 (MBConv) only."""
    if any(b.type != "mbconv" for b in resolved.blocks):
        raise WeightsError(f"spec {resolved.spec.name!r} has Fused-MBConv blocks; efficientnet_pytorch builds "
                           "EfficientNet V1 (MBConv only): pair its weights with an efficientnet-b* spec")
    pairs = _unit_pairs(resolved.stem, "_conv_stem", "_bn0")
    for block in resolved.blocks:
        for unit in block.layers:
            first, second = _LUKEMELAS_SLOTS[unit.slot]
            pairs += _unit_pairs(unit, f"_blocks.{block.index}.{first}", f"_blocks.{block.index}.{second}")
    pairs += _unit_pairs(resolved.head, "_conv_head", "_bn1")
    pairs += [("classifier.weight", "_fc.weight"), ("classifier.bias", "_fc.bias")]
    return pairs


def dli14_names(resolved: ResolvedModel) -> list[tuple[str, str]]:
    """(canonical name, d-li14 name) for every tensor of d-li14/efficientnetv2.pytorch's `EffNetV2`.

    `features` is one flat nn.Sequential: `features.0.{0,1}` the stem, `features.{i+1}` block i (our flat
    index). A block's `conv` is an nn.Sequential holding each unit's modules in execution order: conv, BN
    and (when the unit has one) the activation, so a unit's conv sits at the running position k, its BN
    at k + 1; the SE layer takes one position, its two nn.Linear at `fc.0` and `fc.2`. Head `conv.{0,1}`,
    dense `classifier`."""
    pairs = _unit_pairs(resolved.stem, "features.0.0", "features.0.1")
    for block in resolved.blocks:
        base, k = f"features.{block.index + 1}.conv", 0
        for unit in block.layers:
            if isinstance(unit, SqueezeExcite):
                pairs += _unit_pairs(unit, f"{base}.{k}.fc.0", f"{base}.{k}.fc.2")
                k += 1
            else:
                pairs += _unit_pairs(unit, f"{base}.{k}", f"{base}.{k + 1}")
                k += 3 if unit.activation else 2
    pairs += _unit_pairs(resolved.head, "conv.0", "conv.1")
    pairs += [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    return pairs


NAME_TABLES: dict[str, Callable[[ResolvedModel], list[tuple[str, str]]]] = {
    "torchvision": torchvision_names, "timm": timm_names, "efficientnet_pytorch": efficientnet_pytorch_names,
    "dli14": dli14_names,
}

#: Layouts whose SE layers are nn.Linear: their kernels are (out, in), ours the 1x1 conv (out, in, 1, 1).
LINEAR_SE = {"dli14"}


def _peer_shape(entry, layout: str) -> tuple[int, ...]:
    """The shape `layout` stores canonical tensor `entry` in (the same numbers, only reshaped)."""
    if layout in LINEAR_SE and entry.role == "se_kernel":
        return entry.shape[:2]
    return entry.shape


# ---- file I/O --------------------------------------------------------------------------------
def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A state dict (name -> torch.Tensor) from a `torch.save`d file or a safetensors file.

    Unwraps common checkpoint wrappers ({'state_dict': ...}, {'model': ...}) and a 'module.' prefix.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    is_safetensors = path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols with its own file paths
            warnings.simplefilter("ignore")
            if is_safetensors:
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = "safetensors" if is_safetensors else "torch.save"
        raise WeightsError(f"{path}: not a readable {kind} state dict ({_load_failure(exc)})") from None
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if key in state and isinstance(state[key], dict) and not isinstance(state[key], torch.Tensor):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _load_failure(exc: Exception) -> str:
    """One line for why torch.load refused a file, without torch's advice to load it unsafely."""
    text = str(exc)
    if "Weights only load failed" in text:
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else ""
        reason = reason.split("\n")[0].split(" was not an allowed global")[0].strip()
        return ("torch's weights-only loader refused it" + (f": {reason[:120]}" if reason else "")
                + "; only a state dict of tensors is read (save model.state_dict(), not the model)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16,):
        t = t.float()
    return t.numpy().copy()


def state_dict_to_canonical(state: dict, spec: Any, source: str) -> dict[str, np.ndarray]:
    """Rename a torchvision/timm state dict to canonical tensors, with clear errors for any mismatch."""
    resolved = _resolved(spec)
    pairs = NAME_TABLES[source](resolved)
    peer_names = {peer for _, peer in pairs}
    missing = [peer for _, peer in pairs if peer not in state]
    extra = sorted(k for k in state if k not in peer_names and not k.endswith("num_batches_tracked"))
    shapes = {canon: _peer_shape(resolved.param(canon), source) for canon, _ in pairs}
    wrong = [f"{peer} (canonical {canon}): expected shape {shapes[canon]}, got {tuple(state[peer].shape)}"
             for canon, peer in pairs if peer in state and tuple(state[peer].shape) != shapes[canon]]
    problems = mismatch(missing, extra, wrong)
    if problems:
        raise WeightsError(f"{source} state dict does not match spec {resolved.spec.name!r}: {problems}")
    tensors = {canon: _to_numpy(state[peer]).reshape(resolved.param(canon).shape) for canon, peer in pairs}
    check_tensors(resolved, tensors)
    return tensors


def canonical_to_state_dict(tensors: dict[str, np.ndarray], spec: Any, target: str) -> "OrderedDict[str, Any]":
    """Canonical tensors -> a torchvision/timm state dict (torch tensors, `num_batches_tracked` = 0)."""
    import torch

    resolved = _resolved(spec)
    check_tensors(resolved, tensors)
    state: OrderedDict[str, Any] = OrderedDict()
    for canon, peer in NAME_TABLES[target](resolved):
        value = np.array(tensors[canon], copy=True).reshape(_peer_shape(resolved.param(canon), target))
        state[peer] = torch.from_numpy(value)
        if canon.endswith(".bn.running_var"):
            state[peer[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def _import(path, spec, source: str) -> dict[str, np.ndarray]:
    return state_dict_to_canonical(load_state_dict_file(path), spec, source)


def _export(tensors, spec, path, target: str) -> None:
    import torch

    state = canonical_to_state_dict(tensors, spec, target)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save

        data = reproducible_safetensors(save({k: v.contiguous() for k, v in state.items()},
                                             metadata={"format": "pt", "effv2_layout": target}))
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)


def import_torchvision(path, spec) -> dict[str, np.ndarray]:
    """Canonical tensors from a torchvision EfficientNet(V2) state dict file (torch.save or safetensors)."""
    return _import(path, spec, "torchvision")


def import_timm(path, spec) -> dict[str, np.ndarray]:
    """Canonical tensors from a timm tf_efficientnetv2_* / tf_efficientnet_* state dict file."""
    return _import(path, spec, "timm")


def export_torchvision(tensors, spec, path) -> None:
    """Write canonical tensors as a torchvision state dict (torch.save, or safetensors by suffix), atomically."""
    _export(tensors, spec, path, "torchvision")


def export_timm(tensors, spec, path) -> None:
    """Write canonical tensors as a timm state dict (torch.save, or safetensors by suffix), atomically."""
    _export(tensors, spec, path, "timm")


def import_dli14(path, spec) -> dict[str, np.ndarray]:
    """Canonical tensors from a d-li14/efficientnetv2.pytorch `effnetv2_*` state dict file."""
    return _import(path, spec, "dli14")


def export_dli14(tensors, spec, path) -> None:
    """Write canonical tensors as a d-li14 `effnetv2_*` state dict (torch.save, or safetensors by suffix)."""
    _export(tensors, spec, path, "dli14")


def import_efficientnet_pytorch(path, spec) -> dict[str, np.ndarray]:
    """Canonical tensors from an efficientnet_pytorch (lukemelas) EfficientNet-B* state dict file."""
    return _import(path, spec, "efficientnet_pytorch")


def export_efficientnet_pytorch(tensors, spec, path) -> None:
    """Write canonical tensors as an efficientnet_pytorch state dict (torch.save, or safetensors by suffix)."""
    _export(tensors, spec, path, "efficientnet_pytorch")
