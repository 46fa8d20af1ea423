"""Hooks only: what the plugin registers (its service is in service.py, its configuration in config.py)."""

from __future__ import annotations

from collections.abc import Callable

import canbridge
from canbridge_csvlog.config import CsvLogConfig
from canbridge_csvlog.service import CsvLog


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    register(canbridge.NorthboundPlugin(
        name="csvlog",
        config_model=CsvLogConfig,
        factory=CsvLog,
        description="append signal changes to a CSV file",
    ))
