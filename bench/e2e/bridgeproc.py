"""The bridge under test in its own process, started as a user starts it: ``canbridge run CONFIG``.

Writes the mapping (bench/largemap.py's DBC per bus, the command DBC on the first bus) and a configuration
with every northbound plugin on, listening on free loopback ports; the buses are ``interface: fd`` on
descriptors the bridge inherits (bench/e2e/plugin/, found on PYTHONPATH as any installed plugin).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from bench.e2e import wire
from bench.largemap import write_dbc

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
BUF = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Settings:
    """What the scenario asks of the bridge's plugins."""

    opcua_update_s: float | None = None  # the plugins' batch intervals (None: the plugins' defaults)
    modbus_update_s: float | None = None
    sse_interval_s: float = 0.1


@dataclass
class BridgeProcess:
    workdir: Path
    buses: list[str]
    messages: int
    settings: Settings = field(default_factory=Settings)
    naive: bool = False  # run bench/e2e/naive_bridge.py (the baseline) instead of canbridge
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    peer_fds: dict[str, int] = field(default_factory=dict)  # the generator's ends
    config_path: Path | None = None
    _log: IO[bytes] | None = None

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        dbc = write_dbc(self.workdir / "large.dbc", self.messages)
        (self.workdir / "cmd.dbc").write_text(wire.command_dbc())
        self._bridge_fds: dict[str, int] = {}
        for bus in self.buses:
            ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                ours.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
            except OSError:
                pass  # the driver sets the configured receive buffer itself
            self._bridge_fds[bus] = ours.detach()
            self.peer_fds[bus] = peer.detach()
        self.ports = {"opcua": free_port(), "modbus": free_port(), "rest": free_port()}
        s = self.settings
        config: dict[str, Any] = {
            "buses": [{"name": b, "interface": "fd", "channel": str(self._bridge_fds[b]), "kernel_filters": False,
                       "bitrate": 1_000_000} for b in self.buses],
            "mappings": [{"bus": b, "dbc": str(dbc)} for b in self.buses]
            + [{"bus": self.buses[0], "dbc": str(self.workdir / "cmd.dbc"), "writable": ["*"], "write_rate": None}],
            "plugins": {
                "opcua": {"listen": f"opc.tcp://127.0.0.1:{self.ports['opcua']}", "security_policies": ["None"],
                          "allow_anonymous": True, "anonymous_role": "operator", **_update(s.opcua_update_s)},
                "modbus": {"host": "127.0.0.1", "port": self.ports["modbus"], **_update(s.modbus_update_s)},
                "rest": {"host": "127.0.0.1", "port": self.ports["rest"], "anonymous_read": True,
                         "anonymous_write": True, "stream_interval_s": s.sse_interval_s, "dashboard": False},
            },
            "state_dir": str(self.workdir / "state"),
            "log_level": "WARNING",
        }
        self.config_path = self.workdir / "bridge.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, timeout: float = 300.0) -> float:
        """Start ``canbridge run`` and wait until REST /readyz says ready; returns the seconds it took."""
        assert self.config_path is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), str(ROOT), env.get("PYTHONPATH")) if p)
        self._log = (self.workdir / "bridge.log").open("wb")
        exe = Path(sys.executable).with_name("canbridge")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "canbridge"]
        cmd = [*cmd, "run", str(self.config_path)]
        if self.naive:
            spec = self.workdir / "naive.spec.json"
            spec.write_text(json.dumps({"dbc": str(self.workdir / "large.dbc"), "buses": self._bridge_fds,
                                        "opcua_port": self.ports["opcua"], "rest_port": self.ports["rest"]}))
            cmd = [sys.executable, str(Path(__file__).with_name("naive_bridge.py")), str(spec)]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, pass_fds=list(self._bridge_fds.values()))
        for fd in self._bridge_fds.values():
            os.close(fd)  # the bridge holds them now
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bridge exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                ready = self.get_json("/readyz")
                if ready.get("ready"):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"the bridge was not ready within {timeout} s: {self.log_tail()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['rest']}{path}"

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            return json.loads(r.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            return str(r.read().decode())

    def modbus_map(self) -> dict[str, Any]:
        """The register map the bridge wrote on its first start (``<config>.modbus-map.yaml``)."""
        assert self.config_path is not None
        path = self.config_path.with_name(self.config_path.stem + ".modbus-map.yaml")
        data = yaml.safe_load(path.read_text())
        return dict(data["signals"])

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / "bridge.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        for fd in self.peer_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.peer_fds.clear()


def _update(seconds: float | None) -> dict[str, float]:
    """A plugin's ``update_interval`` where the run sets one; left out, the plugin's default applies."""
    return {} if seconds is None else {"update_interval": seconds}
