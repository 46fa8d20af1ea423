"""A renamed asyncua internal made "is this channel secured?" answer no, and a secure channel's client
certificate was then never checked against the trust list. Now an unknown answer is "secured"."""

from __future__ import annotations

from typing import Any

import pytest
from asyncua import ua
from canbridge_opcua import asyncua_compat
from canbridge_opcua.service import OpcUaService


class _Proc:
    name = ("127.0.0.1", 5)

    def __init__(self, mode: Any, uri: Any) -> None:
        self.channel_mode, self.channel_policy_uri = mode, uri


@pytest.mark.parametrize(
    ("mode", "uri", "secured"),
    [
        (ua.MessageSecurityMode.None_, "http://opcfoundation.org/UA/SecurityPolicy#None", False),
        (ua.MessageSecurityMode.SignAndEncrypt, "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256", True),
        (None, None, True),  # never recorded
        (ua.MessageSecurityMode.None_, None, True),
        (ua.MessageSecurityMode.None_, "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256", True),
    ],
)
def test_unknown_channel_security_counts_as_secured(mode: Any, uri: Any, secured: bool) -> None:
    proc = _Proc(mode, uri)
    assert asyncua_compat.GuardedProcessor.secured.fget(proc) is secured  # type: ignore[attr-defined]


def test_no_processor_or_a_failing_one_counts_as_secured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OpcUaService._channel_secured() is True  # no request being handled

    class Broken:
        name = "x"

        @property
        def secured(self) -> bool:
            raise AttributeError("_connection")

    monkeypatch.setattr("canbridge_opcua.service.current_processor", lambda: Broken())
    assert OpcUaService._channel_secured() is True
