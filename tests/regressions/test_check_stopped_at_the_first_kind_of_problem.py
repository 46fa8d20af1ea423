"""Regression: ``canbridge check`` stopped at schema errors (an unknown key hid every mapping and
plugin problem), and ``canbridge run`` reported only the first kind of problem (bus kinds, then the
mapping, then plugins, one fix-and-retry at a time). Both now report every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbridge.cli import main
from canbridge.core.app import DEMO_DBC


def test_everything_is_reported_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"buses: [{{name: a, interface: virtual, typo: 1}}, {{name: b, interface: warp}}]\n"
                 f"mappings: [{{bus: a, dbc: {DEMO_DBC}, writable: [Nope.*]}}]\nplugins: {{nope: {{}}}}\n")
    for cmd in ("check", "run"):
        assert main([cmd, str(p)]) == 1
        err = capsys.readouterr().err
        assert "4 problems found" in err, err
        for needle in ("unknown key 'typo'", "unknown interface 'warp'", "'Nope.*' matches no signal",
                       "no plugin named 'nope'"):
            assert needle in err
