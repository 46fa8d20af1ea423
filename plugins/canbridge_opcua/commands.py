"""``canbridge opcua-passwd``: print a password hash for ``plugins.opcua.users``."""

from __future__ import annotations

import argparse
import getpass
import sys

from canbridge_opcua.config import HASH_ITERATIONS, hash_password


def configure_passwd(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of standard input"
    )
    p.add_argument("--iterations", type=int, default=HASH_ITERATIONS, help=argparse.SUPPRESS)


def run_passwd(args: argparse.Namespace) -> int:
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
