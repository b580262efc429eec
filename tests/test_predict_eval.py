"""`effv2 predict` / `effv2 eval` with the oracle: the transform, accuracy counted independently, bad input.

The eval-transform geometry is checked against each rule written out independently here
(torchvision, timm and Keras themselves are compared in tests/torch and tests/jax). The
accuracy test builds a folder whose expected top-1 / top-5 accuracy is known in advance:
the oracle's own predictions, computed here on hand-prepared pixels, decide which images go
into their predicted class's folder and which into a wrong one.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from effv2_spec.architecture import ArchitectureSpec, EvalPreprocessing
from effv2_cli import main
from effv2_spec.documents import load_architecture, parse_obj

CLASSES = 12
SIZE = 24


def small_spec(**changes) -> dict:
    doc = {
        "name": "predict-small", "num_classes": CLASSES,
        "input": {"channels": 3, "train_image_size": SIZE, "eval_image_size": SIZE,
                  "normalization": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
                  "eval_preprocessing": {"resize": "shorter_side", "interpolation": "bicubic", "crop_fraction": 0.875}},
        "stem": {"kernel": 3, "stride": 2, "channels": 8},
        "stages": [
            {"type": "fused_mbconv", "kernel": 3, "stride": 1, "expand_ratio": 1.0, "out_channels": 8, "repeats": 1},
            {"type": "mbconv", "kernel": 3, "stride": 2, "expand_ratio": 3.0, "out_channels": 16, "repeats": 2,
             "se_ratio": 0.25},
        ],
        "head": {"channels": 32},
    }
    doc.update(changes)
    return doc


def random_weights(spec: ArchitectureSpec, seed: int) -> dict[str, np.ndarray]:
    """Spec-initialised weights with non-trivial BN statistics (so logits spread out)."""
    from effv2_reference.model import ReferenceModel

    model = ReferenceModel(spec, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for name, v in state.items():
        if name.endswith("running_mean") or name.endswith("bn.bias"):
            state[name] = rng.normal(0, 0.2, v.shape)
        elif name.endswith("running_var") or name.endswith("bn.weight"):
            state[name] = rng.uniform(0.5, 1.5, v.shape)
        elif name == "classifier.bias":
            state[name] = rng.normal(0, 0.5, v.shape)
    return state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, spec path, weights path, spec, oracle model) for the small spec."""
    from effv2_reference.model import ReferenceModel
    from effv2_spec.weights import save_weights

    root = tmp_path_factory.mktemp("predict")
    spec = parse_obj(small_spec(), ArchitectureSpec)
    spec_path = root / "small.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    tensors = random_weights(spec, 3)
    save_weights(root / "w.safetensors", spec, tensors)
    model = ReferenceModel(spec, dtype="float64")
    model.load_state_dict(tensors)
    return root, spec_path, root / "w.safetensors", spec, model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB images of assorted sizes and aspect ratios (landscape, portrait, square)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = [(37, 61), (58, 33), (40, 40), (29, 50)][i % 4]
        small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))
    return out


# ---- the transform's geometry ---------------------------------------------------------------------------
def by_hand(img: Image.Image, size: int, how: EvalPreprocessing) -> np.ndarray:
    """Each policy as its source writes it (see docs/evaluation.md), without effv2's code."""
    f = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
         "nearest": Image.Resampling.NEAREST}[how.interpolation]
    w, h = img.size
    if how.resize == "crop_then_resize":  # automl preprocess_legacy._decode_and_center_crop
        c = int(how.crop_fraction * min(h, w))
        oy, ox = ((h - c) + 1) // 2, ((w - c) + 1) // 2
        return np.asarray(img.crop((ox, oy, ox + c, oy + c)).resize((size, size), f))
    scale = math.floor(size / how.crop_fraction)  # timm transforms_imagenet_eval
    if how.resize == "whole_image":
        r = img.resize((scale, scale), f)
    else:  # torchvision _compute_resized_output_size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(scale * long / short)
        r = img.resize((scale, new_long) if w <= h else (new_long, scale), f)
    rw, rh = r.size
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    return np.asarray(r)[top:top + size, left:left + size]


@pytest.mark.parametrize("resize", ["crop_then_resize", "shorter_side", "whole_image"])
@pytest.mark.parametrize("fraction", [1.0, 0.875, 0.6])
def test_transform_matches_each_rule_written_out(resize, fraction):
    from effv2_train.preprocess import pixels

    how = EvalPreprocessing(resize=resize, interpolation="bicubic", crop_fraction=fraction)
    for img in photos(4):
        for size in (16, 21):
            got = pixels(img, size, how)
            assert got.shape == (size, size, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, by_hand(img, size, how))


