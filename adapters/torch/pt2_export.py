"""`torch.export` of a spec with canonical weights: a `.pt2` ExportedProgram with a dynamic batch axis.

Eval mode (BN with running statistics, no dropout or drop path). The spatial size is fixed at export:
TF "SAME" pads depend on it (asymmetric at stride 2 for even sizes) and are resolved for that size, as
the oracle does at run time. The archive carries the spec JSON as the extra file `effv2_spec`
(`torch.export.load(path, extra_files={"effv2_spec": ""})` reads it back). Load with
`torch.export.load(path).module()(images)`.
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from effv2_spec.weights import atomic_write_bytes


def export_pt2(resolved, tensors: Mapping[str, np.ndarray], path: str | os.PathLike, *,
               dtype: str = "float32") -> None:
    """Write `resolved`'s eval-mode network with canonical `tensors` to `path` (atomically)."""
    import torch

    from .build import build_model
    from .weights import load_canonical_tensors

    model = load_canonical_tensors(build_model(resolved, dtype, init=False), tensors, resolved).eval()
    x = torch.zeros(2, resolved.input_channels, *resolved.image_size, dtype=next(model.parameters()).dtype)
    batch = torch.export.Dim("batch", min=1, max=2**16)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"effv2_spec": resolved.spec.model_dump_json()})
    atomic_write_bytes(path, buffer.getvalue())


__all__ = ["export_pt2"]
