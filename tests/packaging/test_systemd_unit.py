"""packaging/canbridge.service: a hardened unit that systemd accepts as written, with and without its
drop-ins, and that keeps the privileges it grants to the one drop-in that needs them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "canbridge.service"
DROPINS = ROOT / "packaging" / "canbridge.service.d"
INSTALLED_EXE = "/opt/canbridge/bin/canbridge"
MAX_EXPOSURE = 2.5  # systemd-analyze security: 0 (locked down) .. 10 (unprotected); "OK" is below 4.0


def settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file's sections, every assignment kept (``[Service]`` keys as is)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def effective(values: dict[str, list[str]], key: str) -> str:
    return values[key][-1]


def staged(tmp: Path, dropins: list[str]) -> Path:
    """The unit in a directory of its own with the chosen drop-ins; ExecStart names this venv's canbridge
    (systemd-analyze verify wants the executable to exist, /opt/canbridge is the installed path)."""
    exe = Path(sys.executable).parent / "canbridge"
    assert exe.exists(), exe
    text = UNIT.read_text()
    assert INSTALLED_EXE in text
    unit = tmp / "canbridge.service"
    unit.write_text(text.replace(INSTALLED_EXE, str(exe)))
    if dropins:
        (tmp / "canbridge.service.d").mkdir()
        for name in dropins:
            shutil.copy(DROPINS / name, tmp / "canbridge.service.d" / name)
    return unit


def test_the_unit_is_hardened() -> None:
    s = settings(UNIT)
    assert effective(s, "DynamicUser") == "yes" or "User" in s
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "StateDirectory": "canbridge", "PrivateDevices": "yes",
                       "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes", "RestrictNamespaces": "yes",
                       "MemoryDenyWriteExecute": "yes", "UMask": "0077"}.items():
        assert effective(s, key) == value, key
    assert set(effective(s, "RestrictAddressFamilies").split()) == {"AF_CAN", "AF_NETLINK", "AF_INET", "AF_INET6",
                                                                   "AF_UNIX"}
    # no capability at all without the netlink drop-in
    assert effective(s, "CapabilityBoundingSet") == "" and effective(s, "AmbientCapabilities") == ""
    assert effective(s, "ExecStart") == f"{INSTALLED_EXE} run /etc/canbridge/canbridge.yaml"


def test_only_the_netlink_dropin_grants_cap_net_admin() -> None:
    granted = {p.name: settings(p) for p in sorted(DROPINS.glob("*.conf"))}
    assert set(granted) == {"netlink.conf", "modbus-rtu.conf"}
    net = granted["netlink.conf"]
    assert effective(net, "AmbientCapabilities") == "CAP_NET_ADMIN"
    assert effective(net, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert effective(net, "PrivateUsers") == "no"  # the capability must count in the host's user namespace
    for name, s in granted.items():
        if name != "netlink.conf":
            assert "AmbientCapabilities" not in s and "CapabilityBoundingSet" not in s, name
    rtu = granted["modbus-rtu.conf"]
    assert effective(rtu, "DevicePolicy") == "closed" and effective(rtu, "DeviceAllow").endswith(" rw")


@pytest.mark.tier("packaging")
@pytest.mark.parametrize("dropins", [[], ["netlink.conf"], ["modbus-rtu.conf"], ["netlink.conf", "modbus-rtu.conf"]],
                         ids=["unit", "netlink", "modbus-rtu", "both"])
def test_systemd_analyze_verify_accepts_it(tmp_path: Path, dropins: list[str]) -> None:
    unit = staged(tmp_path, dropins)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values, it only warns: any word about our files is a failure
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "canbridge" in ln or str(tmp_path) in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.mark.tier("packaging")
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    unit = staged(tmp_path, [])
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key 'ProtectHom'" in r.stdout + r.stderr


@pytest.mark.tier("packaging")
@pytest.mark.parametrize("dropins", [[], ["netlink.conf"]], ids=["unit", "netlink"])
def test_systemd_analyze_security_exposure(tmp_path: Path, dropins: list[str]) -> None:
    unit = staged(tmp_path, dropins)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for canbridge\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    print(f"systemd-analyze security ({'+'.join(dropins) or 'unit alone'}): exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
