"""retain_freed_memory: freed blocks stay in the heap, so reallocating them does not page-fault.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# Allocate, touch and free a 48 MiB array (over glibc's largest mmap threshold) six times and count the
# minor page faults of the last five: a fresh mapping costs at least one fault per 2 MiB (24 with
# transparent huge pages, which NumPy requests for large arrays; 12,288 with 4 KiB pages) unless the
# memory stays in the heap.
_PROBE = r"""
import json, resource, sys
import numpy as np
from effv2_reference.kernels.runtime.heap import heap_retained, retain_freed_memory
on = retain_freed_memory() if sys.argv[1] == "1" else False
def touch():
    a = np.empty(12 * 1024 * 1024, dtype=np.float32)
    a[::1024] = 1.0
    del a
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"on": on, "retained": heap_retained(), "faults": faults}))
"""


def _probe(retain: bool, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if retain else "0"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env}, check=True)
    return json.loads(out.stdout)


def test_without_retention_every_reallocation_faults_its_pages_in():
    r = _probe(False)
    assert not r["retained"]
    assert r["faults"] >= 5 * 24, r  # the premise of the module


def test_retained_heap_reallocates_without_page_faults():
    r = _probe(True)
    assert r["on"] and r["retained"]
    assert r["faults"] < 24, r


def test_environment_switch_turns_it_off():
    r = _probe(True, EFFV2_RETAIN_HEAP="0")
    assert not r["on"] and not r["retained"]
    assert r["faults"] >= 5 * 24, r
