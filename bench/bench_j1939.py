#!/usr/bin/env python3
"""J1939 through the core's receive path against the plain DBC path, in the same run.

    .venv/bin/python bench/bench_j1939.py [--frames N] [--repeat R]

The same DBC (tests/data/dbc/j1939_test.dbc: EEC1, ET1, CCVS, TSC1) is mapped once as plain (exact ids)
and once as J1939 (by PGN, two named sources), and the same kind of traffic goes through
``BusRunner.on_frames`` in batches of 512: every payload different (every frame decoded). Plain: the DBC's
exact ids. J1939: two sources, three priorities and, for TSC1, four destinations, so the PGN match runs
once per distinct id and the rest are exact hits. Then BAM transfers of the 39-byte EC1 per second
(7 frames each, reassembled and decoded). Prints CPU µs per frame (best of R runs) and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canbridge import FrameFlags, RawFrame  # noqa: E402
from canbridge.config import parse_config  # noqa: E402
from canbridge.core.busrunner import BusRunner  # noqa: E402
from canbridge.core.host import collect, make_plugin_manager  # noqa: E402
from canbridge.core.mapping import j1939  # noqa: E402
from canbridge.core.mapping.table import build_table  # noqa: E402
from canbridge.core.store import SignalStore  # noqa: E402

DBC = ROOT / "tests" / "data" / "dbc" / "j1939_test.dbc"
EXT = int(FrameFlags.EXTENDED)
BATCH = 512
REGISTRY = collect(make_plugin_manager(load_entry_points=False))


def runner(**mapping: Any) -> BusRunner:
    cfg = parse_config({"buses": [{"name": "truck", "interface": "virtual", "channel": "truck"}],
                        "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["EEC1", "ET1", "CCVS", "TSC1"],
                                      **mapping}]})
    table = build_table(cfg, Path.cwd(), REGISTRY.formats)
    return BusRunner(cfg.buses[0], REGISTRY.bus_kinds["virtual"], table, SignalStore(table), lambda r, s: None)


def payloads(n: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(8) for _ in range(n)]


def plain_frames(n: int, rng: random.Random) -> list[RawFrame]:
    ids = [0x0CF00400, 0x18FEEE00, 0x18FEF10B, 0x0C000003]
    return [(ids[i % 4], EXT, p, i) for i, p in enumerate(payloads(n, rng))]


def j1939_frames(n: int, rng: random.Random, mixed: bool) -> list[RawFrame]:
    """Two sources; ``mixed``: each group also at three priorities and TSC1 to four destinations (each
    message reached through several ids), else each group at its DBC priority (what trucks send)."""
    pgns = [(0xF004, 3), (0xFEEE, 6), (0xFEF1, 6), (0x0000, 3)]
    out: list[RawFrame] = []
    for i, p in enumerate(payloads(n, rng)):
        pgn, priority = pgns[i % 4]
        sa = (0x00, 0x0F)[(i // 4) % 2]
        can_id = (j1939.make_id((3, 6, 7)[i % 3], pgn, sa, (0x00, 0x05, 0x17, 0xFF)[(i // 8) % 4]) if mixed
                  else j1939.make_id(priority, pgn, sa, 0x00))
        out.append((can_id, EXT, p, i))
    return out


def run(r: BusRunner, frames: list[RawFrame]) -> float:
    t0 = time.process_time()
    for k in range(0, len(frames), BATCH):
        r.on_frames(frames[k:k + BATCH])
    return (time.process_time() - t0) / len(frames) * 1e6


def bam_frames(n: int) -> list[RawFrame]:
    out: list[RawFrame] = []
    ts = 0
    for t in range(n):
        payload = (t % 60000).to_bytes(2, "little") + bytes(37)
        cm = bytes([32, 39, 0, 6, 0xFF]) + (0xFEE3).to_bytes(3, "little")
        out.append((j1939.make_id(7, j1939.PGN_TP_CM, 0x00, 0xFF), EXT, cm, ts))
        for i in range(1, 7):
            ts += 1_000_000
            chunk = payload[(i - 1) * 7:i * 7]
            data = bytes([i]) + chunk + b"\xff" * (7 - len(chunk))
            out.append((j1939.make_id(7, j1939.PGN_TP_DT, 0x00, 0xFF), EXT, data, ts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--transfers", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1939)
    plain = plain_frames(args.frames, rng)
    pgn, mixed = j1939_frames(args.frames, rng, False), j1939_frames(args.frames, rng, True)
    best_plain = best_pgn = best_mixed = best_bam = float("inf")
    for _ in range(args.repeat):
        best_plain = min(best_plain, run(runner(protocol="plain"), plain))
        for frames, best in ((pgn, "pgn"), (mixed, "mixed")):
            r = runner(sources={0x00: "engine", 0x0F: "retarder"})
            us = run(r, frames)
            assert r.unmapped_frames == 0
            if best == "pgn":
                best_pgn = min(best_pgn, us)
            else:
                best_mixed = min(best_mixed, us)
        bams = bam_frames(args.transfers)
        rb = runner(messages=["EC1"], sources={0x00: "engine"})
        t0 = time.process_time()
        for k in range(0, len(bams), BATCH - 1):
            rb.on_frames(bams[k:k + BATCH - 1])
        best_bam = min(best_bam, (time.process_time() - t0) / args.transfers)
        assert rb.j1939 is not None and rb.j1939.tp.completed == args.transfers
    print(f"J1939 receive path, {args.frames} frames, best of {args.repeat}, batches of {BATCH}")
    print(f"  plain DBC (exact ids)          {best_plain:6.2f} CPU µs/frame")
    print(f"  J1939 by PGN, 2 sources        {best_pgn:6.2f} CPU µs/frame  ({best_pgn / best_plain - 1:+.0%})")
    print(f"  J1939, 3 priorities x 4 dest.  {best_mixed:6.2f} CPU µs/frame  ({best_mixed / best_plain - 1:+.0%})")
    print(f"  BAM transfers (39 bytes, 7 frames): {1 / best_bam:,.0f} transfers/s per core "
          f"({best_bam * 1e6:.1f} CPU µs each)")


if __name__ == "__main__":
    main()
