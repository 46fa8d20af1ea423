"""Test tiers whose tools may be missing on a developer's machine.

A test marked ``@pytest.mark.tier("name")`` runs only where its tools are present; otherwise it
is skipped with the reason and the command that installs them. With ``CANBRIDGE_REQUIRE_TIERS=1``
(what ``.ci/run`` sets) a missing tier is a failure, never a skip.
Each tier's tools are installed by ``tools/tiers/<name>.sh``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tools" / "node" / "node_modules"


@dataclass(frozen=True)
class Tier:
    name: str
    what: str
    missing: Callable[[], str | None]  # None when present, else what is missing

    @property
    def install(self) -> str:
        return f"sudo bash tools/tiers/{self.name}.sh   (or: make deps)"


def _cmd(*names: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [n for n in names if shutil.which(n) is None]
        return f"command(s) not found: {', '.join(absent)}" if absent else None

    return check


def _node_pkg(pkg: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if shutil.which("node") is None:
            return "node not found"
        if not (NODE_MODULES / pkg).is_dir():
            return f"npm package {pkg} not installed in {NODE_MODULES.relative_to(ROOT)}"
        return None

    return check


def _py(mod: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if importlib.util.find_spec(mod) else f"python package {mod} not installed"

    return check


def _root_mount() -> str | None:
    if os.geteuid() != 0:
        return "not root (mounting a tiny tmpfs needs it; CI runs as root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not found"
    try:
        if "tmpfs" not in Path("/proc/filesystems").read_text():
            return "the kernel has no tmpfs"
    except OSError:
        return "/proc/filesystems unreadable"
    return None


def _mosquitto() -> str | None:
    """The broker, also where /usr/sbin is not on a user's PATH."""
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return None
    return "command(s) not found: mosquitto (Debian package mosquitto)"


def _all(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def check() -> str | None:
        msgs = [m for c in checks if (m := c())]
        return "; ".join(msgs) or None

    return check


def _systemd_analyze(min_version: int) -> Callable[[], str | None]:
    """systemd-analyze that runs and is new enough for ``security --offline`` (systemd 250)."""

    def check() -> str | None:
        exe = shutil.which("systemd-analyze")
        if exe is None:
            return "command(s) not found: systemd-analyze (Debian package systemd)"
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return f"systemd-analyze --version failed: {e}"
        m = re.match(r"systemd (\d+)", out)
        if not m:
            return f"systemd-analyze --version printed no version: {out[:60]!r}"
        if int(m.group(1)) < min_version:
            return f"systemd {m.group(1)} is older than {min_version} (systemd-analyze security --offline)"
        return None

    return check


TIERS: dict[str, Tier] = {
    t.name: t
    for t in (
        Tier("opcua-interop", "OPC UA against node-opcua (independent client)", _node_pkg("node-opcua-client")),
        Tier("mqtt-interop", "MQTT/Sparkplug B against Mosquitto and Eclipse Tahu's JS codec (independent host)",
             _all(_mosquitto, _cmd("mosquitto_sub", "mosquitto_pub", "mosquitto_passwd"),
                  _node_pkg("sparkplug-payload"), _node_pkg("mqtt"))),
        Tier("modbus-interop", "Modbus TCP against mbpoll (independent client)", _cmd("mbpoll")),
        Tier("modbus-rtu", "Modbus RTU over a socat pseudo-terminal pair", _cmd("socat")),
        Tier("browser", "web dashboard in headless Chromium", _all(_cmd("chromium"), _py("playwright"))),
        Tier("schemathesis", "OpenAPI document checked by schemathesis", _py("schemathesis")),
        Tier("faults", "a real full disk under the audit log (tiny tmpfs)", _root_mount),
        Tier("can-utils", "can-utils log files replayed (canplayer formats)", _cmd("candump")),
        Tier("packaging", "systemd unit checked by systemd-analyze verify and security", _systemd_analyze(250)),
    )
}


def require_all() -> bool:
    return os.environ.get("CANBRIDGE_REQUIRE_TIERS") == "1"
