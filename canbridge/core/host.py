"""The plugin host: a pluggy PluginManager with the built-in plugins and every plugin installed in
the ``canbridge`` entry-point group, and the registries the ``register_*`` hooks fill."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from typing import Any

import pluggy

from canbridge import hookspecs
from canbridge._errors import PluginError
from canbridge._plugin import BusKind, Command, MappingFormat, NorthboundPlugin

log = logging.getLogger("canbridge.plugins")

ENTRY_POINT_GROUP = "canbridge"


@dataclass
class Registry:
    northbound: dict[str, NorthboundPlugin] = field(default_factory=dict)
    bus_kinds: dict[str, BusKind] = field(default_factory=dict)
    formats: dict[str, MappingFormat] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # "kind:name" -> plugin name
    load_errors: list[str] = field(default_factory=list)

    def bus_kind(self, interface: str) -> BusKind | None:
        """The bus kind for an ``interface:`` value; python-can interfaces fall back to the generic kind."""
        kind = self.bus_kinds.get(interface)
        if kind is not None:
            return kind
        import can.interfaces

        if interface in can.interfaces.VALID_INTERFACES and "python-can" in self.bus_kinds:
            return self.bus_kinds["python-can"]
        return None


def make_plugin_manager(load_entry_points: bool = True,
                        errors: list[str] | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugin and every entry-point plugin that loads.

    A plugin that fails to import is reported in ``errors`` (and by ``canbridge plugins``), not fatal:
    one broken third-party package must not take down a gateway that does not use it.
    """
    pm = pluggy.PluginManager("canbridge")
    pm.add_hookspecs(hookspecs)
    from canbridge.core import builtin

    pm.register(builtin, name="canbridge.builtin")
    if load_entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as e:
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
                log.error("%s", msg)
                if errors is not None:
                    errors.append(msg)
                continue
            pm.register(plugin, name=ep.name)
            dist = getattr(ep, "dist", None)
            if dist is not None:  # kept by us: pluggy's own record of it is private API
                _DISTRIBUTIONS[id(plugin)] = (dist.metadata["Name"], dist.version)
    return pm


# plugin object id -> (distribution name, version), for `canbridge plugins`
_DISTRIBUTIONS: dict[int, tuple[str, str]] = {}


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every register_* hook and build the registries; duplicate names are errors."""
    reg = Registry()

    def registrar(kind: str, target: dict[str, Any], cls: type[Any]) -> Any:
        def register(item: Any) -> None:  # items are the frozen dataclasses of canbridge._plugin
            if not isinstance(item, cls):
                raise PluginError(f"register_{kind} expects a {cls.__name__}, got {type(item).__name__}")
            name: str = item.name
            if name in target:
                raise PluginError(f"two plugins register the {kind} {name!r}")
            target[name] = item

        return register

    pm.hook.register_bus_kinds(register=registrar("bus_kinds", reg.bus_kinds, BusKind))
    pm.hook.register_mapping_formats(register=registrar("mapping_formats", reg.formats, MappingFormat))
    pm.hook.register_northbound(register=registrar("northbound", reg.northbound, NorthboundPlugin))
    pm.hook.register_commands(register=registrar("commands", reg.commands, Command))
    return reg


def load_registry(load_entry_points: bool = True) -> tuple[pluggy.PluginManager, Registry]:
    errors: list[str] = []
    pm = make_plugin_manager(load_entry_points, errors)
    reg = collect(pm)
    reg.load_errors = errors
    return pm, reg


def installed_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """What ``canbridge plugins`` lists: each plugin with its distribution, version and hooks."""
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = _DISTRIBUTIONS.get(id(plugin))
        if dist is not None:
            project, version = dist
        else:
            project = "canbridge"
            version = importlib.metadata.version("canbridge")
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)), "distribution": project,
                    "version": version, "hooks": hooks})
    return out
