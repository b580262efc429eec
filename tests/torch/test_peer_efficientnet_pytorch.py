"""`effv2 convert --from efficientnet_pytorch`: lukemelas' EfficientNet-PyTorch state dicts.

Proof by logits: the library's own model with random weights (and random BN statistics, so eval
mode is not the identity) against our torch model and the NumPy oracle with the converted weights,
float64, at an even and an odd size (the library pads TF-"SAME" statically for the size it was built for).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.torch import build_model, load_canonical_tensors
from effv2_reference.model import ReferenceModel
from effv2_cli import main
from effv2_spec.presets import load as preset
from effv2_spec.resolve import resolve
from effv2_spec.weights import load_weights

from asserts import assert_close

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")


def peer(name: str, size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = efficientnet_pytorch.EfficientNet.from_name(name, image_size=size).double().eval()
    model.set_swish(memory_efficient=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.mark.parametrize("name,size", [("efficientnet-b0", 64), ("efficientnet-b2", 65)])
def test_converted_weights_give_the_library_logits(tmp_path, name, size):
    model = peer(name, size)
    src, out = tmp_path / "peer.pth", tmp_path / "canonical.safetensors"
    torch.save(model.state_dict(), src)
    result = CliRunner().invoke(main, ["convert", "--from", "efficientnet_pytorch", str(src), "--spec", name,
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, tensors = load_weights(out)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
        ours = load_canonical_tensors(build_model(name, torch.float64, init=False), tensors, name).eval()
        got = ours(x).numpy()
    assert_close(f"{name} torch logits vs efficientnet_pytorch", got, expected, 1e-12)
    oracle = ReferenceModel(resolve(preset(name), size), dtype="float64")
    oracle.load_state_dict(tensors)
    assert_close(f"{name} oracle logits vs efficientnet_pytorch", oracle.forward(x.numpy()), expected, 1e-9)


def test_export_loads_strictly_into_the_library(tmp_path):
    name = "efficientnet-b0"
    tensors = {k: v.numpy() for k, v in build_model(name, torch.float32, seed=3).state_dict().items()}
    from effv2_spec.weights import save_weights

    save_weights(tmp_path / "c.safetensors", preset(name), tensors)
    result = CliRunner().invoke(main, ["convert", "--to", "efficientnet_pytorch", str(tmp_path / "c.safetensors"),
                                       "-o", str(tmp_path / "peer.pth")])
    assert result.exit_code == 0, result.output
    lib = efficientnet_pytorch.EfficientNet.from_name(name)
    lib.load_state_dict(torch.load(tmp_path / "peer.pth", weights_only=True), strict=True)
    assert torch.equal(lib._blocks[3]._depthwise_conv.weight, torch.from_numpy(tensors["blocks.3.dw.conv.weight"]))


def test_a_v2_spec_is_refused_in_one_line(tmp_path):
    torch.save(peer("efficientnet-b0", 64).state_dict(), tmp_path / "peer.pth")
    result = CliRunner().invoke(main, ["convert", "--from", "efficientnet_pytorch", str(tmp_path / "peer.pth"),
                                       "--spec", "efficientnetv2-s", "-o", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1 and "Fused-MBConv" in result.output and "Traceback" not in result.output
