"""The audit log (canbridge/core/audit.py): whole lines or none, rotation, refusal records bounded per
peer and in total, a backlog while the file cannot be written, and recovery without a restart."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from canbridge.core import audit as audit_mod
from canbridge.core.audit import AuditLog, AuditUnavailable


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


class FailingWrites:
    """os.write that fails with ``errno`` after ``budget`` bytes, writing the part that fits (a full disk)."""

    def __init__(self, budget: int, err: int = errno.ENOSPC) -> None:
        self.budget = budget
        self.err = err
        self.real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        if self.budget <= 0:
            raise OSError(self.err, os.strerror(self.err))
        part = bytes(data[: self.budget])
        n = self.real(fd, part)
        self.budget -= n
        return n


def test_accepted_records_carry_a_sequence_and_are_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    assert log.record(target="x", result="accepted") == 1
    assert log.record(target="y", value=float("nan"), result="accepted") == 2
    log.close()
    got = lines(tmp_path / "a.jsonl")
    assert [g["seq"] for g in got] == [1, 2]
    assert got[1]["value"] == "nan"  # strict JSON: NaN as text


def test_a_short_write_leaves_no_half_line_and_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    log.record(target="first", result="accepted")
    size = path.stat().st_size
    monkeypatch.setattr(os, "write", FailingWrites(budget=10))
    with pytest.raises(AuditUnavailable, match="No space left"):
        log.record(target="second", result="accepted")
    assert path.stat().st_size == size  # the 10 bytes that fitted were cut off again
    assert not log.available and log.failures == 1 and "No space left" in (log.error or "")
    monkeypatch.undo()
    log.close()
    assert [g.get("target") for g in lines(path)] == ["first", None]  # the recovery record at close
    assert lines(path)[1]["event"] == "audit_recovered"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_every_write_error_makes_it_unavailable_and_refusals_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  err: int) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    monkeypatch.setattr(os, "write", FailingWrites(budget=0, err=err))
    with pytest.raises(AuditUnavailable):
        log.record(target="w", result="accepted")
    log.record_refusal(plugin="rest", address="127.0.0.1", target="w", result="audit_unavailable")
    assert not log.probe()
    monkeypatch.undo()
    assert log.probe() and log.available
    got = lines(path)
    assert got[0]["event"] == "audit_recovered" and got[0]["refusals_waiting"] == 1
    assert got[1]["result"] == "audit_unavailable"  # the refusal written once the disk took it
    assert log.record(target="w", result="accepted") > 0


def test_refusal_records_are_bounded_per_peer_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, refusal_rate=1e-9, refusal_burst=5)  # no refill within the test
    for _ in range(1000):
        log.record_refusal(plugin="modbus", address="10.0.0.9", result="out_of_range")
    log.record_refusal(plugin="modbus", address="127.0.0.1", result="out_of_range")  # another peer still recorded
    assert len(lines(path)) == 6
    assert log.suppressed == 995
    log.refusal_rate = 1e9  # refilled: the next refusal first says how many were folded away
    log.record_refusal(plugin="modbus", address="10.0.0.9", result="out_of_range")
    got = lines(path)
    assert got[-2]["result"] == "suppressed" and got[-2]["count"] == 995 and got[-2]["address"] == "10.0.0.9"
    assert got[-1]["result"] == "out_of_range"


def test_refusals_from_many_peers_meet_a_total_bound(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, refusal_rate=1e-9, refusal_burst=2)  # total: burst 10
    for i in range(500):
        log.record_refusal(plugin="rest", address=f"127.0.{i // 250}.{i % 250}", result="unauthenticated")
    assert len(lines(path)) == 10
    assert len(log._buckets) <= audit_mod.MAX_KEYS + 1


def test_peer_buckets_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_mod, "MAX_KEYS", 50)
    log = AuditLog(None)
    for i in range(5000):
        log.record_refusal(plugin="rest", address=f"peer{i}", result="unauthenticated")
    assert len(log._buckets) <= 51


def test_accepted_records_are_never_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, refusal_rate=1e-9, refusal_burst=1)
    for i in range(300):
        log.record(target=f"s{i}", result="accepted", plugin="rest", address="127.0.0.1")
    assert len(lines(path)) == 300


def test_rotation_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, max_bytes=1000, backups=2)
    for i in range(100):
        log.record(target=f"signal{i:03d}", result="accepted")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    newest = lines(path)[-1]
    assert newest["target"] == "signal099"
    seqs = [g["seq"] for name in ("a.jsonl.2", "a.jsonl.1", "a.jsonl") for g in lines(tmp_path / name)]
    assert seqs == sorted(seqs) and seqs[-1] == 100  # continuous across files, oldest dropped


def test_the_backlog_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_mod, "BACKLOG", 20)
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, refusal_rate=1e9, refusal_burst=1e9)
    failing = FailingWrites(budget=0)
    monkeypatch.setattr(os, "write", failing)
    for i in range(50):
        log.record_refusal(plugin="p", address=str(i), result="not_allowed")
    assert log.backlog_dropped == 30
    monkeypatch.setattr(os, "write", failing.real)
    assert log.probe()
    got = lines(path)
    assert got[0]["refusals_lost"] == 30 and len(got) == 21


def test_a_closed_log_refuses_accepted_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        log.record(target="late", result="accepted")


def test_real_device_full(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: the real kernel error, not a mock."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    log = AuditLog(Path("/dev/full"))
    with pytest.raises(AuditUnavailable, match="No space left"):
        log.record(target="x", result="accepted")
    assert not log.available
