"""The bus's J1939 receive path with the kernel's J1939 socket in use (no kernel needed: its messages are
fed as the socket would deliver them): reassembled messages decoded once, the raw socket's TP frames
ignored, TP frames the kernel leaves to us reassembled in user space, broken transfers counted."""

from __future__ import annotations

from canbridge.core.can.j1939socket import J1939Message
from canbridge.core.mapping import j1939
from tests.core.mapping.test_j1939 import bam_frames, runner, value


def payload() -> bytes:
    p = bytearray(b"\xff" * 39)
    p[0:2] = (4800).to_bytes(2, "little")
    return bytes(p)


def test_kernel_message_decoded_and_raw_tp_frames_ignored() -> None:
    r, store, t = runner()
    assert r.j1939 is not None
    r.j1939.kernel = True
    r.on_frames(bam_frames(0x00, payload()))  # what the raw socket sees: not reassembled a second time
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value is None
    r._on_j1939([J1939Message(0xFEE3, 0x00, 0xFF, 7, payload(), 5)])
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value == 600.0
    st = r.status()
    assert st.unmapped_frames == 0 and st.transport == {"completed": 1, "kernel": 1}


def test_tp_frames_the_kernel_leaves_are_reassembled_in_user_space() -> None:
    r, store, t = runner()
    assert r.j1939 is not None
    r.j1939.kernel = True
    msgs = [J1939Message(j1939.pgn_of(f[0]), j1939.source_of(f[0]), j1939.destination_of(f[0]), 7, f[2], f[3])
            for f in bam_frames(0x00, payload())]
    r._on_j1939(msgs)
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value == 600.0
    assert r.status().transport == {"completed": 1, "kernel": 0}


def test_kernel_broken_and_truncated_transfers_are_counted_never_decoded() -> None:
    r, store, t = runner()
    assert r.j1939 is not None
    r.j1939.kernel = True
    r.j1939.kernel_transfer_broken("timeout")
    r.j1939.kernel_transfer_broken("abort")
    r._on_j1939([J1939Message(0xFEE3, 0x00, 0xFF, 7, payload(), 5, truncated=True)])
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value is None
    assert r.status().transport == {"completed": 0, "kernel": 0, "timeout_kernel": 1, "abort": 1, "size": 1}


def test_without_the_kernel_socket_the_raw_path_reassembles() -> None:
    r, store, t = runner()
    r.on_frames(bam_frames(0x00, payload()))
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value == 600.0
    assert r.status().transport == {"completed": 1}
