"""Sources that stay on disk: image folders (plain and ImageNet layout) and Parquet shards, against
independent decodes with Pillow and pyarrow; crops of the original, at a reduced JPEG scale when the
crop allows; workers that receive a description, not images; bad files named."""

import json
import os
import pickle
import time

import numpy as np
import pytest
from PIL import Image

from effv2_train.data import DataError, open_source, open_split
from effv2_train.data.decode import decode_region, draft_factor
from effv2_train.data.folder_index import build_index
from effv2_train.data.loader import BatchLoader
from effv2_train.data.pipeline import StepData, eval_input
from effv2_train.plan import TrainingPlan
from effv2_train.preprocess import prepare
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_spec.resolve import resolve
from source_trees import CLASSES, decode, photo, write_imagenet_layout, write_shards, write_tree

OPTIONS = dict(num_classes=10, channels=3)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """ROOT/train (4 per class) + ROOT/val (2 per class), and the same files as Parquet shards."""
    root = write_imagenet_layout(tmp_path_factory.mktemp("imagenet"), 4, 2)
    shards = tmp_path_factory.mktemp("shards")
    write_shards(shards, root / "train", "train", shards=2, row_group=5)
    write_shards(shards, root / "val", "validation", shards=1)
    return root, shards


def test_imagenet_layout_trains_on_train_and_validates_on_val(layout):
    root, _ = layout
    train, val = open_split(str(root), None, **OPTIONS)
    assert (len(train), len(val)) == (12, 6) and train.classes == val.classes == CLASSES
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    files = sorted((root / "train").rglob("*.jpg"))
    for i in (0, 5, 11):  # originals, at their own sizes
        assert np.array_equal(train.image(i), decode(files[i]))
        assert train.image_size(i) == decode(files[i]).shape[:2]


def test_parquet_shards_hold_the_same_data_set(layout):
    root, shards = layout
    train, val = open_split(str(shards), None, **OPTIONS)
    folder_train, folder_val = open_split(str(root), None, **OPTIONS)
    assert train.classes == CLASSES and train.named_classes
    assert np.array_equal(train.labels, folder_train.labels) and np.array_equal(val.labels, folder_val.labels)
    for i in range(len(train)):
        assert np.array_equal(train.image(i), folder_train.image(i)), i
        assert train.image_size(i) == folder_train.image_size(i)
    assert train.location(7).endswith("train-00001-of-00002.parquet#1")
    # a glob of shards is one data set, split into train and held-out by the fixed generator
    whole = open_source(str(shards / "train-*.parquet"), **OPTIONS)
    assert len(whole) == 12


def test_val_data_overrides_and_unknown_classes_are_refused(layout, tmp_path):
    root, _ = layout
    train, val = open_split(str(root / "train"), str(root / "val"), **OPTIONS)
    assert len(val) == 6 and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # val/ with only some classes maps by name onto the training set's labels
    write_tree(tmp_path / "v", 1)
    (tmp_path / "v" / "ant").rename(tmp_path / "v" / "zzz_unused")
    with pytest.raises(DataError, match="zzz_unused"):
        open_split(str(root / "train"), str(tmp_path / "v"), **OPTIONS)
    (tmp_path / "v" / "zzz_unused").rename(tmp_path / "v" / "ant")
    for p in (tmp_path / "v" / "ant").iterdir():
        p.unlink()
    (tmp_path / "v" / "ant").rmdir()
    _, v = open_split(str(root / "train"), str(tmp_path / "v"), **OPTIONS)
    assert v.labels.tolist() == [1, 2]  # bee and cat keep the training set's numbers


def test_a_plain_folder_keeps_the_fixed_held_out_split(layout):
    root, _ = layout
    train, held = open_split(str(root / "train"), None, **OPTIONS)
    assert len(train) + len(held) == 12 and len(held) == 3 and sorted(held.labels.tolist()) == [0, 1, 2]
    again = open_split(str(root / "train"), None, **OPTIONS)[1]
    assert np.array_equal(held.rows, again.rows)


