"""canbridge.StartupCache: hits, misses, corrupt and foreign files, atomic writes, no writable place."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

import canbridge
from canbridge import StartupCache, cache_key


def test_hit_and_miss(tmp_path: Path) -> None:
    cache = StartupCache(tmp_path / "cache")
    key = cache_key("inputs", b"\x00bytes")
    assert cache.load("plan", key) is None
    assert cache.store("plan", key, {"a": [1, 2.5, "x"], "b": None})
    assert cache.load("plan", key) == {"a": [1, 2.5, "x"], "b": None}
    assert cache.load("plan", cache_key("other inputs")) is None
    assert cache.load("other-kind", key) is None
    assert (cache.hits, cache.misses) == (1, 3)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["plan.json"]  # no temporary file left


def test_a_new_version_or_format_is_a_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache_key("same")
    monkeypatch.setattr(canbridge, "__version__", "99.0.0")
    assert cache_key("same") != key


def test_parts_cannot_run_into_each_other() -> None:
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key(None) != cache_key(b"") != cache_key("")
    assert cache_key(b"x") != cache_key("x")


def test_cache_without_a_directory_holds_nothing() -> None:
    cache = StartupCache(None)
    assert not cache.store("plan", "k", 1)
    assert cache.load("plan", "k") is None


def test_a_kind_is_a_file_name_not_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        StartupCache(tmp_path).load("../escape", "k")


def _corruptions(good: bytes) -> dict[str, bytes]:
    head, _, payload = good.partition(b"\n")
    header = json.loads(head)
    return {
        "empty": b"",
        "header only": head,
        "truncated payload": good[:-3],
        "flipped byte": good[:-2] + bytes([good[-2] ^ 0x01]) + good[-1:],
        "not json": b"\x80\x81garbage\n{}",
        "header not an object": b"[1]\n" + payload,
        "other format": json.dumps({**header, "format": 0}).encode() + b"\n" + payload,
        "other kind": json.dumps({**header, "kind": "x"}).encode() + b"\n" + payload,
        "payload not json": json.dumps(
            {**header, "size": 3, "sha256": "f28aa1d9d4b9e1c0a3d6c36a0a1f4cb8f0e2b1a7f21c7d4d1e45bb2d0c9fdd33"}
        ).encode() + b"\n{{{",
    }


@pytest.mark.parametrize("case", list(_corruptions(b'{"x":1}\n{}')))
def test_a_corrupt_file_is_ignored_with_a_warning(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = StartupCache(tmp_path)
    key = cache_key("k")
    cache.store("plan", key, {"value": list(range(100))})
    path = tmp_path / "plan.json"
    path.write_bytes(_corruptions(path.read_bytes())[case])
    with caplog.at_level(logging.WARNING, logger="canbridge.cache"):
        assert cache.load("plan", key) is None
    assert "not usable" in caplog.text and str(path) in caplog.text
    assert cache.store("plan", key, {"value": 1})  # and the next store replaces it
    assert cache.load("plan", key) == {"value": 1}


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = StartupCache(tmp_path)
    cache.store("plan", "k", [1])
    os.chmod(tmp_path / "plan.json", 0o666)
    with caplog.at_level(logging.WARNING, logger="canbridge.cache"):
        assert cache.load("plan", "k") is None
    assert "writable by others" in caplog.text


def test_a_directory_in_place_of_the_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "plan.json").mkdir()
    with caplog.at_level(logging.WARNING, logger="canbridge.cache"):
        assert StartupCache(tmp_path).load("plan", "k") is None
    assert "not usable" in caplog.text


def test_an_unwritable_cache_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the cache directory should be")  # unwritable even for root
    cache = StartupCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="canbridge.cache"):
        assert not cache.store("plan", "k", [1])
        assert not cache.store("plan", "k", [2])
        assert cache.load("plan", "k") is None
    assert caplog.text.count("cannot be written") == 1


def test_concurrent_writers_never_show_half_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Readers racing writers see one complete version or the other, never a mix or a torn file."""
    key = cache_key("k")
    versions = [{"writer": w, "data": [w] * 20_000} for w in range(4)]
    errors: list[str] = []
    stop = threading.Event()

    def write(w: int) -> None:
        cache = StartupCache(tmp_path)
        for _ in range(30):
            if not cache.store("plan", key, versions[w]):
                errors.append("store failed")

    def read() -> None:
        cache = StartupCache(tmp_path)
        while not stop.is_set():
            got = cache.load("plan", key)
            if got is not None and got not in versions:
                errors.append("a mixed file")

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    caplog.set_level(logging.WARNING, logger="canbridge.cache")
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert "not usable" not in caplog.text  # a torn file would fail its checksum and be reported
    assert StartupCache(tmp_path).load("plan", key) in versions
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
