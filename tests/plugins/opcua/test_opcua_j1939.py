"""J1939 mappings in the OPC UA address space: several sources of one PGN are separate objects."""

from __future__ import annotations

from pathlib import Path

from canbridge_opcua.nodes import build_plan

from canbridge import BusInfo
from canbridge.config import parse_config
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping.table import build_table

DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"


def test_two_sources_of_one_pgn_get_their_own_nodes() -> None:
    cfg = parse_config({"buses": [{"name": "truck", "interface": "virtual", "channel": "truck"}],
                        "mappings": [{"bus": "truck", "dbc": str(DBC), "sources": {0: "engine", 0x0F: "retarder"}}]})
    t = build_table(cfg, Path.cwd(), collect(make_plugin_manager(load_entry_points=False)).formats)
    plan = build_plan(2, {"truck": BusInfo("truck", "virtual", "truck", False, None)},
                      {n: e.info for n, e in t.messages.items()}, t.signals, 100.0)
    ids = [item.RequestedNewNodeId.Identifier for item in plan.items]
    assert len(ids) == len(set(ids)), "duplicate node ids"
    assert {"truck.engine.EEC1.EngineSpeed", "truck.retarder.EEC1.EngineSpeed"} <= set(ids)
