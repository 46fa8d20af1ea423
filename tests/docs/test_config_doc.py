"""docs/configuration.md is generated from the config models; it must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "tools/gen_config_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs/configuration.md").read_text() == mod.render(), (
        "docs/configuration.md is out of date: run .venv/bin/python tools/gen_config_doc.py"
    )
