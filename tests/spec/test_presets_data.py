"""Presets are data: `preset_files` reads names and texts and parses nothing; `documents` resolves a preset
name through it and `presets` parses through `documents`, so the two never import each other."""

import json
import subprocess
import sys

from effv2_spec import preset_files, presets
from effv2_spec.documents import load_document


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m for m in sys.modules if m.startswith('effv2_spec'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_documents_and_presets_do_not_import_each_other():
    assert "effv2_spec.presets" not in _imported_after("import effv2_spec.documents")
    after_files = _imported_after("import effv2_spec.preset_files")
    assert "effv2_spec.documents" not in after_files and "effv2_spec.presets" not in after_files


def test_a_preset_loads_the_same_by_name_through_either_module():
    for name in preset_files.names():
        by_documents, by_presets = load_document(name), presets.load(name)
        assert by_documents == by_presets
        assert json.loads(by_presets.model_dump_json())["name"] == json.loads(preset_files.text(name))["name"]
