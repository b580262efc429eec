"""Fine-tuning a peer's model end to end, as the README shows it: torchvision / timm weights ->
`effv2 convert` -> `effv2 train --framework torch --init-from ... --num-classes N --frozen-bn` on an
image folder (random peer weights stand in for the pretrained ones: nothing is downloaded)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from effv2_cli import main
from effv2_train.checkpoint import load_checkpoint
from effv2_spec.weights import load_weights


def image_folder(root, classes=3, per_class=5):
    rng = np.random.default_rng(1)
    for c in range(classes):
        (root / f"kind{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 * c + 40, 25, (40, 52, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"kind{c}" / f"{i}.jpg")
    return root


def small_schedule(path):
    path.write_text(json.dumps({"kind": "progressive_schedule", "name": "ft", "convention": "paper", "total_steps": 2,
                                "num_stages": 2, "image_size": {"start": 32, "end": 48, "multiple": 16},
                                "regularizers": {"randaugment_magnitude": {"start": 5, "end": 10}}}))
    return path


@pytest.mark.parametrize("peer,preset", [("torchvision", "efficientnetv2-s-torchvision"),
                                         ("timm", "efficientnetv2-b0")])
def test_peer_weights_fine_tune_with_frozen_bn(peer, preset, tmp_path):
    if peer == "torchvision":
        import torchvision

        net = torchvision.models.efficientnet_v2_s()
    else:
        import timm

        net = timm.create_model("tf_efficientnetv2_b0", pretrained=False)
    with torch.no_grad():  # pretrained-like BN statistics, so "frozen" has something to keep
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "peer.pth")
    runner = CliRunner()
    canonical = tmp_path / "pretrained.safetensors"
    r = runner.invoke(main, ["convert", "--from", peer, str(tmp_path / "peer.pth"), "--spec", preset,
                             "-o", str(canonical)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    r = runner.invoke(main, ["train", preset, "--framework", "torch", "--device", "cpu", "--init-from", str(canonical),
                             "--num-classes", "3", "--frozen-bn", "--data", str(image_folder(tmp_path / "photos")),
                             "--schedule", str(small_schedule(tmp_path / "s.json")), "--eval-size", "48",
                             "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["framework"] == "torch" and payload["init_from"]["new_init"] == ["classifier.weight",
                                                                                    "classifier.bias"]
    _, pre = load_weights(canonical)
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck.model["classifier.weight"].shape[0] == 3 and ck.meta["step"] == 2
    stats = [k for k in pre if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 50 and all(np.array_equal(ck.model[k], pre[k]) for k in stats)  # frozen BN kept them
    moved = [k for k in pre if k.endswith("conv.weight") and not np.array_equal(ck.model[k], pre[k])]
    assert moved  # and the rest of the network trained from the peer's weights
    w, w0 = ck.model["stem.conv.weight"], pre["stem.conv.weight"]
    assert np.linalg.norm(w - w0) < 0.5 * np.linalg.norm(w0)  # two small steps away from the peer's kernel
