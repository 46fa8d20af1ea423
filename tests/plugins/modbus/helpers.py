"""Small helpers for unit tests of the Modbus plugin (the bridge double is canbridge.testing.FakeBridge)."""

from __future__ import annotations

from canbridge import SignalInfo


def table(*infos: SignalInfo) -> dict[str, SignalInfo]:
    """A signal table by name, as ``plan_register_map`` takes it."""
    return {i.name: i for i in infos}
