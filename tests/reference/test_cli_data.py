"""`effv2 data index | pack | show`: shards read back with pyarrow alone hold the files' bytes, labels
and class names; an interrupted pack resumes to identical shards; every bad input is one line."""

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from effv2_train.data import pack as pack_module
from effv2_cli import main
from PIL import Image

OLD_NS = 1_600_000_000 * 10**9


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFV2_CACHE_DIR", str(tmp_path / "cache"))


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _image_bytes(h, w, fmt, seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _tree(root, counts=(3, 2, 4), bad=True):
    """ROOT/<class>/<files>: JPEGs and PNGs of several sizes, plus (bad=True) one unreadable file."""
    for c, n in enumerate(counts):
        d = root / f"class_{'abc'[c]}"
        d.mkdir(parents=True)
        for i in range(n):
            fmt = "PNG" if i % 2 else "JPEG"
            (d / f"img{i}.{fmt.lower()}").write_bytes(_image_bytes(5 + i, 7 + c, fmt, seed=10 * c + i))
    if bad:
        (root / "class_b" / "broken.jpg").write_bytes(b"not an image")
    _age(root)
    return root


def _age(root):
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        os.utime(d, ns=(OLD_NS, OLD_NS))


def _read_back(out):
    """(rows of (bytes, path, label) over all shards in name order, class names) with pyarrow alone."""
    rows, names = [], None
    for f in sorted(out.glob("*.parquet")):
        pf = pq.ParquetFile(f)
        names = json.loads(pf.schema_arrow.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
        t = pf.read()
        rows += [(im["bytes"], im["path"], lab) for im, lab in zip(t.column("image").to_pylist(),
                                                                  t.column("label").to_pylist())]
    return rows, names


def test_pack_stores_the_original_bytes_labels_and_class_names(tmp_path):
    src = _tree(tmp_path / "src")
    out = tmp_path / "shards"
    result = run("data", "pack", src, "-o", out, "--shard-size", 4)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    rows, names = _read_back(out)
    assert names == ["class_a", "class_b", "class_c"]
    expected = sorted((p.read_bytes(), f"{p.parent.name}/{p.name}", names.index(p.parent.name))
                      for p in src.rglob("*.*") if p.name != "broken.jpg")
    assert sorted(rows) == expected and len(rows) == 9
    assert "1 unreadable file(s) skipped" in result.output
    meta = pq.ParquetFile(out / "train-00000-of-00003.parquet").metadata
    assert meta.num_rows == 4 and meta.row_group(0).column(0).compression == "UNCOMPRESSED"
    assert meta.row_group(0).column(0).path_in_schema == "image.bytes"


def test_row_groups_hold_256_rows(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    tiny = _image_bytes(2, 2, "PNG", 0)
    for i in range(300):
        (src / "a" / f"{i:03d}.png").write_bytes(tiny)
    _age(src)
    assert run("data", "pack", src, "-o", tmp_path / "out").exit_code == 0
    f = pq.ParquetFile(tmp_path / "out" / "train-00000-of-00001.parquet")
    assert [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] == [256, 44]


def test_imagenet_layout_gives_train_and_validation_with_train_labels(tmp_path):
    src = tmp_path / "src"
    _tree(src / "train", bad=False)
    _tree(src / "val", counts=(0, 0, 2), bad=False)  # only class_c in val: its label must stay 2
    (src / "val" / "class_a").rmdir()
    (src / "val" / "class_b").rmdir()
    _age(src)
    out = tmp_path / "shards"
    assert run("data", "pack", src, "-o", out).exit_code == 0
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    val = pq.read_table(out / names[1])
    assert val.column("label").to_pylist() == [2, 2]
    assert json.loads(val.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"] == [
        "class_a", "class_b", "class_c"]
    summary = json.loads(run("data", "index", src, "--json").output)
    assert [(s["split"], s["images"]) for s in summary["splits"]] == [("train", 9), ("validation", 2)]
    shards = json.loads(run("data", "index", out, "--json").output)
    assert [(s["split"], s["images"]) for s in shards["splits"]] == [("train", 9), ("validation", 2)]
    assert [c["count"] for c in shards["splits"][1]["classes"]] == [0, 0, 2]


def test_a_validation_class_unknown_to_train_is_refused(tmp_path):
    src = tmp_path / "src"
    _tree(src / "train", bad=False)
    (src / "val" / "class_z").mkdir(parents=True)
    (src / "val" / "class_z" / "z.png").write_bytes(_image_bytes(4, 4, "PNG", 7))
    result = run("data", "pack", src, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "class folder(s) class_z not among the training set's 3 classes" in result.output
    assert not (tmp_path / "out").exists()


def test_an_interrupted_pack_resumes_to_identical_shards(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src")
    assert run("data", "pack", src, "-o", tmp_path / "whole", "--shard-size", 3).exit_code == 0
    real, calls = pack_module._write_shard, []

    def stop_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pack_module, "_write_shard", stop_after_one)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        pack_module.pack_folder(src, out, shard_size=3)
    first = out / "train-00000-of-00003.parquet"
    assert sorted(p.name for p in out.iterdir()) == ["effv2-pack.json", first.name]
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(pack_module, "_write_shard", real)
    result = run("data", "pack", src, "-o", out, "--shard-size", 3)
    assert result.exit_code == 0 and "2 written, 1 kept" in result.output
    assert first.stat().st_mtime_ns == stamp  # kept, not written again
    for p in (tmp_path / "whole").glob("*.parquet"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_a_damaged_shard_is_written_again(tmp_path):
    src = _tree(tmp_path / "src")
    out = tmp_path / "shards"
    run("data", "pack", src, "-o", out, "--shard-size", 4)
    good = (out / "train-00001-of-00003.parquet").read_bytes()
    (out / "train-00001-of-00003.parquet").write_bytes(good[: len(good) // 2])
    result = run("data", "pack", src, "-o", out, "--shard-size", 4)
    assert "1 written, 2 kept" in result.output
    assert (out / "train-00001-of-00003.parquet").read_bytes() == good


def test_a_resume_after_the_folder_changed_is_refused(tmp_path):
    src = _tree(tmp_path / "src")
    out = tmp_path / "shards"
    run("data", "pack", src, "-o", out, "--shard-size", 4)
    (src / "class_a" / "extra.png").write_bytes(_image_bytes(3, 3, "PNG", 99))
    result = run("data", "pack", src, "-o", out, "--shard-size", 4)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"{out}: holds a pack of another plan (shard train-00000-of-00003.parquet would hold other files); "
        f"pass --overwrite to start again"]
    again = run("data", "pack", src, "-o", out, "--shard-size", 4, "--overwrite")
    assert again.exit_code == 0 and len(_read_back(out)[0]) == 10


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("foreign_out", "exists and is not an unfinished effv2 pack (no effv2-pack.json)"),
    ("out_is_file", "exists and is not a folder"),
    ("out_inside", "lies inside"),
])
def test_pack_bad_input_is_one_line(tmp_path, case, message):
    src, out = tmp_path / "src", tmp_path / "out"
    if case == "file":
        src.write_bytes(b"x")
    elif case != "missing":
        _tree(src)
    if case == "foreign_out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "out_is_file":
        out.write_text("mine")
    elif case == "out_inside":
        out = src / "shards"
    result = run("data", "pack", src, "-o", out)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    if case in ("foreign_out", "out_is_file"):
        assert "mine" in (out / "notes.txt" if case == "foreign_out" else out).read_text()


def test_pack_usage_errors_exit_2(tmp_path):
    src = _tree(tmp_path / "src")
    assert run("data", "pack", src).exit_code == 2  # no -o
    assert run("data", "pack", src, "-o", tmp_path / "o", "--format", "tar").exit_code == 2
    assert run("data", "pack", src, "-o", tmp_path / "o", "--shard-size", 0).exit_code == 2


def test_pack_without_pyarrow_says_so(tmp_path, monkeypatch):
    import sys

    src = _tree(tmp_path / "src")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = run("data", "pack", src, "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip() == f"{src}: needs pyarrow (pip install 'effv2[data]')"


def test_index_of_a_folder_and_of_its_shards_agree(tmp_path):
    src = _tree(tmp_path / "src")
    folder = json.loads(run("data", "index", src, "--json").output)
    run("data", "pack", src, "-o", tmp_path / "shards", "--shard-size", 4)
    shards = json.loads(run("data", "index", tmp_path / "shards", "--json").output)
    a, b = folder["splits"][0], shards["splits"][0]
    assert a["classes"] == b["classes"] == [{"name": "class_a", "count": 3}, {"name": "class_b", "count": 2},
                                            {"name": "class_c", "count": 4}]
    heights = [5, 6, 7, 5, 6, 5, 6, 7, 8]  # 5 + i for each class's files
    assert a["height"] == b["height"] == {"min": 5, "median": float(np.median(heights)), "max": 8}
    assert a["width"] == b["width"] == {"min": 7, "median": 8.0, "max": 9}
    assert a["modes"] == b["modes"] == {"RGB": 9}
    assert a["formats"] == b["formats"] == {"JPEG": 5, "PNG": 4}
    assert [e["path"] for e in a["excluded"]] == [str((src / "class_b" / "broken.jpg").resolve())]
    assert b["excluded"] == []  # pack skipped it


def test_index_text_lists_counts_sizes_and_excluded_files(tmp_path):
    src = _tree(tmp_path / "src")
    out = run("data", "index", src).output
    assert f"train: {src.resolve()}: 9 images in 3 classes (per class 2 to 4)" in out
    assert "  class_c: 4" in out and "height min/median/max: 5 / 6 / 8 px; width: 7 / 8 / 9 px" in out
    assert "excluded (unreadable): 1" in out
    assert "broken.jpg: not an image Pillow can read (UnidentifiedImageError: cannot identify image file)\n" in out
    assert "(cached)" in run("data", "index", src).output
    assert "(cached)" not in run("data", "index", src, "--refresh").output


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("garbage", "not a folder or Parquet shards"),
    ("garbage_parquet", "not a readable Parquet shard"),
    ("no_classes", "no class sub-folders"),
    ("empty_glob", "no Parquet shards match"),
])
def test_index_bad_input_is_one_line(tmp_path, case, message):
    target = tmp_path / "x"
    if case == "garbage":
        target.write_bytes(b"\x00garbage")
    elif case == "garbage_parquet":
        target = tmp_path / "train-00000-of-00001.parquet"
        target.write_bytes(b"PAR1 not really")
    elif case == "no_classes":
        target.mkdir()
    elif case == "empty_glob":
        target = tmp_path / "*.parquet"
    result = run("data", "index", target)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- show


def _square_tree(root, classes=3, per_class=5, size=16):
    """Distinct random RGB PNGs of exactly `size` px: at a stage of that size with no augmentation a
    training sample is the file's own pixels."""
    for c in range(classes):
        d = root / f"k{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.random.default_rng(100 * c + i).integers(0, 256, (size, size, 3), dtype=np.uint8)
                            ).save(d / f"{i}.png")
    _age(root)
    return root


def _tiles(png, n, size, title_lines=2):
    from effv2_train.data.contact_sheet import tile_origin, tile_scale

    sheet = np.asarray(Image.open(png).convert("RGB"))
    scale = tile_scale(size)
    out = []
    for k in range(n):
        x0, y0 = tile_origin(k, n, size, title_lines)
        block = sheet[y0:y0 + size * scale, x0:x0 + size * scale]
        assert (block == np.repeat(np.repeat(block[::scale, ::scale], scale, 0), scale, 1)).all()  # nearest
        out.append(block[::scale, ::scale])
    return out


def test_show_at_an_unaugmented_stage_gives_the_files_pixels(tmp_path):
    src = _square_tree(tmp_path / "src")
    png = tmp_path / "sheet.png"
    result = run("data", "show", src, "--stage", 0, "-n", 6, "-o", png)  # nano-paper stage 0: 16 px, no RandAugment
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{png}: 6 samples of stage 0 (16 px)"
    files = {np.asarray(Image.open(p)).tobytes(): p for p in src.rglob("*.png")}
    shown = [files.get(t.tobytes()) for t in _tiles(png, 6, 16)]
    assert None not in shown and len(set(shown)) == 6


def test_show_matches_the_trainers_batch_with_mixup(tmp_path):
    from effv2_cli.train import DEFAULT_SCHEDULE, DEFAULT_SPEC, DEFAULT_TRAINING
    from effv2_train.data.contact_sheet import sample_images
    from effv2_train.data.pipeline import StepData
    from effv2_train.data.sources import open_split
    from effv2_train.plan import TrainingPlan
    from effv2_spec.documents import load_architecture, load_schedule, load_training

    src = _square_tree(tmp_path / "src", size=32)
    spec, sched, config = (load_architecture(DEFAULT_SPEC), load_schedule(DEFAULT_SCHEDULE),
                           load_training(DEFAULT_TRAINING))
    train, _ = open_split(str(src), None, num_classes=spec.num_classes, channels=3, digits_size=32)
    images, captions, stage, rows = sample_images(train, spec, sched, config, stage=1, seed=3, n=8)
    assert stage.regularizers["mixup_alpha"] > 0 and any(" + " in c for c in captions)
    # the trainer's own batch for the same step, normalised: un-normalising the sheet's pixels gives it back
    plan = TrainingPlan(spec, sched, config, len(train), seed=3)
    x, targets = StepData(plan, train).batch(stage.start_step, slice(0, 8), plan.stage_resolved(stage))
    norm = spec.input.normalization
    pixels = x.transpose(0, 2, 3, 1) * np.asarray(norm.std) + np.asarray(norm.mean)
    assert np.abs(images - pixels).max() <= 0.5 + 1e-3
    assert list(rows) == list(plan.batch_indices(stage.start_step)[:8])
    top = targets.argmax(1)
    assert [c.split(" + ")[0].split(" ")[-1] for c in captions] == [train.classes[k] for k in top]
    png = tmp_path / "s.png"
    assert run("data", "show", src, "--stage", 1, "--seed", 3, "-n", 8, "-o", png).exit_code == 0
    assert all((t == im).all() for t, im in zip(_tiles(png, 8, 32), images))


def test_show_is_keyed_by_the_seed(tmp_path):
    src = _square_tree(tmp_path / "src")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run("data", "show", src, "--seed", seed, "-n", 4, "-o", tmp_path / f"{name}.png").exit_code == 0
    read = {n: (tmp_path / f"{n}.png").read_bytes() for n in "abc"}
    assert read["a"] == read["b"] != read["c"]


def test_network_pixels_undoes_the_normalisation():
    from types import SimpleNamespace

    from effv2_train.data.contact_sheet import network_pixels

    norm = SimpleNamespace(mean=[10.0, 20.0, 30.0], std=[2.0, 4.0, 8.0])
    spec = SimpleNamespace(input=SimpleNamespace(normalization=norm))
    resolved = SimpleNamespace(normalize_in_model=False, spec=spec)
    x = np.zeros((1, 3, 1, 2))
    x[0, :, 0, 0] = [0.0, 1.0, -1.0]  # -> 10, 24, 22
    x[0, :, 0, 1] = [200.0, -50.0, 1.2]  # -> clipped 255, clipped 0, 39.6 -> 40
    assert network_pixels(x, resolved).tolist() == [[[[10, 24, 22], [255, 0, 40]]]]
    resolved.normalize_in_model = True
    assert network_pixels(x, resolved)[0, 0, 1].tolist() == [200, 0, 1]


@pytest.mark.parametrize("case, code, message", [
    ("missing", 1, "no such file or folder"),
    ("garbage", 1, "not a readable .npz file"),
    ("exists", 1, "already exists; pass --overwrite to replace it"),
    ("stage", 2, "Invalid value for '--stage': 7: the schedule has stages 0 to 1 here"),
    ("spec", 1, "no-such-spec"),
])
def test_show_bad_input_is_one_line(tmp_path, case, code, message):
    src = _square_tree(tmp_path / "src")
    out = tmp_path / "sheet.png"
    args = ["data", "show", src, "-o", out]
    if case == "missing":
        args[2] = tmp_path / "nope"
    elif case == "garbage":
        args[2] = tmp_path / "g.npz"
        args[2].write_bytes(b"\x00garbage")
    elif case == "exists":
        out.write_bytes(b"mine")
    elif case == "stage":
        args += ["--stage", 7]
    else:
        args += ["--spec", "no-such-spec"]
    result = run(*args)
    assert result.exit_code == code and message in result.output, result.output
    if case != "stage":
        assert len(result.output.strip().splitlines()) == 1
    assert out.read_bytes() == b"mine" if case == "exists" else not out.exists()


def test_show_takes_more_classes_than_the_spec_has(tmp_path):
    src = _square_tree(tmp_path / "src", classes=12, per_class=2)  # efficientnetv2-nano has 10 classes
    result = run("data", "show", src, "-n", 4, "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.output


def test_caption_names_the_class_or_the_two_largest_weights():
    from effv2_train.data.contact_sheet import caption

    names = ["cat", "dog", "eel"]
    assert caption(np.array([0.0, 1.0, 0.0]), names) == "dog"
    assert caption(np.array([0.0, 0.62, 0.38]), names) == "62% dog + 38% eel"
    assert caption(np.array([0.003, 0.997, 0.0]), names) == "dog"  # would read "100% dog + 0% cat"
    assert caption(np.array([0.1, 0.2, 0.7, 0.0]), names[:2]) == "70% 2 + 20% dog"  # no name: the index


def test_index_verify_lists_files_whose_pixels_do_not_decode(tmp_path):
    src = _tree(tmp_path / "src")
    whole = _image_bytes(40, 30, "JPEG", 5)
    (src / "class_c" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # the header reads; the data ends early
    _age(src)
    plain = run("data", "index", src, "--json")
    assert plain.exit_code == 0 and "damaged" not in json.loads(plain.output)["splits"][0]
    verified = run("data", "index", src, "--json", "--verify")
    assert verified.exit_code == 1
    damaged = json.loads(verified.output)["splits"][0]["damaged"]
    assert [d["path"] for d in damaged] == [str((src / "class_c" / "cut.jpg").resolve())]
    assert "truncated" in damaged[0]["reason"]
    assert run("data", "pack", src, "-o", tmp_path / "shards").exit_code == 0  # bytes stored as they are
    shards = run("data", "index", tmp_path / "shards", "--verify")
    assert shards.exit_code == 1
    assert "damaged (the header reads, the pixels do not decode; training would stop): 1" in shards.output
    assert "train-00000-of-00001.parquet#5: OSError: image file is truncated" in shards.output  # class_c's first
    assert run("data", "index", tmp_path / "shards").exit_code == 0
