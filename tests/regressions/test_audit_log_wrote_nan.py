"""Regression: a refused NaN or infinite value was written to the audit log as a bare ``NaN``, which
is not JSON: jq and other strict readers rejected the whole log. Fixed in AuditLog.record."""

from __future__ import annotations

import json
import math
from pathlib import Path

from canbridge.core.audit import AuditLog


def test_non_finite_values_are_strings(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(target="x", value=math.nan, result="wrong_type")
    log.record(target="x", value=-math.inf, result="wrong_type")
    log.record(target="x", value=1.5, result="accepted")
    log.close()

    def strict(const: str) -> None:
        raise AssertionError(f"not strict JSON: {const}")

    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["value"] for r in rows] == ["nan", "-inf", 1.5]
