"""Joining what the processes recorded, and the numbers the report shows."""

from __future__ import annotations

import bisect
import itertools
import math
import os
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentiles(xs: list[float]) -> dict[str, float | int | None]:
    """p50, p99, max and the count of ``xs`` (nearest-rank)."""
    if not xs:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    s = sorted(xs)
    def rank(p: float) -> float:  # nearest rank: the smallest value with p % of them at or below it
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]
    return {"n": len(s), "p50": rank(50), "p99": rank(99), "max": s[-1]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat):
    on a shared machine, the time the scheduler kept it from running."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def frame_latencies(values: list[list[Any]], sent_ns: dict[str, list[list[int]]], window: tuple[int, int]
                    ) -> tuple[list[float], int]:
    """Seconds from the generator's send of the frame a value came from to the client having it.

    ``values``: the client's ``[signal, seq, recv_ns, source_ns]``; ``sent_ns[bus][msg]``: send times of
    message ``msg``'s frames in order (frame k carries seq k mod 65536). Only values received inside
    ``window``; returns the latencies and how many values matched no sent frame (initial values)."""
    out: list[float] = []
    unmatched = 0
    lo, hi = window
    for name, seq, recv_ns, _ in values:
        if not lo <= recv_ns < hi:
            continue
        bus, msg, _ = name.split(".")
        times = sent_ns.get(bus, [])
        idx = int(msg[3:])
        if idx >= len(times):
            unmatched += 1
            continue
        sent = times[idx]
        # the newest frame carrying this seq that was sent before the client had it
        k = seq + 65536 * ((len(sent) - 1 - seq) // 65536) if len(sent) > seq else -1
        while k >= 0 and sent[k] > recv_ns:
            k -= 65536
        if k < 0:
            unmatched += 1
            continue
        out.append((recv_ns - sent[k]) / 1e9)
    return out, unmatched


def longest_send_gap(sent_ns: dict[str, list[list[int]]], window: tuple[int, int]) -> float:
    """Seconds of the longest pause between two sends of the same probe message inside ``window``: a
    gap over a message's timeout makes its values stale in the bridge, through no fault of the bridge."""
    lo, hi = window
    longest = 0
    for messages in sent_ns.values():
        for times in messages:
            inside = [t for t in times if lo <= t < hi]
            longest = max([longest, *(b - a for a, b in itertools.pairwise(inside))])
    return longest / 1e9


def source_offsets(values: list[list[Any]], sent_ns: dict[str, list[list[int]]]) -> list[float]:
    """Seconds from the generator's send to the kernel timestamp the bridge gave the frame (the values'
    source timestamps): what separates the two clocks' references."""
    out = []
    for name, seq, _, source_ns in values:
        if not source_ns:
            continue
        bus, msg, _ = name.split(".")
        sent = sent_ns.get(bus, [])[int(msg[3:])]
        if seq < len(sent):
            out.append((source_ns - sent[seq]) / 1e9)
    return out


def write_latencies(writes: list[list[Any]], rx: list[list[int]], can_id: int, window: tuple[int, int]
                    ) -> tuple[list[float], int]:
    """Seconds from a client's write request to the frame on the generator's socket (its kernel
    timestamp), per write sent inside ``window``; returns the latencies and writes with no frame."""
    seen: dict[int, list[int]] = {}
    for cid, seq, ts in rx:
        if cid == can_id:
            seen.setdefault(seq, []).append(ts)
    for v in seen.values():
        v.sort()
    out: list[float] = []
    missing = 0
    lo, hi = window
    for _, seq, send_ns, _, ok in writes:
        if not lo <= send_ns < hi:
            continue
        times = seen.get(seq, [])
        i = bisect.bisect_left(times, send_ns)
        if not ok or i == len(times):
            missing += 1
            continue
        out.append((times[i] - send_ns) / 1e9)
    return out, missing
