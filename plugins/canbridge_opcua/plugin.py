"""Entry point of the ``opcua`` plugin: the northbound server and the ``opcua-passwd`` command."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

import canbridge
from canbridge_opcua._config import HASH_ITERATIONS, OpcUaConfig, hash_password
from canbridge_opcua._service import OpcUaService

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


def _configure_passwd(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of standard input"
    )
    p.add_argument("--iterations", type=int, default=HASH_ITERATIONS, help=argparse.SUPPRESS)


def _run_passwd(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("canbridge opcua-passwd: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("canbridge opcua-passwd: empty password", file=sys.stderr)
        return 1
    if args.iterations < 10_000:
        print("canbridge opcua-passwd: at least 10000 iterations", file=sys.stderr)
        return 2
    print(hash_password(password, iterations=args.iterations))
    return 0


@canbridge.hookimpl
def register_commands(register: Callable[[canbridge.Command], None]) -> None:
    """``canbridge opcua-passwd``: print a password hash for ``plugins.opcua.users``."""
    register(
        canbridge.Command(
            name="opcua-passwd",
            help="print a password hash for an OPC UA user (plugins.opcua.users.<name>.password_hash)",
            configure=_configure_passwd,
            run=_run_passwd,
        )
    )
