"""The hooks a canbridge plugin can implement. Each takes a ``register`` callable.

Built-in plugins use these same hooks; a test fails when a hook has no docstring, is missing
from ``docs/plugins.md`` or is not exercised by a test.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from canbridge._plugin import BusKind, Command, MappingFormat, NorthboundPlugin

hookspec = pluggy.HookspecMarker("canbridge")


@hookspec
def register_northbound(register: Callable[[NorthboundPlugin], None]) -> None:
    """Register northbound plugins (protocol servers) and their pydantic config models."""


@hookspec
def register_bus_kinds(register: Callable[[BusKind], None]) -> None:
    """Register southbound bus kinds, selected by a bus's ``interface:`` setting."""


@hookspec
def register_mapping_formats(register: Callable[[MappingFormat], None]) -> None:
    """Register mapping file formats that load signal definitions into the mapping table."""


@hookspec
def register_commands(register: Callable[[Command], None]) -> None:
    """Register extra ``canbridge`` command-line subcommands."""
