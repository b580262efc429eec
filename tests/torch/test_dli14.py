"""d-li14/efficientnetv2.pytorch: the `*-dli14` presets reproduce the port, and its weights convert both ways.

The reference is `dli14_port.PortNet`, a re-typing of the port's model code (independent of effv2's
spec); its parameter counts are checked against the exact numbers behind the port's README (22.10M,
55.30M, 119.36M, 208.96M; shared/facts/peer-implementations.md §4.4). Logits: V2-S at 64 px in float64,
eval mode (random BN statistics) and train mode (batch statistics), the port's weights converted by
`effv2 convert --from dli14`, run by the oracle and by the torch adapter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.torch import build_model, load_canonical_tensors
from effv2_adapters.torch.peers import load_state_dict_file
from effv2_reference.model import ReferenceModel
from effv2_spec.accounting import count
from effv2_cli import main
from effv2_spec.resolve import resolve
from effv2_spec.weights import load_weights

from dli14_port import PortNet, parameter_count
from torch_testlib import preset, randomize_bn, rel

# sum(p.numel()) of the port's effnetv2_{s,m,l,xl}() with 1000 classes (README: 22.10M ... 208.96M)
PORT_PARAMS = {"s": 22_103_832, "m": 55_300_016, "l": 119_355_792, "xl": 208_960_328}


@pytest.mark.parametrize("variant", sorted(PORT_PARAMS))
def test_preset_counts_equal_the_port(variant):
    assert parameter_count(variant) == PORT_PARAMS[variant]
    resolved = resolve(preset(f"efficientnetv2-{variant}-dli14"))
    assert count(resolved).params == PORT_PARAMS[variant]
    # the BN statistics are buffers in both: the port's state dict holds every canonical tensor plus
    # one num_batches_tracked per BN
    with torch.device("meta"):
        state = PortNet(variant).state_dict()
    assert len(state) - sum(k.endswith("num_batches_tracked") for k in state) == len(resolved.params)


@pytest.fixture(scope="module")
def port_s(tmp_path_factory):
    """The re-typed port's V2-S in float64 with random weights and BN statistics, its state-dict file and
    the canonical file `effv2 convert --from dli14` wrote from it."""
    torch.manual_seed(0)
    model = PortNet("s").double()
    with torch.no_grad():  # the port's own init (N(0, 0.001) dense layers) gives near-constant logits
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.05)
                m.bias.normal_(0, 0.05)
    randomize_bn(model)
    root = tmp_path_factory.mktemp("dli14")
    torch.save(model.state_dict(), root / "port.pth")
    canonical = root / "canonical.safetensors"
    result = CliRunner().invoke(main, ["convert", "--from", "dli14", str(root / "port.pth"), "--spec",
                                       "efficientnetv2-s-dli14", "-o", str(canonical)])
    assert result.exit_code == 0, result.output
    return model, root, canonical


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_port_logits_equal_the_oracle_and_the_torch_adapter(port_s, training):
    model, _, canonical = port_s
    spec, tensors = load_weights(canonical)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model.train(training)(x).numpy()
    oracle = ReferenceModel(resolve(spec, 64), dtype="float64")
    oracle.load_state_dict(tensors)
    assert rel(oracle.forward(x.numpy(), training=training), want) < 1e-10
    ours = load_canonical_tensors(build_model(spec, torch.float64, init=False), tensors, spec).train(training)
    with torch.no_grad():
        assert rel(ours(x), want) < 1e-12
    assert np.abs(want).max() > 0.1  # the logits are not trivially small


def test_round_trip_is_bit_exact(port_s, tmp_path):
    model, root, canonical = port_s
    original = torch.load(root / "port.pth", weights_only=True)
    back = tmp_path / "back.pth"
    result = CliRunner().invoke(main, ["convert", "--to", "dli14", str(canonical), "-o", str(back)])
    assert result.exit_code == 0, result.output
    state = load_state_dict_file(back)
    assert list(state) == list(original)
    for k, v in original.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    # the state dict loads into the port's module as it is (strict), and back to the same canonical bits
    PortNet("s").double().load_state_dict(state)
    again = tmp_path / "again.safetensors"
    assert CliRunner().invoke(main, ["convert", "--from", "dli14", str(back), "--spec", "efficientnetv2-s-dli14",
                                     "-o", str(again)]).exit_code == 0
    first, second = load_weights(canonical)[1], load_weights(again)[1]
    assert sorted(first) == sorted(second) and all(np.array_equal(first[k], second[k]) for k in first)


def test_another_variant_or_port_is_one_line_and_writes_nothing(port_s, tmp_path):
    _, root, _ = port_s
    runner = CliRunner()
    out = tmp_path / "out.safetensors"
    wrong_variant = runner.invoke(main, ["convert", "--from", "dli14", str(root / "port.pth"), "--spec",
                                         "efficientnetv2-m-dli14", "-o", str(out)])
    assert wrong_variant.exit_code == 1 and not out.exists()
    line = wrong_variant.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "does not match spec 'efficientnetv2-m-dli14'" in line and "missing" in line and "wrong shape" in line
    # the official V2-S topology is another network (single-conv expand-1 blocks, 1280 head): named, not loaded
    official = runner.invoke(main, ["convert", "--from", "dli14", str(root / "port.pth"), "--spec",
                                    "efficientnetv2-s-torchvision", "-o", str(out)])
    assert official.exit_code == 1 and not out.exists() and len(official.output.strip().splitlines()) == 1
    assert "unexpected" in official.output and "features.1.conv.3.weight" in official.output
    # a state dict of another port (torchvision's names) against the d-li14 preset
    torchvision_like = tmp_path / "tv.pth"
    torch.save({"features.0.0.weight": torch.zeros(24, 3, 3, 3), "classifier.1.weight": torch.zeros(1000, 1280)},
               torchvision_like)
    other = runner.invoke(main, ["convert", "--from", "dli14", str(torchvision_like), "--spec",
                                 "efficientnetv2-s-dli14", "-o", str(out)])
    assert other.exit_code == 1 and not out.exists() and len(other.output.strip().splitlines()) == 1
    assert "unexpected 1 tensor(s): classifier.1.weight" in other.output


def test_initialisers_are_the_ports():
    """The port's _initialize_weights: every Conv2d N(0, sqrt(2 / (k * k * out_channels))) (depthwise too),
    every nn.Linear (SE layers and classifier) N(0, 0.001), biases 0, BN 1 / 0."""
    from effv2_adapters.torch.peers import dli14_names

    resolved = resolve(preset("efficientnetv2-s-dli14"))
    with torch.device("meta"):
        modules = dict(PortNet("s").named_modules())
    for canon, peer in dli14_names(resolved):
        module, tensor = modules[peer.rsplit(".", 1)[0]], peer.rsplit(".", 1)[1]
        rule = resolved.param(canon).init
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0]
            std = (2.0 / (k * k * module.out_channels)) ** 0.5
            assert (rule.kind, rule.scale) == ("normal", pytest.approx(std)), canon
        elif isinstance(module, torch.nn.Linear) and tensor == "weight":
            assert (rule.kind, rule.scale) == ("normal", 0.001), canon
        elif tensor in ("bias", "running_mean"):
            assert rule.kind == "zeros", canon
        else:
            assert rule.kind == "ones", canon
