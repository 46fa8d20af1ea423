"""The MQTT plugin's registration (hooks only; the service is in service.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import canbridge
from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.service import MqttService


def _factory(bridge: canbridge.Bridge, config: MqttConfig) -> MqttService:
    return MqttService(bridge, config)


DEMO_BROKER = ("127.0.0.1", 1883)


def _demo_broker() -> str | None:
    """None when a broker answers on the demo's address, else why the demo leaves MQTT out."""
    try:
        socket.create_connection(DEMO_BROKER, timeout=0.5).close()
    except OSError:
        host, port = DEMO_BROKER
        return f"no MQTT broker on {host}:{port} (start one, e.g. `mosquitto`, and run the demo again)"
    return None


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    register(
        canbridge.NorthboundPlugin(
            name="mqtt",
            config_model=MqttConfig,
            factory=_factory,
            description="MQTT: Sparkplug B 3.0 edge node and plain JSON topics, with store-and-forward",
            order=400,
            # only with a broker on this machine (the issue: "starts the plugin only when a broker is reachable")
            demo_requires=_demo_broker,
            demo_config={
                "broker": {"urls": ["mqtt://127.0.0.1:1883"]},
                "sparkplug": {"group_id": "canbridge", "edge_node_id": "demo"},
                "json": {"prefix": "canbridge"},
                "buffer": {"max_mb": 16, "max_age_h": 1},
            },
        )
    )
