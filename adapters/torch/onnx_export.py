"""ONNX export of a spec with canonical weights, through the PyTorch model (TorchScript exporter).

The graph has a dynamic batch axis and fixed spatial size: TF "SAME" padding depends on the input
size (asymmetric at stride 2 for even sizes), so the pads are resolved for the exported size, as
the oracle does at run time. Eval mode: BN with running statistics, no dropout or drop path. The
file's metadata carries the spec JSON (`effv2_spec`), as canonical weights files do.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Mapping

import numpy as np

from effv2_spec.weights import atomic_write_bytes

#: the ONNX opset the export targets (onnxruntime >= 1.12 runs it; every op used exists since opset 13)
OPSET = 17


def export_onnx(resolved, tensors: Mapping[str, np.ndarray], path: str | os.PathLike, *, opset: int = OPSET,
                dtype: str = "float32") -> None:
    """Write `resolved`'s eval-mode network with canonical `tensors` to `path` (atomically)."""
    import onnx
    import torch

    from .build import build_model
    from .weights import load_canonical_tensors

    model = load_canonical_tensors(build_model(resolved, dtype, init=False), tensors, resolved).eval()
    x = torch.zeros(2, resolved.input_channels, *resolved.image_size, dtype=next(model.parameters()).dtype)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "effv2_spec", resolved.spec.model_dump_json()
    onnx.checker.check_model(proto)
    # as every other writer: parent folders made, the mode of an existing file kept, else 0666 less the umask
    atomic_write_bytes(path, proto.SerializeToString())


__all__ = ["OPSET", "export_onnx"]
