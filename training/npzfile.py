"""Reading `.npz` archives (data sets, checkpoints) from untrusted files without surprises.

`np.load` trusts an archive: a `.npy` header may declare a 300 GiB array, which numpy allocates
before reading a byte; a truncated or corrupt zip escapes as `BadZipFile`; a plain `.npy` comes
back as an array instead of an archive; random bytes are described as "pickled data". Here every
member's header is read and checked against the member's real size and a memory budget before
anything is allocated, and every failure is one `NpzError` line.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib

import numpy as np

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
#: npy headers are a few hundred bytes; numpy's own default limit
_MAX_HEADER = 10_000


class NpzError(ValueError):
    """An archive that cannot be read safely; the message says why in one line."""


def memory_budget() -> int:
    """Bytes one archive may allocate: half of physical memory (8 GiB when that cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def read_npz(path: str | os.PathLike, budget: int | None = None) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path`, by name (without `.npy`); `NpzError` for anything unsafe."""
    budget = memory_budget() if budget is None else budget
    check_magic(path)
    try:
        with zipfile.ZipFile(path) as z:
            # other members (a README, say) are not arrays; np.load would not read them either
            members = [i for i in z.infolist() if i.filename.endswith(".npy")]
            declared = 0
            headers = []
            for info in members:
                header = member_header(z, info)
                declared += header[2]
                if declared > budget:
                    raise NpzError(f"its arrays declare more than {budget / 2**30:.1f} GiB "
                                   "(half of this machine's memory)")
                headers.append(header)
            return {info.filename.removesuffix(".npy"): read_member(z, info, h) for info, h in zip(members, headers)}
    except NpzError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, zlib.error) as exc:  # truncated, corrupt (CRC), encrypted or oddly compressed
        raise NpzError(f"a damaged .npz archive ({type(exc).__name__}: {exc})") from None


def check_magic(path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head.startswith(_NPY_MAGIC):
        raise NpzError("a single .npy array, not an .npz archive of named arrays (use np.savez)")
    if not head.startswith(_ZIP_MAGIC):
        raise NpzError("not an .npz archive (it is not a zip file)")


def member_header(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int, bool, int]:
    """(shape, dtype, nbytes, fortran_order, header length) of one member, checked against its size."""
    with z.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fp, max_header_size=_MAX_HEADER)
        header_len = fp.tell()
    if dtype.hasobject:
        raise NpzError(f"member {info.filename!r} holds Python objects (pickled data is never loaded)")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size - header_len != nbytes:
        raise NpzError(f"member {info.filename!r} declares a {shape} {dtype} array ({nbytes:,} bytes) but holds "
                       f"{max(info.file_size - header_len, 0):,} bytes of data (truncated or forged)")
    return shape, dtype, nbytes, fortran, header_len


def read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, header) -> np.ndarray:
    shape, dtype, nbytes, fortran, header_len = header
    flat = np.empty(math.prod(shape), dtype=dtype)
    with z.open(info) as fp:
        fp.read(header_len)
        view = memoryview(flat.view(np.uint8)) if nbytes else memoryview(b"")
        got = 0
        while got < nbytes:  # readinto fills the array in place: no second copy of a large member
            n = fp.readinto(view[got:])
            if not n:
                raise EOFError(f"member {info.filename!r} ends after {got:,} of {nbytes:,} bytes")
            got += n
        fp.read(1)  # reaching the end makes zipfile check the CRC
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