def test_exif_orientation_is_applied_and_any_mode_becomes_rgb(tmp_path):
    from effv2_train.preprocess import load_image

    img = photos(1)[0]  # 61 wide, 37 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "r.jpg").size == (37, 61)
    img.convert("L").save(tmp_path / "g.png")
    img.convert("P").save(tmp_path / "p.gif")
    img.convert("RGBA").save(tmp_path / "a.png")
    for name in ("g.png", "p.gif", "a.png"):
        assert load_image(tmp_path / name).mode == "RGB"


def test_presets_state_their_peer_preprocessing():
    """Spot values from the peers' sources (docs/evaluation.md has the table and citations)."""
    s, tv, tm, kb = (load_architecture(n).input for n in
                     ("efficientnetv2-s", "efficientnetv2-l-torchvision", "efficientnetv2-b0-timm",
                      "efficientnetv2-b0-keras"))
    assert (s.eval_preprocessing.resize, s.eval_preprocessing.interpolation) == ("whole_image", "bilinear")
    assert (tv.eval_preprocessing.resize, tv.eval_preprocessing.interpolation) == ("shorter_side", "bicubic")
    assert tv.normalization.mean == (127.5,) * 3
    assert tm.eval_preprocessing.crop_fraction == 0.875 and tm.eval_preprocessing.interpolation == "bicubic"
    assert kb.normalization.in_model and kb.eval_preprocessing.interpolation == "nearest"
    b1 = load_architecture("efficientnetv2-b1").input
    assert b1.eval_preprocessing.resize == "crop_then_resize" and b1.eval_preprocessing.crop_fraction == 240 / 272


# ---- predict ----------------------------------------------------------------------------------------------
def test_predict_gives_the_oracle_top_k_on_hand_prepared_pixels(setup, tmp_path):
    root, spec_path, weights, spec, model = setup
    imgs = photos(3, seed=5)
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"img{i}.png")
        img.save(paths[-1])
    r = run("predict", spec_path, "--weights", weights, *paths, "--top", CLASSES, "--json", "--dtype", "float64")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    mean, std = np.array(spec.input.normalization.mean), np.array(spec.input.normalization.std)
    x = np.stack([(by_hand(img, SIZE, spec.input.eval_preprocessing) - mean) / std for img in imgs])
    logits = model.forward(x.transpose(0, 3, 1, 2))
    for res, z in zip(results, logits):
        assert [t["class"] for t in res["top"]] == list(np.argsort(-z, kind="stable"))
        got = np.array([t["logit"] for t in sorted(res["top"], key=lambda t: t["class"])])
        assert np.max(np.abs(got - z)) <= 1e-12 * np.max(np.abs(z))
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.allclose([t["probability"] for t in res["top"]], np.sort(p)[::-1], rtol=1e-12)
    text = run("predict", spec_path, "--weights", weights, paths[0], "--top", 2)
    assert text.exit_code == 0 and text.output.count("class") == 2


def test_predict_names_classes_from_a_labels_file_and_imagenet_by_default(setup, tmp_path):
    root, spec_path, weights, spec, model = setup
    photos(1)[0].save(tmp_path / "a.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(CLASSES)))
    out = json.loads(run("predict", spec_path, "-w", weights, tmp_path / "a.png", "--labels", labels, "--json").stdout)
    assert all(t["label"] == f"thing {t['class']}" for t in out["results"][0]["top"])
    # a 1000-class network names ImageNet classes offline
    spec1k = parse_obj(small_spec(num_classes=1000, name="small-1k"), ArchitectureSpec)
    from effv2_spec.weights import save_weights

    (tmp_path / "s1k.json").write_text(spec1k.model_dump_json())
    save_weights(tmp_path / "w1k.safetensors", spec1k, random_weights(spec1k, 1))
    out = json.loads(run("predict", tmp_path / "s1k.json", "-w", tmp_path / "w1k.safetensors", tmp_path / "a.png",
                         "--json", "--top", 1000).stdout)
    from effv2_train.labels import imagenet1k

    top = out["results"][0]["top"]
    assert top[0]["label"] == imagenet1k()[top[0]["class"]][1] and {t["class"] for t in top} == set(range(1000))
    assert imagenet1k()[0] == ("n01440764", "tench, Tinca tinca") and imagenet1k()[999][0] == "n15075141"


# ---- eval -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(setup, tmp_path_factory):
    """A class folder tree with a known accuracy, plus its expected numbers and the same data as .npz."""
    root, spec_path, weights, spec, model = setup
    stage = tmp_path_factory.mktemp("stage")
    files = []
    for i, img in enumerate(photos(11, seed=9)):  # PNG and JPEG; predictions below use the stored pixels
        files.append(stage / f"img{i}.{'png' if i % 2 else 'jpg'}")
        img.save(files[-1], quality=90)
    stored = [Image.open(f).convert("RGB") for f in files]
    mean, std = np.array(spec.input.normalization.mean), np.array(spec.input.normalization.std)
    x = np.stack([(by_hand(img, SIZE, spec.input.eval_preprocessing) - mean) / std for img in stored])
    logits = model.forward(x.transpose(0, 3, 1, 2))
    order = np.argsort(-logits, axis=1, kind="stable")
    # images 0..5 go to their predicted class; 6..8 to their 3rd choice (top-5 hit); 9, 10 to their last
    labels = np.array([order[i, 0] for i in range(6)] + [order[i, 2] for i in range(6, 9)]
                      + [order[i, -1] for i in range(9, 11)])
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean([labels[i] in order[i, :5] for i in range(11)])
    assert (top1, top5) == (6 / 11, 9 / 11)  # the construction, counted independently of effv2 eval
    data = tmp_path_factory.mktemp("folder")
    names = [f"class{c:02d}" for c in range(CLASSES)]  # sorted names = class indices
    for n in names:
        (data / n).mkdir()
    for f, c in zip(files, labels):
        shutil.copy(f, data / names[c] / f.name)
    stored = [np.asarray(img) for img in stored]
    return data, labels, top1, top5, stored


def test_eval_reports_the_accuracy_known_in_advance(setup, folder):
    root, spec_path, weights, spec, model = setup
    data, labels, top1, top5, _ = folder
    r = run("eval", spec_path, "-w", weights, "--data", data, "--batch", 4, "--json", "--dtype", "float64")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["images"], out["top1"], out["top5"], out["skipped"]) == (11, top1, top5, [])
    assert out["images_per_s"] > 0
    text = run("eval", spec_path, "-w", weights, "--data", data)
    assert text.exit_code == 0
    assert f"top-1 {100 * top1:.2f}%" in text.output and f"top-5 {100 * top5:.2f}%" in text.output


