"""torchvision / timm weight exchange: same logits as the peer, exact round trips, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.torch import build_model, export_timm, export_torchvision, import_timm, import_torchvision
from effv2_adapters.torch.peers import load_state_dict_file
from effv2_adapters.torch.weights import load_canonical_tensors
from effv2_cli import main
from effv2_spec.resolve import resolve
from effv2_spec.weights import WeightsError, load_weights

from torch_testlib import preset, randomize_bn, rel

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

PEERS = {
    # peer name: (factory, preset, importer, exporter)
    "torchvision": (lambda: torchvision.models.efficientnet_v2_s(), "efficientnetv2-s-torchvision",
                    import_torchvision, export_torchvision),
    "timm": (lambda: timm.create_model("tf_efficientnetv2_b0", pretrained=False), "efficientnetv2-b0",
             import_timm, export_timm),
}


@pytest.fixture(scope="module", params=sorted(PEERS))
def peer(request, tmp_path_factory):
    """(name, peer model in float64 eval mode with random weights and BN stats, its state-dict file, canonical)."""
    name = request.param
    factory, preset_name, importer, _ = PEERS[name]
    torch.manual_seed(0)
    model = factory()
    randomize_bn(model)
    path = tmp_path_factory.mktemp(name) / "peer.pth"
    torch.save(model.state_dict(), path)
    tensors = importer(path, preset(preset_name))
    return name, model.double().eval(), path, tensors


@pytest.mark.parametrize("size", [64, 65])
def test_imported_weights_give_the_peer_logits_in_torch(peer, size):
    name, model, _, tensors = peer
    preset_name = PEERS[name][1]
    ours = load_canonical_tensors(build_model(preset_name, torch.float64, init=False), tensors, preset_name).eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        assert rel(ours(x), model(x)) < 1e-12


def test_imported_weights_give_the_peer_logits_in_the_oracle(peer):
    from effv2_reference.model import ReferenceModel

    name, model, _, tensors = peer
    spec = preset(PEERS[name][1])
    size = 64  # even: TF SAME is asymmetric at every stride-2 layer, so the padding convention matters
    oracle = ReferenceModel(resolve(spec, size), dtype="float64")
    oracle.load_state_dict({k: v.astype(np.float64) for k, v in tensors.items()})
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    assert rel(oracle.forward(x.numpy(), training=False), expected) < 1e-9


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_reproduces_the_state_dict_exactly(peer, tmp_path, suffix):
    name, _, path, tensors = peer
    original = torch.load(path, weights_only=True)
    out = tmp_path / f"back{suffix}"
    PEERS[name][3](tensors, preset(PEERS[name][1]), out)
    back = load_state_dict_file(out)
    order = list if suffix == ".pth" else sorted
    assert order(back) == order(original)
    for k, v in original.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # and the safetensors copy imports to the same canonical tensors
    again = PEERS[name][2](out, preset(PEERS[name][1]))
    assert all(np.array_equal(again[k], tensors[k]) for k in tensors)


def test_import_errors_name_the_tensors(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.efficientnet_v2_s().state_dict()
    spec = preset("efficientnetv2-s-torchvision")
    broken = dict(state)
    del broken["features.0.0.weight"]
    broken["features.9.extra"] = torch.zeros(3)
    broken["classifier.1.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(WeightsError) as err:
        import_torchvision(path, spec)
    msg = str(err.value)
    assert "missing 1 tensor(s): features.0.0.weight" in msg
    assert "unexpected 1 tensor(s): features.9.extra" in msg
    assert "classifier.1.bias (canonical classifier.bias): expected shape (1000,), got (7,)" in msg
    ok = tmp_path / "ok.pth"
    torch.save(state, ok)
    with pytest.raises(WeightsError, match="does not match spec"):  # the right file for the wrong architecture
        import_torchvision(ok, preset("efficientnetv2-m-torchvision"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        import_torchvision(tmp_path / "junk.pth", spec)
    with pytest.raises(WeightsError, match="no such file"):
        import_torchvision(tmp_path / "absent.pth", spec)


def test_checkpoint_wrappers_are_unwrapped(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnetv2_b0").state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    tensors = import_timm(path, preset("efficientnetv2-b0"))
    assert np.array_equal(tensors["stem.conv.weight"], state["conv_stem.weight"].numpy())


def test_v1_names_map_too():
    """torchvision efficientnet_b0 and timm tf_efficientnet_b0 map onto the V1 B0 table (MBConv without expansion)."""
    from effv2_adapters.torch.peers import state_dict_to_canonical

    spec = preset("efficientnet-b0")
    for source, model in (("torchvision", torchvision.models.efficientnet_b0()),
                          ("timm", timm.create_model("tf_efficientnet_b0"))):
        tensors = state_dict_to_canonical(model.state_dict(), spec, source)
        assert len(tensors) == len(resolve(spec).params)


def test_convert_cli_both_ways(peer, tmp_path):
    name, _, path, tensors = peer
    preset_name = PEERS[name][1]
    canonical = tmp_path / "canonical.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "--from", name, str(path), "--spec", preset_name, "-o", str(canonical)])
    assert result.exit_code == 0, result.output
    spec, loaded = load_weights(canonical)
    assert spec.name == preset_name and all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
    back = tmp_path / "back.pth"
    result = runner.invoke(main, ["convert", "--to", name, str(canonical), "-o", str(back)])  # spec from metadata
    assert result.exit_code == 0, result.output
    original = torch.load(path, weights_only=True)
    restored = torch.load(back, weights_only=True)
    assert list(original) == list(restored) and all(torch.equal(original[k], restored[k]) for k in original)


@pytest.fixture(scope="module")
def tv_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "tv.pth"
    torch.save(torchvision.models.efficientnet_v2_s().state_dict(), path)
    return path


@pytest.mark.parametrize("args,message", [
    (["convert", "--from", "timm", "{ckpt}", "--spec", "efficientnetv2-b0", "-o", "{out}"], "does not match spec"),
    (["convert", "--from", "timm", "{ckpt}", "--spec", "no-such-preset", "-o", "{out}"], "no such file or preset"),
    (["convert", "--from", "timm", "{absent}", "--spec", "efficientnetv2-b0", "-o", "{out}"], "no such file"),
    (["convert", "--to", "timm", "{ckpt}", "-o", "{out}"], "not a readable safetensors"),
])
def test_convert_cli_errors(tmp_path, tv_checkpoint, args, message):
    ckpt = tv_checkpoint
    fill = {"ckpt": str(ckpt), "out": str(tmp_path / "out.x"), "absent": str(tmp_path / "absent.pth")}
    result = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.x").exists()
