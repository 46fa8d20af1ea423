"""The mapping table of a configuration file without running anything: for commands such as
``canbridge modbus-map`` that must see exactly the signals a running bridge would serve."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from canbridge._model import SignalInfo


def load_table(config_path: Path) -> Mapping[str, SignalInfo]:
    """Every signal the configuration maps, by name, in table order; opens no bus.

    Raises :class:`ConfigError` listing every problem, as ``canbridge check`` would.
    """
    from canbridge.config import load_config
    from canbridge.core.host import load_registry
    from canbridge.core.mapping.table import build_table

    config, lines = load_config(config_path)
    _, registry = load_registry()
    table = build_table(config, config_path.resolve().parent, registry.formats, str(config_path), lines)
    return table.signals
