"""docs/mqtt.md lists every option of the plugin's configuration."""

from __future__ import annotations

from canbridge_mqtt import config as c
from pydantic import BaseModel

from tests.tiers import ROOT


def test_every_option_is_documented() -> None:
    text = (ROOT / "docs" / "mqtt.md").read_text()
    sections: list[tuple[str, type[BaseModel]]] = [
        ("plugins.mqtt", c.MqttConfig), ("broker", c.Broker), ("sparkplug", c.SparkplugConfig),
        ("json", c.JsonConfig), ("report", c.ReportConfig), ("buffer", c.BufferConfig)]
    for title, model in sections:
        start = text.index(f"### `{title}`")
        end = text.find("###", start + 4)
        table = text[start:end if end > 0 else None]
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in table, f"docs/mqtt.md: {title}.{field.alias or name} missing"
