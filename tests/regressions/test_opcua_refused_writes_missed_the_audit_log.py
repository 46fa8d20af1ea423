"""OPC UA write refusals decided inside the plugin (a String or an array for a number, an IndexRange,
another attribute than Value) never reached the audit log: now the value goes to the write path as
decoded, and what the bridge cannot take in any form is refused through ``bridge.refuse``."""

# The OPC UA fixtures come from tests/plugins/opcua/conftest.py, imported by name: F811 flags each use.
# ruff: noqa: F811

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from tests.plugins.opcua.conftest import (  # noqa: F401 - fixtures, used by name
    OPERATOR,
    connect,
    ns_index,
    opcua_config,
    pki_dir,
    pki_seed,
    running,
    users,
)
from tests.plugins.opcua.uatypes import nid

SETPOINT = "demo.MotorCommand.SpeedSetpoint"


async def test_opcua_refused_writes_are_audited(
    opcua_config: Callable[..., dict[str, Any]], pki_seed: Path
) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url, OPERATOR) as c:
        h.clear_sent()
        idx = await ns_index(c)
        forms = [
            (AttributeIds.Value, None, ua.Variant("fast", ua.VariantType.String)),
            (AttributeIds.Value, None, ua.Variant([1, 2], ua.VariantType.UInt16)),
            (AttributeIds.Value, "0", ua.Variant(5, ua.VariantType.UInt16)),
            (AttributeIds.DisplayName, None, ua.Variant(ua.LocalizedText("x"))),
        ]
        for attribute, index_range, variant in forms:
            wv = ua.WriteValue()
            wv.NodeId = nid(SETPOINT, idx)
            wv.AttributeId = attribute
            wv.IndexRange = index_range
            wv.Value = ua.DataValue(variant)
            params = ua.WriteParameters()
            params.NodesToWrite = [wv]
            (code,) = await c.uaclient.write(params)
            assert not code.is_good()
        audit = h.bridge.state_dir / "audit.jsonl"
        records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        ours = [r for r in records if r.get("plugin") == "opcua" and r.get("target") == SETPOINT]
        results = [r.get("result") for r in ours]
        assert results.count("wrong_type") == 2 and results.count("unsupported_request") == 2, ours
        assert h.bridge.read(SETPOINT).value == 0  # nothing was sent
