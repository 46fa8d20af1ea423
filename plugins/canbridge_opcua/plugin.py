"""Entry point of the ``opcua`` plugin (hooks only): the northbound server and the ``opcua-passwd``
command (commands.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import canbridge
from canbridge_opcua import commands
from canbridge_opcua.config import OpcUaConfig
from canbridge_opcua.service import OpcUaService

DEMO_CONFIG: dict[str, Any] = {
    # loopback only: the demo offers the None policy and anonymous operator sessions for a quick look
    "listen": "opc.tcp://127.0.0.1:4840",
    "security_policies": ["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"],
    "allow_anonymous": True,
    "anonymous_role": "operator",
}


def _factory(bridge: canbridge.Bridge, config: OpcUaConfig) -> OpcUaService:
    return OpcUaService(bridge, config)


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    """The OPC UA server."""
    register(
        canbridge.NorthboundPlugin(
            name="opcua",
            config_model=OpcUaConfig,
            factory=_factory,
            description="OPC UA server (asyncua): signals as variables with units, ranges, quality and writes",
            order=30,
            demo_config=DEMO_CONFIG,
        )
    )


@canbridge.hookimpl
def register_commands(register: Callable[[canbridge.Command], None]) -> None:
    """``canbridge opcua-passwd``: print a password hash for ``plugins.opcua.users``."""
    register(
        canbridge.Command(
            name="opcua-passwd",
            help="print a password hash for an OPC UA user (plugins.opcua.users.<name>.password_hash)",
            configure=commands.configure_passwd,
            run=commands.run_passwd,
        )
    )
