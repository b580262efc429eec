"""TensorBoard event files for scalars, written without TensorFlow, tensorboardX or protobuf.

An event file is a sequence of TFRecords (little-endian u64 length, masked CRC-32C of those 8
bytes, the payload, masked CRC-32C of the payload); each payload a serialized `tensorflow.Event`.
A scalar needs only four fields of it, so they are encoded by hand here:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

The first event of a file carries file_version "brain.Event:2", as TensorBoard expects. A reader
that stops at a torn final record (TensorBoard does) sees every complete event: each event is
one os.write on an O_APPEND descriptor.

Why our own writer: the record needs ~100 lines of stable, documented wire format, and
tensorboardX would add protobuf (whose major versions have broken its generated code before) to
every training install for the sake of one optional flag.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Iterable, Mapping

from effv2_spec.weights import atomic_write_bytes

FOLDER = "tensorboard"
#: our files end in this, so a new start can remove the ones an earlier start of the run wrote
SUFFIX = ".effv2"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tf_record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", masked_crc32c(header)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def event_bytes(wall_time: float, step: int, scalars: Mapping[str, float] | None = None,
                file_version: str | None = None) -> bytes:
    """A serialized Event: wall_time (field 1, fixed64 double), step (field 2, varint), then a
    file_version (field 3) or a Summary (field 5) of simple_value scalars (Value field 2, fixed32 float)."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _length_delimited(5, values)
    return out


class EventWriter:
    """One event file under `folder`, started with `events` (wall_time, step, scalars) already in it.

    Earlier files of ours in the folder are removed once the new one is complete: it holds the whole
    run so far, so TensorBoard never sees two copies of a step."""

    def __init__(self, folder: Path, events: Iterable[tuple[float, int, Mapping[str, float]]] = ()):
        folder.mkdir(parents=True, exist_ok=True)
        old = stale_files(folder)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}{SUFFIX}"
        first = [tf_record(event_bytes(now, 0, file_version="brain.Event:2"))]
        first += [tf_record(event_bytes(w, s, scalars)) for w, s, scalars in events if scalars]
        atomic_write_bytes(self.path, b"".join(first))
        for f in old:
            if f != self.path:
                f.unlink(missing_ok=True)
        self._fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def add(self, wall_time: float, step: int, scalars: Mapping[str, float]) -> None:
        if scalars and self._fd is not None:
            os.write(self._fd, tf_record(event_bytes(wall_time, step, scalars)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def stale_files(folder: Path) -> list[Path]:
    """The event files an earlier start of a run wrote in `folder` (none of anyone else's)."""
    return sorted(folder.glob(f"events.out.tfevents.*{SUFFIX}")) if folder.is_dir() else []
