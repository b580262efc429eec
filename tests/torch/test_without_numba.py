"""`pip install 'effv2[torch]'` has no Numba: training, prediction and evaluation with --framework torch must
never import it. Each command runs in a fresh interpreter where numba (and scikit-learn, which the
torch extra does not bring either) is absent, as it would be there: the interpreter's site-packages
without them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source_trees import write_imagenet_layout

pytest.importorskip("torch")

#: distributions a venv with effv2[torch] lacks: the oracle's extra (numba, llvmlite, scikit-learn)
ABSENT = ("numba", "llvmlite", "sklearn", "scikit_learn")

#: the interpreter starts without its site-packages (-S), then takes the copy without ABSENT as its site
SCRIPT = """
import site, sys
site.addsitedir(sys.argv.pop(1))
from effv2_cli import main
sys.argv = ["effv2", *sys.argv[1:]]
try:
    main()
finally:
    assert not [m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite", "sklearn")]
"""


@pytest.fixture(scope="module")
def site_without_numba(tmp_path_factory) -> Path:
    """This environment's site-packages as links, minus the oracle's dependencies (the .pth files, effv2's
    editable install among them, work as in a venv)."""
    site_dir = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    farm = tmp_path_factory.mktemp("site-packages")
    for entry in site_dir.iterdir():
        if not entry.name.lower().startswith(ABSENT):
            (farm / entry.name).symlink_to(entry)
    return farm


def effv2(site: Path, *args, cwd):
    return subprocess.run([sys.executable, "-S", "-c", SCRIPT, str(site), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_torch_trains_predicts_evaluates_and_checks_without_numba(site_without_numba, tmp_path):
    def effv2_here(*args):
        return effv2(site_without_numba, *args, cwd=tmp_path)

    data = write_imagenet_layout(tmp_path / "data", 10, 2)
    r = effv2_here("train", "--framework", "torch", "--data", data, "--steps", 2, "--out", tmp_path / "run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train_images"] == 30
    weights = tmp_path / "run" / "weights.safetensors"
    image = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    r = effv2_here("predict", "efficientnetv2-nano", "--weights", weights, image, "--framework", "torch", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"][0]["top"]) == 5
    r = effv2_here("eval", "efficientnetv2-nano", "--weights", weights, "--data", data, "--framework", "torch",
                   "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 6  # the val/ split
    # with the jax extra too, a backend is checked against the other (the oracle is what needs Numba)
    r = effv2_here("check", "efficientnetv2-nano", "--framework", "torch", "--against", "jax", "--checks",
                   "eval_logits,gradients,sgd,gradient_clip_norm", "--json")
    assert r.returncode == 0, r.stderr
    assert {c["check"]: c["status"] for c in json.loads(r.stdout)["checks"]} == dict.fromkeys(
        ["eval_logits", "gradients", "sgd", "gradient_clip_norm"], "passed")
    r = effv2_here("check", "efficientnetv2-nano", "--framework", "torch")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "--against reference: not available: the reference oracle (numba) is not installed (No module named "
        "'numba'); pip install 'effv2[reference]'"], r.stderr
    # the oracle itself needs Numba: asking for it is one line naming the extra, not a traceback
    r = effv2_here("train", "--data", data, "--steps", 1, "--out", tmp_path / "oracle")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "numba" in r.stderr.lower(), r.stderr


@pytest.mark.jax
def test_jax_trains_without_numba(site_without_numba, tmp_path):
    pytest.importorskip("jax")
    data = write_imagenet_layout(tmp_path / "data", 10, 2)
    r = effv2(site_without_numba, "train", "--framework", "jax", "--data", data, "--steps", 2,
              "--out", tmp_path / "run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train_images"] == 30 and (tmp_path / "run" / "weights.safetensors").is_file()
