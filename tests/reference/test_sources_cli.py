"""`effv2 train` and `effv2 eval` on data that stays on disk: the ImageNet layout's val/ split, Parquet
shards, a file that fails to decode mid-run (one line naming it, the checkpoint kept)."""

import json

import numpy as np
from click.testing import CliRunner

from effv2_cli import main
from source_trees import write_imagenet_layout, write_shards, write_tree


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_train_validates_on_val_and_eval_reads_the_same_split_from_shards(tmp_path):
    root = write_imagenet_layout(tmp_path / "imagenet", 10, 3)
    shards = tmp_path / "shards"
    write_shards(shards, root / "train", "train", shards=2)
    write_shards(shards, root / "val", "validation", shards=1)
    r = run("train", "--data", root, "--out", tmp_path / "o", "--steps", 2, "--json")
    assert r.exit_code == 0, r.output
    assert f"on {root} (30 train / 9 validation from {root / 'val'})" in r.stderr
    trained = json.loads(r.stdout)["final_accuracy"]
    weights = tmp_path / "o" / "weights.safetensors"
    # effv2 eval of the folder's val/ split and of the shards' validation split agree with the run's figure
    figures = []
    for data in (root, shards, root / "val"):
        r = run("eval", "efficientnetv2-nano", "--weights", weights, "--data", data, "--image-size", 32, "--json")
        assert r.exit_code == 0, r.output
        figures.append({k: v for k, v in json.loads(r.stdout).items()
                        if k not in ("seconds", "images_per_s", "model_images_per_s", "data")})
    assert figures[0] == figures[1] == figures[2]
    assert figures[0]["images"] == 9
    # the training record's held-out accuracy is the validation split's, with the EMA weights
    assert 0.0 <= trained <= 1.0


def test_parquet_shards_train_and_val_data_overrides(tmp_path):
    root = write_imagenet_layout(tmp_path / "imagenet", 10, 3)
    shards = tmp_path / "shards"
    write_shards(shards, root / "train", "train", shards=3)
    r = run("train", "--data", shards, "--val-data", root / "val", "--out", tmp_path / "o", "--steps", 2)
    assert r.exit_code == 0, r.output
    assert "(30 train / 9 validation from" in r.output


def test_a_file_that_fails_to_decode_stops_the_run_naming_it_and_keeps_the_checkpoint(tmp_path):
    tree = tmp_path / "t"
    files = write_tree(tree, 10)
    out = tmp_path / "o"
    r = run("train", "--data", tree, "--out", out, "--steps", 3, "--checkpoint-every", 1, "--stop-at", 1)
    assert r.exit_code == 0, r.output
    for f in files:  # every file truncated after the first checkpoint: the index still lists them (same folder)
        blob = f.read_bytes()
        f.write_bytes(blob[: len(blob) * 4 // 5])  # the header (and the index) intact, the scan cut short
    r = run("train", "--data", tree, "--out", out, "--steps", 3, "--resume")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    last = r.output.strip().splitlines()[-1]
    assert "training stopped at step 1" in last and str(tree) in last and ".jpg" in last
    assert "checkpoint at step 1" in last and (out / "checkpoint.npz").is_file()


def test_unreadable_files_are_excluded_and_counted_in_the_header(tmp_path):
    root = write_imagenet_layout(tmp_path / "imagenet", 10, 3)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "bee" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut inside its header")
    r = run("train", "--data", root, "--out", tmp_path / "o", "--steps", 1)
    assert r.exit_code == 0, r.output
    assert f"(30 train / 9 validation from {root / 'val'})" in r.output
    assert f", 2 unreadable file(s) of {root / 'train'} excluded (effv2 data index {root / 'train'})" in r.output


def test_bad_sources_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    for data, fragment in ((tmp_path / "empty", "no class sub-folders"), (tmp_path / "x.parquet", "x.parquet"),
                           (tmp_path / "nothing-*.parquet", "no Parquet shards match")):
        r = run("train", "--data", data, "--out", tmp_path / "o")
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and fragment in lines[0], r.output
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    r = run("train", "--data", tmp_path / "d.npz", "--val-data", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "no class sub-folders" in r.output
