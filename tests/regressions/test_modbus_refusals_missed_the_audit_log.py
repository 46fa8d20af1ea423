"""Regression (issue #9, finding 1): the Modbus plugin judged values itself (out of range, NaN/Inf,
half of a float32, FC 15/16 bodies) and answered with an exception that never reached the audit log,
e.g. ``mbpoll -m tcp -p 5020 -a 1 -0 -1 -t 4 -r 0 127.0.0.1 9999``. Now it hands the decoded value
to the write path as it is, and audits what it refuses itself through ``bridge.refuse``. The
classes and their variants: tests/security/test_modbus.py."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.plugins.modbus.conftest import mapped
from tests.security.test_modbus import SETPOINT, Client, audit, bridge, fc6, fc16


async def test_out_of_range_holding_register_write_is_audited(tmp_path: Path) -> None:
    async with bridge(tmp_path, signals={"demo.MotorCommand.Mode": {"encoding": "float32"}}) as (_h, svc, port):
        sp = mapped(svc).placements[SETPOINT].address
        mode = mapped(svc).placements["demo.MotorCommand.Mode"].address
        c = await Client.connect(port)
        try:
            assert await c.call(fc6(sp, 9999)) == b"\x86\x03"  # the example, as mbpoll sends it
            assert await c.call(fc16(mode, 0x7FC0, 0)) == b"\x90\x03"  # NaN
            assert await c.call(fc6(mode, 0x3F80)) == b"\x86\x02"  # half of a float32
            assert await c.call(struct.pack(">BHHB", 16, sp, 1, 3) + b"\0\0\0") == b"\x90\x03"  # FC 16 body
        finally:
            c.close()
        got = [(r["target"], r["result"]) for r in audit(tmp_path)]
        assert got == [
            (SETPOINT, "out_of_range"),
            ("demo.MotorCommand.Mode", "wrong_type"),
            ("demo.MotorCommand.Mode", "unsupported_request"),
            ("modbus:unit 1 FC 16", "unsupported_request"),
        ]
