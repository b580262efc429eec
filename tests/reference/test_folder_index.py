"""The folder index: sizes read from headers equal the decoded images, unreadable files are excluded
with a reason, every Pillow mode a data set may hold is counted, and the cache is reused only while
the folders are unchanged."""

import io
import json
import os

import numpy as np
import pytest
from effv2_train import preprocess
from effv2_train.data.errors import DataError
from effv2_train.data.folder_index import build_index, cache_dir
from PIL import Image

OLD_NS = 1_600_000_000 * 10**9  # a folder mtime far in the past: the cache trusts it (see RACY_NS)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFV2_CACHE_DIR", str(tmp_path / "cache"))


def _age(root):
    """Set every folder's mtime far in the past, as a tree written long before it is indexed."""
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        os.utime(d, ns=(OLD_NS, OLD_NS))


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(h, w, mode="RGB"):
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w)).convert(mode).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _mixed_tree(root):
    """One file of each kind a large data set holds, good and bad. Returns {relative path: expected mode}."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / ".hidden_class").mkdir()
    (root / "stray.txt").write_text("not a class")
    files = {
        "cat/a.png": _png_bytes(Image.fromarray(_rgb(7, 11))),
        "cat/b.jpg": _jpeg_bytes(13, 9),
        "cat/cmyk.jpg": _jpeg_bytes(10, 12, "CMYK"),
        "cat/deep.png": _png_bytes(Image.fromarray((np.arange(6 * 5, dtype=np.uint16) * 2000).reshape(6, 5))),
        "dog/grey.png": _png_bytes(Image.fromarray(_rgb(8, 3)[..., 0])),
        "dog/palette.png": _png_bytes(Image.fromarray(_rgb(5, 6)).convert("P")),
        "dog/png_named.jpg": _png_bytes(Image.fromarray(_rgb(4, 14))),
    }
    bad = {
        "cat/garbage.jpg": b"\x00\x01garbage" * 10,
        "dog/cut.jpg": _jpeg_bytes(20, 20)[:30],  # cut inside the header: no size to read
        "dog/notes.txt": b"hello",
    }
    for rel, data in {**files, **bad}.items():
        (root / rel).write_bytes(data)
    (root / "cat" / ".DS_Store").write_bytes(b"\x00junk")
    (root / ".hidden_class" / "x.png").write_bytes(files["cat/a.png"])
    _age(root)
    return files, bad


def test_sizes_modes_and_exclusions_match_an_independent_decode(tmp_path):
    root = tmp_path / "tree"
    files, bad = _mixed_tree(root)
    index = build_index(root, workers=3)
    assert index.classes == ["cat", "dog"]
    assert [os.path.relpath(p, root.resolve()) for p in index.paths] == sorted(files)
    for i, path in enumerate(index.paths):
        with Image.open(path) as im:
            decoded = np.asarray(im)  # a full decode, not the header
        assert (index.heights[i], index.widths[i]) == decoded.shape[:2], path
        assert index.labels[i] == ["cat", "dog"].index(os.path.basename(os.path.dirname(path)))
    assert index.modes == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGB": 3}
    assert index.formats == {"JPEG": 2, "PNG": 5}
    excluded = {os.path.relpath(p, root.resolve()): reason for p, reason in index.excluded}
    assert sorted(excluded) == sorted(bad)
    assert all(reason and "\n" not in reason and str(root) not in reason for reason in excluded.values())
    assert "cannot identify" in excluded["dog/notes.txt"]
    assert index.heights.dtype == np.int32 and index.labels.dtype == np.int64
    assert list(index.class_counts()) == [4, 3]


def test_exif_orientation_is_recorded(tmp_path):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the displayed image is 9 wide and 16 high
    Image.fromarray(_rgb(9, 16)).save(root / "a" / "r.jpg", exif=exif.tobytes())
    Image.fromarray(_rgb(9, 16)).save(root / "a" / "s.jpg")
    index = build_index(root)
    assert list(index.orientations) == [6, 1]
    assert list(index.heights) == [9, 9] and list(index.widths) == [16, 16]  # as stored


def test_cache_is_reused_without_reopening_files(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    files, _ = _mixed_tree(root)
    first = build_index(root)
    assert not first.cached

    def fail(path):
        raise AssertionError(f"reopened {path}")

    monkeypatch.setattr(preprocess, "open_raster", fail)
    again = build_index(root)
    assert again.cached and isinstance(again.labels, np.memmap)
    assert list(again.paths) == list(first.paths) and again.excluded == first.excluded
    for name in ("labels", "heights", "widths", "orientations"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.modes == first.modes and again.classes == first.classes
    meta = json.loads((cache_dir(root) / "index.json").read_text())
    assert meta["root"] == str(root.resolve()) and meta["count"] == len(files)
    with pytest.raises(AssertionError, match="reopened"):
        build_index(root, refresh=True)


@pytest.mark.parametrize("change", ["add", "remove", "rename", "new_class"])
def test_cache_is_rebuilt_when_a_folder_changes(tmp_path, change):
    root = tmp_path / "tree"
    _mixed_tree(root)
    before = build_index(root)
    if change == "add":
        (root / "dog" / "new.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
    elif change == "remove":
        (root / "cat" / "a.png").unlink()
    elif change == "rename":
        (root / "cat" / "a.png").rename(root / "cat" / "z.png")
    else:
        (root / "eel").mkdir()
        (root / "eel" / "e.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
    after = build_index(root)
    assert not after.cached
    names = {os.path.relpath(p, root.resolve()) for p in after.paths}
    expected = {"add": "dog/new.png", "rename": "cat/z.png", "new_class": "eel/e.png"}.get(change)
    assert (expected in names) if expected else ("cat/a.png" not in names)
    assert len(after) == len(before) + (-1 if change == "remove" else 0 if change == "rename" else 1)


def test_a_tree_written_just_now_is_checked_by_listing_it_again(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
    assert not build_index(root).cached
    stamp = os.stat(root / "a").st_mtime_ns
    # a file landing in the same mtime tick as the listing: the folder's mtime does not move
    (root / "a" / "y.png").write_bytes(_png_bytes(Image.fromarray(_rgb(5, 4))))
    os.utime(root / "a", ns=(stamp, stamp))
    again = build_index(root)
    assert not again.cached and len(again) == 2  # the folders changed within RACY_NS: listed again, y.png seen
    real = preprocess.open_raster
    monkeypatch.setattr(preprocess, "open_raster", lambda path: (_ for _ in ()).throw(AssertionError(path)))
    third = build_index(root)  # same names as the cache: trusted without reading a header
    assert third.cached and list(third.heights) == [3, 5]
    meta = json.loads((cache_dir(root) / "index.json").read_text())
    assert meta["listed_ns"] < max(meta["mtimes"].values()) + 2_000_000_000  # still close: checked each time
    monkeypatch.setattr(preprocess, "open_raster", real)
    _age(root)
    build_index(root)  # mtimes changed: rebuilt, listed long after the folders last changed
    assert build_index(root).cached


def test_a_racy_cache_is_marked_listed_once_the_folders_are_still(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
    _age(root)
    build_index(root)
    meta_file = cache_dir(root) / "index.json"
    meta = json.loads(meta_file.read_text())
    meta["listed_ns"] = OLD_NS  # as if listed in the same tick as the folders' last change, long ago
    meta_file.write_text(json.dumps(meta))
    assert build_index(root).cached  # listed again, same names
    assert json.loads(meta_file.read_text())["listed_ns"] > OLD_NS + 2_000_000_000  # no check next time


def test_a_damaged_cache_is_rebuilt(tmp_path):
    root = tmp_path / "tree"
    _mixed_tree(root)
    first = build_index(root)
    (cache_dir(root) / "heights.npy").write_bytes(b"not npy")
    again = build_index(root)
    assert not again.cached
    np.testing.assert_array_equal(again.heights, first.heights)


def test_an_unwritable_cache_warns_once_and_still_indexes(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    _mixed_tree(root)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EFFV2_CACHE_DIR", str(blocker))  # a file where a folder must go
    with pytest.warns(UserWarning, match="cannot cache the folder index"):
        index = build_index(root)
    assert len(index) == 7


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("no_classes", "no class sub-folders"),
    ("empty_class", "b: class folder holds no files"),
    ("unreadable_class", "none of its 2 file(s) is a readable image (first: "),
])
def test_bad_trees_are_one_line(tmp_path, case, message):
    root = tmp_path / "tree"
    if case == "file":
        root.write_bytes(b"x")
    elif case != "missing":
        root.mkdir()
        (root / "loose.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
        if case != "no_classes":
            (root / "a").mkdir()
            (root / "a" / "ok.png").write_bytes(_png_bytes(Image.fromarray(_rgb(3, 4))))
            (root / "b").mkdir()
        if case == "unreadable_class":
            (root / "b" / "x.jpg").write_bytes(b"junk")
            (root / "b" / "y.txt").write_bytes(b"text")
    with pytest.raises(DataError) as info:
        build_index(root)
    text = str(info.value)
    assert message in text and "\n" not in text and str(root.name) in text


def test_a_jpeg_cut_after_its_header_is_indexed_and_fails_only_when_decoded(tmp_path):
    """The policy's boundary (docs/data.md): the index reads headers only; a file whose data is damaged
    is met when a sample decodes it, and that stops the run naming the file."""
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    whole = _jpeg_bytes(64, 48)
    (root / "a" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    index = build_index(root)
    assert len(index) == 1 and index.excluded == [] and (index.heights[0], index.widths[0]) == (64, 48)
    with Image.open(index.path(0)) as im, pytest.raises(OSError, match="truncated"):
        im.load()


def test_the_digest_names_the_rows(tmp_path):
    root = tmp_path / "tree"
    _mixed_tree(root)
    first = build_index(root)
    cached = build_index(root)
    assert cached.cached and cached.digest == first.digest and len(first.digest) == 16
    assert build_index(root, refresh=True).digest == first.digest
    (root / "dog" / "grey.png").rename(root / "dog" / "grey2.png")  # same image, another name: another row order
    assert build_index(root).digest != first.digest