def test_eval_on_npz_streams_the_same_images(setup, folder, tmp_path):
    root, spec_path, weights, spec, model = setup
    data, labels, _, _, stored = folder
    # .npz holds equal-size arrays: pad each stored image into a 64x64 canvas would change the transform,
    # so store those of one size (40x40) only and compare with the folder restricted to them
    keep = [i for i, a in enumerate(stored) if a.shape[:2] == (40, 40)]
    np.savez_compressed(tmp_path / "d.npz", images=np.stack([stored[i] for i in keep]), labels=labels[keep])
    sub = tmp_path / "sub"
    for i in keep:
        src = next(data.glob(f"*/img{i}.*"))
        (sub / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, sub / src.parent.name / src.name)
    for n in range(CLASSES):
        (sub / f"class{n:02d}").mkdir(exist_ok=True)
    a = json.loads(run("eval", spec_path, "-w", weights, "--data", tmp_path / "d.npz", "--batch", 2, "--json").stdout)
    b = json.loads(run("eval", spec_path, "-w", weights, "--data", sub, "--json").stdout)
    assert a["images"] == b["images"] == len(keep) >= 2
    assert (a["correct_top1"], a["correct_top5"]) == (b["correct_top1"], b["correct_top5"])


def test_eval_skips_unreadable_files_by_name_and_count(setup, folder, tmp_path):
    root, spec_path, weights, spec, model = setup
    data, labels, top1, top5, _ = folder
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    (copy / "class00" / "notes.txt").write_text("not an image")
    (copy / "class01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run("eval", spec_path, "-w", weights, "--data", copy, "--json", "--dtype", "float64")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["images"] == 11 and out["top1"] == top1 and len(out["skipped"]) == 2
    assert any("notes.txt" in s for s in out["skipped"]) and any("broken.jpg" in s for s in out["skipped"])


def test_eval_maps_folder_names_through_a_class_index_file(setup, folder, tmp_path):
    root, spec_path, weights, spec, model = setup
    data, labels, top1, top5, _ = folder
    renamed = tmp_path / "renamed"
    mapping = {}
    for c in range(CLASSES):  # names whose sorted order is not the class order
        name = f"z{CLASSES - c:02d}-kind"
        shutil.copytree(data / f"class{c:02d}", renamed / name)
        mapping[name] = c
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    lines = tmp_path / "map.txt"
    lines.write_text("".join(f"{n}\n" for n, _ in sorted(mapping.items(), key=lambda kv: kv[1])))
    for m in (tmp_path / "map.json", lines):
        out = json.loads(run("eval", spec_path, "-w", weights, "--data", renamed, "--class-index", m, "--json").stdout)
        assert (out["top1"], out["top5"]) == (top1, top5)


# ---- bad input --------------------------------------------------------------------------------------------
def one_line_exit_1(r, *needles):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_1(setup, folder, tmp_path):
    root, spec_path, weights, spec, model = setup
    data = folder[0]
    photos(1)[0].save(tmp_path / "ok.png")
    (tmp_path / "text.jpg").write_text("hello")
    one_line_exit_1(run("predict", spec_path, "-w", weights, tmp_path / "ok.png", tmp_path / "text.jpg"),
                    "text.jpg", "not an image")
    one_line_exit_1(run("predict", spec_path, "-w", weights, tmp_path / "absent.png"), "absent.png", "no such file")
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    one_line_exit_1(run("predict", spec_path, "-w", weights, tmp_path / "ok.png", "--labels", short),
                    "short.txt", "2 labels", f"num_classes = {CLASSES}")
    # weights of another network: other shapes, and the same shapes under another padding rule
    other = parse_obj(small_spec(name="other", head={"channels": 48}), ArchitectureSpec)
    other_path = tmp_path / "other.json"
    other_path.write_text(other.model_dump_json())
    one_line_exit_1(run("predict", other_path, "-w", weights, tmp_path / "ok.png"), "w.safetensors", "predict-small")
    sym = parse_obj(small_spec(name="sym", conventions={"padding": "symmetric"}), ArchitectureSpec)
    (tmp_path / "sym.json").write_text(sym.model_dump_json())
    one_line_exit_1(run("eval", tmp_path / "sym.json", "-w", weights, "--data", data),
                    "conventions.padding", "tf_same", "symmetric")
    # preprocessing-only differences are fine: same network
    same = parse_obj(small_spec(name="same-net", input={**small_spec()["input"], "eval_image_size": 32}),
                     ArchitectureSpec)
    (tmp_path / "same.json").write_text(same.model_dump_json())
    assert run("predict", tmp_path / "same.json", "-w", weights, tmp_path / "ok.png").exit_code == 0
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    one_line_exit_1(run("predict", spec_path, "-w", tmp_path / "bad.safetensors", tmp_path / "ok.png"),
                    "bad.safetensors")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.txt").write_text("x")
    r = run("eval", spec_path, "-w", weights, "--data", empty)  # the skip notice, then the error
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].endswith("no readable image (1 file(s) skipped)")
    one_line_exit_1(run("eval", spec_path, "-w", weights, "--data", tmp_path / "nothing"), "no such file or folder")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    one_line_exit_1(run("eval", spec_path, "-w", weights, "--data", tmp_path / "nolabels.npz"), "labels")
    np.savez(tmp_path / "range.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, CLASSES]))
    one_line_exit_1(run("eval", spec_path, "-w", weights, "--data", tmp_path / "range.npz"), "labels", "[0, 12)")
    (tmp_path / "map.json").write_text(json.dumps({"class00": 0}))
    one_line_exit_1(run("eval", spec_path, "-w", weights, "--data", data, "--class-index", tmp_path / "map.json"),
                    "map.json", "class01")


def test_usage_errors_exit_2(setup, tmp_path):
    root, spec_path, weights, spec, model = setup
    photos(1)[0].save(tmp_path / "ok.png")
    assert run("predict", spec_path, "-w", weights, tmp_path / "ok.png", "--framework", "tensorflow").exit_code == 2
    assert run("predict", spec_path, tmp_path / "ok.png").exit_code == 2  # no --weights
    assert run("predict", spec_path, "-w", weights).exit_code == 2  # no image
    assert run("eval", spec_path, "-w", weights).exit_code == 2  # no --data
    assert run("predict", spec_path, "-w", weights, tmp_path / "ok.png", "--top", 0).exit_code == 2


def test_eval_maps_imagenet_synset_folders_by_the_builtin_list(tmp_path):
    """Folders named by synsets take their ImageNet-1k index, not their sorted position."""
    from effv2_train.labels import imagenet1k
    from effv2_reference.model import ReferenceModel
    from effv2_spec.weights import save_weights

    spec = parse_obj(small_spec(num_classes=1000, name="small-1k"), ArchitectureSpec)
    (tmp_path / "s.json").write_text(spec.model_dump_json())
    tensors = random_weights(spec, 2)
    save_weights(tmp_path / "w.safetensors", spec, tensors)
    model = ReferenceModel(spec, dtype="float64")
    model.load_state_dict(tensors)
    imgs = photos(3, seed=11)
    mean, std = np.array(spec.input.normalization.mean), np.array(spec.input.normalization.std)
    x = np.stack([(by_hand(img, SIZE, spec.input.eval_preprocessing) - mean) / std for img in imgs])
    predicted = np.argmax(model.forward(x.transpose(0, 3, 1, 2)), axis=1)
    assert sorted(set(predicted)) != list(range(len(set(predicted))))  # sorted-position indices would be wrong
    for i, (img, c) in enumerate(zip(imgs, predicted)):
        folder = tmp_path / "val" / imagenet1k()[c][0]
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i}.png")
    r = run("eval", tmp_path / "s.json", "-w", tmp_path / "w.safetensors", "--data", tmp_path / "val", "--json",
            "--dtype", "float64")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top1"] == 1.0
