"""Generate docs/configuration.md from the pydantic models, so the reference cannot drift.

Run: .venv/bin/python tools/gen_config_doc.py   (tests/docs/test_config_doc.py checks it is current)
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from canbridge import config as c

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"

INTRO = """# Configuration reference

One YAML file configures a bridge. It is validated as a whole before anything starts: unknown keys
are errors, and `canbridge check CONFIG` prints every problem at once with its file, line and key path
(`canbridge run` refuses to start on the same errors). Relative paths are relative to the file.

```yaml
buses:
  - {name: vehicle, interface: socketcan, channel: can0, bitrate: 500000}
mappings:
  - bus: vehicle
    dbc: vehicle.dbc
    writable: ["MotorCommand.*"]
    transmit: {MotorCommand: {period_ms: 100}}
plugins:
  opcua:
    listen: opc.tcp://127.0.0.1:4840
    users:                   # `canbridge opcua-passwd` prints a hash; this one is of a random password
      scada: {role: read, password_hash: "EXAMPLE_HASH"}
  modbus: {host: 127.0.0.1, port: 5020}
  rest: {host: 127.0.0.1, port: 8080}
```

Signals are named `<bus>.<message>.<signal>` everywhere (OPC UA NodeIds, Modbus map, REST paths).
The plugin sections are documented on each plugin's page: [OPC UA](opcua.md), [Modbus](modbus.md),
[REST](rest.md). This page is generated from the models in `canbridge/config.py` by
`tools/gen_config_doc.py`.
"""

# the PBKDF2 hash of a random password nobody knows: valid (the example passes `canbridge check`), useless
EXAMPLE_HASH = (
    "pbkdf2_sha256$600000$qY6rcBKC/arpGpsAamE5Mw==$yL"
    "oE7z6RuQlbh3Jpy31L5lXjtcbLMWE6ifjXFayiq94="
)
INTRO = INTRO.replace("EXAMPLE_HASH", EXAMPLE_HASH)

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", c.Config),
    ("`buses[]`", c.BusConfig),
    ("`buses[].replay`", c.ReplayOptions),
    ("`buses[].netlink`", c.NetlinkSettings),
    ("`buses[].j1939`", c.J1939Settings),
    ("`buses[].j1939.name` (as its fields)", c.J1939NameFields),
    ("`buses[].canopen`", c.CanopenBusConfig),
    ("`buses[].canopen.sync`", c.SyncConfig),
    ("`mappings[]`", c.MappingConfig),
    ("`mappings[].transmit.<Message>`", c.TransmitConfig),
    ("`audit`", c.AuditConfig),
    ("`simulators[]`", c.SimulatorConfig),
]


def _type(ann: object) -> str:
    text = str(ann).replace("typing.", "").replace("pathlib.", "").replace("canbridge.config.", "")
    text = text.replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "null")


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            v = field.default_factory()
        except TypeError:
            return ""
        if isinstance(v, BaseModel):
            return "(section defaults)"
        return f"`{v!r}`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`" if field.default is not None else "`null`"


def render() -> str:
    parts = [INTRO]
    for title, model in SECTIONS:
        doc = (model.__doc__ or "").strip().splitlines()[0]
        parts.append(f"\n## {title}\n\n{doc}\n\n| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            typ = _type(field.annotation).replace("|", "\\|")
            parts.append(f"| `{name}` | {typ} | {_default(field)} | {desc} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
