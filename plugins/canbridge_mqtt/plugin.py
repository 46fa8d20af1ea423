"""The MQTT plugin's registration (hooks only; the service is in service.py)."""

from __future__ import annotations

from collections.abc import Callable

import canbridge
from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.service import MqttService


def _factory(bridge: canbridge.Bridge, config: MqttConfig) -> MqttService:
    return MqttService(bridge, config)


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    register(
        canbridge.NorthboundPlugin(
            name="mqtt",
            config_model=MqttConfig,
            factory=_factory,
            description="MQTT: Sparkplug B 3.0 edge node and plain JSON topics, with store-and-forward",
            order=400,
            # a broker on this machine if there is one; without, the plugin retries quietly in the background
            demo_config={
                "broker": {"urls": ["mqtt://127.0.0.1:1883"]},
                "sparkplug": {"group_id": "canbridge", "edge_node_id": "demo"},
                "json": {"prefix": "canbridge"},
                "buffer": {"max_mb": 16, "max_age_h": 1},
            },
        )
    )