def test_draft_decoding_reduces_the_scale_only_as_far_as_the_crop_allows(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(photo(np.random.default_rng(3), 480, 640)).save(path, "JPEG", quality=95)
    full = decode(path)
    box = (40, 60, 400, 520)  # y, x, h, w
    assert [draft_factor(box, s) for s in (300, 200, 100, 50, 20)] == [1, 2, 4, 8, 8]
    for size, factor in ((200, 2), (100, 4), (50, 8)):
        region = decode_region(str(path), box, size, 3)
        # the box scaled with the image, widened to whole pixels
        assert region.shape[:2] == (-(-(40 + 400) // factor) - 40 // factor, -(-(60 + 520) // factor) - 60 // factor)
        assert min(region.shape[:2]) >= size
        # the same picture: the full decode's crop box-averaged by the factor is within a few grey levels
        crop = full[40:440, 60:580].astype(float)
        pooled = crop.reshape(400 // factor, factor, 520 // factor, factor, 3).mean(axis=(1, 3))
        assert np.abs(region[:400 // factor, :520 // factor].astype(float) - pooled).mean() < 4.0
    assert np.array_equal(decode_region(str(path), box, 300, 3), full[40:440, 60:580])  # no reduction


def test_a_step_is_the_same_from_a_folder_from_shards_and_in_any_worker_count(layout):
    root, shards = layout
    plan = _plan(12)
    folder = StepData(plan, open_split(str(root), None, **OPTIONS)[0])
    parquet = StepData(plan, open_split(str(shards), None, **OPTIONS)[0])
    for step in (0, plan.total_steps - 1):
        rows = folder.prepare_rows(step, slice(0, 8))
        assert rows.shape == (8, plan.stage_at(step).image_size, plan.stage_at(step).image_size, 3)
        assert np.array_equal(rows, parquet.prepare_rows(step, slice(0, 8)))
    with BatchLoader(parquet, workers=2, rows=slice(0, 8)) as loader:
        assert np.array_equal(loader.rows(1), folder.prepare_rows(1, slice(0, 8)))


def test_workers_receive_a_description_not_images(layout):
    root, shards = layout
    for source in (open_split(str(root), None, **OPTIONS)[0], open_split(str(shards), None, **OPTIONS)[0]):
        image_bytes = sum(source.image(i).nbytes for i in range(len(source)))
        blob = pickle.dumps(source)
        assert len(blob) < 4000 < image_bytes, (type(source).__name__, len(blob))
        copy = pickle.loads(blob)
        assert np.array_equal(copy.image(3), source.image(3)) and np.array_equal(copy.labels, source.labels)


def test_evaluation_streams_the_validation_split_with_the_spec_transform(layout):
    root, shards = layout
    spec = load_preset("efficientnetv2-nano")
    resolved = resolve(spec)
    files = sorted((root / "val").rglob("*.jpg"))
    expected = prepare(files, spec, 24)  # effv2 eval's own path, file by file
    for source in (open_split(str(root), None, **OPTIONS)[1], open_split(str(shards), None, **OPTIONS)[1]):
        assert np.array_equal(eval_input(source, 0, len(source), 24, resolved), expected)


def test_a_file_that_fails_to_decode_mid_run_is_named(layout, tmp_path):
    tree = tmp_path / "t"
    files = write_tree(tree, 4)
    blob = files[5].read_bytes()
    files[5].write_bytes(blob[: len(blob) // 2])  # a truncated JPEG: its header (and the index) is fine
    source = open_source(str(tree), **OPTIONS)
    assert len(source) == 12
    data = StepData(_plan(12), source)
    with pytest.raises(DataError, match=files[5].name):
        for step in range(data.plan.total_steps):
            data.prepare_rows(step, slice(0, 8))


def test_a_file_rewritten_in_place_at_another_size_is_named_not_padded(tmp_path):
    """Its folder's mtime is unchanged, so the cached index stands; the crop box is drawn on the indexed size.
    Another size stops the read, naming the file; the same size is read as the file now is."""
    tree = tmp_path / "t"
    files = write_tree(tree, 4, sizes=((30, 40),))
    for folder in (tree, *{f.parent for f in files}):  # listed long after its last change: an index to trust
        os.utime(folder, ns=(time.time_ns() - 10**10,) * 2)
    source = open_source(str(tree), **OPTIONS)
    assert source.image_size(0) == (30, 40) and source.location(0) == str(files[0])
    folder_mtime = files[0].parent.stat().st_mtime_ns
    rng = np.random.default_rng(0)
    Image.fromarray(photo(rng, 30, 40)).save(files[0], "JPEG", quality=90)  # the same size, new pixels
    Image.fromarray(photo(rng, 20, 24)).save(files[1], "JPEG", quality=90)  # smaller
    assert files[0].parent.stat().st_mtime_ns == folder_mtime
    source = open_source(str(tree), **OPTIONS)  # the cached index, as the next run would use it
    assert source.index.cached
    assert source.crop(0, (0, 0, 30, 40), 16).shape == (30, 40, 3)
    for read in (lambda: source.crop(1, (5, 10, 25, 30), 16), lambda: source.image(1)):
        with pytest.raises(DataError, match=rf"{files[1].name}: is 20x24 pixels, 30x40 when it was indexed"):
            read()
    build_index(tree, refresh=True)  # effv2 data index --refresh
    source = open_source(str(tree), **OPTIONS)
    assert source.image_size(1) == (20, 24) and source.crop(1, (0, 0, 20, 24), 16).shape == (20, 24, 3)


def _plan(n: int) -> TrainingPlan:
    """Two stages (16 and 24 px), RandAugment, the official random-resized crop and flip, batch 8."""
    schedule = json.loads(load_preset("progressive-efficientnetv2-nano-paper").model_dump_json())
    schedule.update(total_steps=4, num_stages=2, image_size={"start": 16, "end": 24})
    training = json.loads(load_preset("training-cpu").model_dump_json())
    training.update(batch_size=8)
    training["augmentation"].update(mix_group_size=8, random_resized_crop={})  # the official box ranges
    assert training["randaugment_layers"] > 0
    return TrainingPlan(load_preset("efficientnetv2-nano"), parse_obj(schedule), parse_obj(training), n, seed=3)


def test_odd_but_valid_files_are_converted_the_same_way_in_every_process(tmp_path):
    """CMYK, 16-bit, greyscale, palette and a PNG named .jpg: kept, converted as `effv2 eval` converts them, and
    the same rows from a loader process as from this one."""
    rng = np.random.default_rng(5)
    root = tmp_path / "odd"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    rgb = photo(rng, 30, 40)
    Image.fromarray(rgb).convert("CMYK").save(root / "a" / "cmyk.jpg", "JPEG", quality=95)
    deep = (rng.integers(0, 65536, (20, 24))).astype(np.uint16)
    Image.fromarray(deep).save(root / "a" / "deep.png")
    Image.fromarray(rgb[..., 0]).save(root / "a" / "grey.png")
    Image.fromarray(rgb).convert("P").save(root / "b" / "palette.gif")
    Image.fromarray(rgb).save(root / "b" / "named.jpg", "PNG")
    source = open_source(str(root), **OPTIONS)
    assert len(source) == 5 and source.index.excluded == []
    by_name = {source.location(i).rsplit("/", 1)[-1]: i for i in range(len(source))}
    with Image.open(root / "a" / "cmyk.jpg") as im:
        assert np.array_equal(source.image(by_name["cmyk.jpg"]), np.asarray(im.convert("RGB")))
    scaled = np.clip(np.rint(deep * (255 / 65535)), 0, 255).astype(np.uint8)
    assert np.array_equal(source.image(by_name["deep.png"]), np.repeat(scaled[..., None], 3, axis=2))
    assert np.array_equal(source.image(by_name["grey.png"]), np.repeat(rgb[..., :1], 3, axis=2))
    with Image.open(root / "b" / "palette.gif") as im:
        assert np.array_equal(source.image(by_name["palette.gif"]), np.asarray(im.convert("RGB")))
    assert np.array_equal(source.image(by_name["named.jpg"]), rgb)  # read as the PNG it is: lossless
    repeated = source.subset(np.arange(16) % 5, "odd x 3")  # a view: enough rows for a batch of 8
    data = StepData(_plan(16), repeated)
    with BatchLoader(data, workers=1, rows=slice(0, 8)) as loader:
        assert np.array_equal(loader.rows(2), data.prepare_rows(2, slice(0, 8)))


def test_a_separate_validation_set_must_name_the_training_classes_in_order():
    from types import SimpleNamespace

    from effv2_train.data.sources import _check_same_classes

    def named(*classes):
        return SimpleNamespace(named_classes=True, classes=list(classes), name="v")

    _check_same_classes(named("a", "b", "c"), named("a", "b"))  # a prefix: the later classes are absent
    for val, fragment in ((named("a", "c"), "class 1: 'c' vs 'b'"),
                          (named("a", "b", "c", "d"), "class 3: 'd' vs none")):
        with pytest.raises(DataError, match=fragment):
            _check_same_classes(named("a", "b", "c"), val)
    _check_same_classes(named("a"), SimpleNamespace(named_classes=False, classes=["0", "1"], name="npz"))
