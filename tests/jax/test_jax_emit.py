"""`effv2 generate --framework jax`: one standalone file (jax + flax only) equal to the runtime model."""

from __future__ import annotations

import ast
import importlib.util
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters.jax.adapter import JaxAdapter
from effv2_adapters.jax.build import config_from_resolved
from effv2_cli import main
from effv2_spec.resolve import resolve
from effv2_spec.weights import save_weights

from jax_testlib import random_masks, random_tensors, rel, tiny_spec

pytestmark = pytest.mark.jax

ALLOWED_IMPORTS = {"__future__", "functools", "typing", "numpy", "jax", "flax", "safetensors"}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_generated_file_is_standalone_and_equal(tmp_path):
    spec = tiny_spec(padding="tf_same", activation="relu6")
    resolved = resolve(spec, 19)
    out = tmp_path / "tiny_jax.py"
    source = JaxAdapter().emit_source(resolved, module_name="tiny_jax")
    out.write_text(source)
    tree = ast.parse(source)
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert imported <= ALLOWED_IMPORTS, imported
    assert "effv2" not in {i.split(".")[0] for i in imported}
    module = _load(out, "tiny_jax_generated")
    assert module.CONFIG == config_from_resolved(resolved)
    tensors = random_tensors(resolved, 11)
    weights = tmp_path / "w.safetensors"
    save_weights(weights, spec, tensors)
    net = module.load_safetensors(module.build_model("float64", init=False), str(weights))
    adapter = JaxAdapter()
    runtime = adapter.build(resolved, "float64", tensors)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 19, 23))
    assert rel(np.asarray(module.forward(net, x)), adapter.forward(runtime, x, training=False)) < 1e-13
    masks = random_masks(resolved, 2, rng)
    a = np.asarray(module.forward(net, x, training=True, masks=masks))
    b = adapter.forward(runtime, x, training=True, masks=masks)
    assert rel(a, b) < 1e-13
    got = {k: np.asarray(v) for k, v in module.to_canonical(net).items()}
    ref = adapter.export_tensors(runtime)
    assert all(rel(got[k], ref[k]) < 1e-13 for k in ref)


def test_cli_generate_writes_the_file(tmp_path):
    out = tmp_path / "nano.py"
    result = CliRunner().invoke(main, ["generate", "efficientnetv2-nano", "--framework", "jax", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert '"""efficientnetv2-nano: a standalone Flax NNX EfficientNet' in text
    assert "CONFIG = {" in text and "from nano import build_model" in text
    compile(text, str(out), "exec")
