"""emit_source / `effv2 generate`: a standalone file equal to build_model, torch.compile and ONNX ready."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import warnings

import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.torch import build_model, emit_source
from effv2_cli import main
from effv2_spec.resolve import resolve

from torch_testlib import preset, randomize_bn, rel, tiny_spec


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    path = d / "tiny_model.py"
    spec_path = d / "tiny.json"
    spec_path.write_text(tiny_spec().model_dump_json())
    result = CliRunner().invoke(main, ["generate", str(spec_path), "--framework", "torch", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path, _import_file(path, "tiny_model_generated")


def test_generated_file_needs_only_torch(generated):
    path, _ = generated
    tree = ast.parse(path.read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add((node.module or "").split(".")[0])
    assert top_level <= {"__future__", "math", "typing", "torch"}, top_level
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tiny_model as m; "
            "net = m.build_model(); assert not [k for k in sys.modules if k.startswith('effv2')]; "
            "print(sum(p.numel() for p in net.parameters()))")
    out = subprocess.run([sys.executable, "-c", code, str(path.parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == sum(p.numel() for p in build_model(tiny_spec()).parameters())


def test_generated_model_equals_build_model(generated):
    _, mod = generated
    a = mod.build_model(torch.float64, seed=5)
    randomize_bn(a)
    b = build_model(tiny_spec(), torch.float64, init=False)
    b.load_state_dict(a.state_dict())
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    x = torch.randn(2, 3, 18, 17, dtype=torch.float64)
    assert rel(a.eval()(x), b.eval()(x)) == 0.0
    torch.manual_seed(0)
    ya = a.train()(x)
    torch.manual_seed(0)
    yb = b.train()(x)
    assert rel(ya, yb) == 0.0
    assert json.loads(mod.SPEC_JSON)["name"] == "tiny"


def test_generated_source_is_readable_and_deterministic():
    resolved = resolve(preset("efficientnetv2-s"))
    src = emit_source(resolved)
    assert src == emit_source(resolved)
    assert "'blocks': [" in src and "def build_model(" in src and "class Block(nn.Module)" in src
    assert src.count("{'index':") == len(resolved.blocks)
    assert max(len(line) for line in src.splitlines()) < 240


def test_generated_file_loads_canonical_safetensors(generated, tmp_path):
    from effv2_adapters.torch.weights import save_safetensors

    _, mod = generated
    ours = build_model(tiny_spec(), torch.float32, seed=2)
    path = tmp_path / "w.safetensors"
    save_safetensors(ours, path, tiny_spec())
    net = mod.load_canonical(mod.build_model(torch.float64, init=False), str(path))
    for k, v in ours.state_dict().items():
        assert torch.equal(net.state_dict()[k].float(), v), k


@pytest.mark.slow  # inductor compiles the forward and backward: about 100 s on two cores
def test_torch_compile(generated):
    _, mod = generated
    model = mod.build_model(torch.float32, seed=1)
    randomize_bn(model)
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 17, 16)
    model.eval()
    assert rel(compiled(x), model(x)) < 1e-5
    model.train()
    masks = {"classifier.dropout": (torch.rand(2, 32) > 0.3).float(),
             "blocks.3.drop_path": torch.tensor([1.0, 0.0])}
    y = compiled(x, masks)
    y.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    eager = build_model(tiny_spec(), torch.float32, init=False)
    eager.load_state_dict(model.state_dict())
    randomize_bn(eager)  # same running stats as the compiled model had before its train step
    randomize_bn(model)
    eager.train()
    y_eager = eager(x, masks)
    y_eager.sum().backward()
    assert rel(y, y_eager) < 1e-5
    # project BN betas feeding a training-mode BN have a mathematically zero gradient: compare all
    # gradients on the scale of the largest one, not each on its own (pure float32 noise)
    scale = max(float(p.grad.abs().max()) for p in eager.parameters())
    for n, p in eager.named_parameters():
        assert float((grads[n] - p.grad).abs().max()) / scale < 1e-5, n


@pytest.mark.parametrize("size", [16, 17])
def test_onnx_export_matches(generated, tmp_path, size):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, mod = generated
    model = mod.build_model(torch.float32, seed=4).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, size, size)
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["images"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert rel(got, model(x)) < 1e-5
    from effv2_reference.model import ReferenceModel  # onnxruntime against the NumPy oracle, not only torch

    spec = tiny_spec()
    oracle = ReferenceModel(resolve(spec, size), dtype="float64")
    oracle.load_state_dict({k: v.double().numpy() for k, v in model.state_dict().items()})
    expected = oracle.forward(x.double().numpy(), training=False)
    assert rel(got, expected) < 1e-4
