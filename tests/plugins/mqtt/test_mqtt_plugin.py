"""The MQTT plugin's registration: what `canbridge demo` enables it with."""

from __future__ import annotations

import pytest


def test_the_demo_enables_mqtt_only_with_a_broker_on_the_demo_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from canbridge_mqtt import plugin

    with socket.socket() as listener:  # a "broker": anything accepting on the address
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setattr(plugin, "DEMO_BROKER", listener.getsockname())
        assert plugin._demo_broker() is None
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = free.getsockname()  # bound, not listening: a connect is refused
        monkeypatch.setattr(plugin, "DEMO_BROKER", address)
        why = plugin._demo_broker()
    assert why is not None and f"no MQTT broker on 127.0.0.1:{address[1]}" in why
