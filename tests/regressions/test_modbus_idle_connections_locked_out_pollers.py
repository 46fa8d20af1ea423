"""Regression (issue #9, finding 4): 16 idle-but-alive connections locked every other Modbus client
out (max_connections refused the newcomer). Now connections are bounded per address and in total,
and a full limit evicts the connection idle the longest. The unbounded answers of the same finding
(RSS 143 -> 876 MB from one never-reading pipeliner) are proved bounded by
tests/security/test_modbus.py::test_a_pipelining_client_that_never_reads_is_bounded, with the other
attack classes and their variants."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.security.test_modbus import bridge, raw_socket, served, tcp


async def test_sixteen_idle_connections_do_not_lock_out_a_poller(tmp_path: Path) -> None:
    async with bridge(tmp_path) as (h, svc, port):
        idle: list[socket.socket] = [raw_socket(port) for _ in range(16)]
        try:
            await h.until(lambda: tcp(svc).evicted_connections + len(tcp(svc).connections) >= 16)
            assert await served(port)
        finally:
            for s in idle:
                s.close()
