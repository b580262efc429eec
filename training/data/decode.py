"""Decoding one stored image for training: the whole original, or only as many pixels as a crop needs.

The random-resized crop is drawn on the original's size (google/automl crops the decoded original,
not a resized copy). A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling
(Pillow's `draft`), which costs a fraction of a full decode; `decode_region` takes the largest such
reduction that still leaves the crop box at least `size` pixels on its shorter side, so the resize
to the stage size only ever shrinks. The early, small stages of progressive learning are the
cheapest to feed. The result depends only on the file and the box, never on which process decodes.

Files are opened as `effv2 predict` and `effv2 eval` open them (raster formats only, decompression
bombs refused, EXIF orientation applied, 16-bit and float images scaled, not clipped); bytes from a
Parquet shard go through the same rules. Anything that cannot be decoded raises `DataError` naming
where the image came from.

NumPy and Pillow only.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings

import numpy as np

from ..preprocess import RASTER_FORMATS, ImageError, eight_bit, open_raster
from .errors import DataError

#: Pillow decoder failures (truncated data, bad headers, unsupported variants)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError, IndexError)


@contextlib.contextmanager
def open_stored(where: str, blob: bytes | None = None):
    """The Pillow image of a file (`blob` None: `where` is its path) or of encoded bytes (`where` names them)."""
    from PIL import Image

    try:
        if blob is None:
            with open_raster(where) as im:
                yield im
            return
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(io.BytesIO(blob), formats=RASTER_FORMATS)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DataError(f"{where}: image too large to decode safely ({exc})") from None
        with im:
            yield im
    except ImageError as exc:
        raise DataError(str(exc)) from None
    except DataError:
        raise
    except _DECODE_ERRORS as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def stored_size(where: str, blob: bytes | None = None) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation applied), from the header alone."""
    with open_stored(where, blob) as im:
        w, h = im.size
        if _transposes(im):
            w, h = h, w
        return h, w


def _transposes(im) -> bool:
    """EXIF orientations 5..8 swap width and height. Read only where the header holds the EXIF (as the folder
    index reads it): for a PNG whose eXIf chunk follows the pixels, Pillow would decode the whole image."""
    if "exif" not in im.info and im.format != "TIFF":
        return False
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except _DECODE_ERRORS:
        return False


def _pixels(im, channels: int, where: str, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, channels) of `im` turned upright, or of its `box` = (top, left, bottom, right) there.

    Each step copies only when it changes something (an upright image is not transposed, an RGB one not
    converted), and the box is cut before the conversions: they act pixel by pixel, so the result is the same
    as converting the whole image and cutting after, at a fraction of the copies."""
    from PIL import ImageOps

    try:
        im.load()
        if im.getexif().get(0x0112, 1) not in (0, 1):  # read with the pixels: no second decode
            im = ImageOps.exif_transpose(im)
        if box is not None:
            top, left, bottom, right = box
            im = im.crop((left, top, right, bottom))
        im = eight_bit(im)
        target = "L" if channels == 1 else "RGB"
        arr = np.asarray(im if im.mode == target else im.convert(target), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {_first_line(exc)})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(where: str, channels: int, blob: bytes | None = None,
                 expected: tuple[int, int] | None = None) -> np.ndarray:
    """The whole original, uint8 (H, W, channels). `expected`: see `decode_region`."""
    with open_stored(where, blob) as im:
        _check_size(im, where, expected, _transposes(im) if expected is not None else False)
        return _pixels(im, channels, where)


def _check_size(im, where: str, expected: tuple[int, int] | None, turned: bool) -> None:
    """DataError when the image is not (height, width) = `expected`, the size an index recorded: a file rewritten
    in place after indexing (its folder's mtime unchanged) would otherwise be cropped by a box drawn on the old
    size, and Pillow pads a box past the edge with black, silently."""
    if expected is None:
        return
    w, h = im.size
    if turned:  # EXIF orientation 5..8: displayed with height and width swapped (_transposes)
        w, h = h, w
    if (h, w) != tuple(expected):
        raise DataError(f"{where}: is {h}x{w} pixels, {expected[0]}x{expected[1]} when it was indexed: the file "
                        "changed since; run effv2 data index --refresh on its folder, then --resume")


def draft_factor(box: tuple[int, int, int, int], size: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) that keeps the box's shorter side >= `size`."""
    shorter = min(box[2], box[3])
    factor = 1
    while factor < 8 and shorter >= 2 * factor * size:
        factor *= 2
    return factor


def decode_region(where: str, box: tuple[int, int, int, int], size: int, channels: int,
                  blob: bytes | None = None, expected: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 pixels of `box` = (y, x, h, w) of the original (coordinates as displayed), decoded at the largest
    DCT reduction that keeps the box at least `size` pixels high and wide; the box is scaled with the image,
    widened to whole pixels. `expected`: the (height, width) the box was drawn on, when it came from an index
    (DataError if the file is another size now)."""
    y, x, h, w = box
    with open_stored(where, blob) as im:
        turned = _transposes(im)
        _check_size(im, where, expected, turned)
        factor = draft_factor(box, size)
        if factor > 1 and im.format == "JPEG" and not turned:
            full_w, full_h = im.size
            # mode kept as stored (asking for "L" would make libjpeg drop chroma: other pixels than a full decode)
            # Pillow's reduction is min(W // w, H // h) for the size asked: W // factor keeps an odd side reducing
            im.draft(None, (full_w // factor, full_h // factor))
            sw, sh = im.size[0] / full_w, im.size[1] / full_h
            if (sw, sh) != (1.0, 1.0):
                box_scaled = (math.floor(y * sh), math.floor(x * sw), math.ceil((y + h) * sh), math.ceil((x + w) * sw))
                return _pixels(im, channels, where, box_scaled)
        return _pixels(im, channels, where, (y, x, y + h, x + w))
