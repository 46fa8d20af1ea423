#!/usr/bin/env python3
"""Generated decoders against cantools, per frame, in the same run.

    .venv/bin/python bench/bench_codec.py [--frames N] [--repeat R]

For each message: cantools ``Database.decode_message(frame_id, data)`` (what a naive bridge
does per frame), ``Message.decode(data, decode_choices=False)``, and the generated decoder
from :mod:`canbridge.core.mapping.codec`, on the same random payloads (every value changes, the worst
case for the generated decoder, which stores and reports changes) and on one repeated payload
(nothing changes). Prints CPU µs per frame (best of R runs) and the ratio to cantools; the
encode columns compare ``Message.encode(values, strict=False)`` with ``encode_message``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cantools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canbridge.core.mapping.codec import _message_encoder, compile_decoder  # noqa: E402


def encode_message(message: Any, values: Any) -> bytes:
    """Test helper: a whole frame from physical values with the generated encoder (cached per message),
    as ``message.encode(values, strict=False)`` does with cantools."""
    return _message_encoder(message)(values)

EIGHT = """VERSION ""
BO_ 291 Eight: 8 ECU
 SG_ A : 0|8@1+ (1,0) [0|255] "" X
 SG_ B : 8|8@1+ (1,-40) [-40|215] "" X
 SG_ C : 16|12@1+ (0.1,0) [0|409.5] "" X
 SG_ D : 28|4@1+ (1,0) [0|15] "" X
 SG_ E : 32|16@1- (0.01,0) [-327.68|327.67] "" X
 SG_ F : 48|1@1+ (1,0) [0|1] "" X
 SG_ G : 49|7@1+ (1,0) [0|127] "" X
 SG_ H : 56|8@1+ (0.5,0) [0|127.5] "" X
"""


def _best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        # CPU time of this process: other processes on a shared machine do not count
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    cases: list[tuple[str, cantools.database.can.Database, str]] = []
    eight = cantools.database.can.Database()
    eight.add_dbc_string(EIGHT)
    cases.append(("8 signals, little-endian", eight, "Eight"))
    demo = cantools.database.load_file(ROOT / "mappings" / "demo" / "demo.dbc")
    assert isinstance(demo, cantools.database.can.Database)
    cases += [
        ("demo MotorStatus (6)", demo, "MotorStatus"),
        ("demo PowerStatus (float32)", demo, "PowerStatus"),
        ("demo VehicleInfo (big-endian)", demo, "VehicleInfo"),
        ("demo Diagnostics (mux)", demo, "Diagnostics"),
    ]
    prius = ROOT / "tests" / "data" / "dbc" / "toyota_prius_2010_pt.dbc"
    if prius.exists():
        db = cantools.database.load_file(prius)
        assert isinstance(db, cantools.database.can.Database)
        msg = max(db.messages, key=lambda m: len(m.signals))
        cases.append((f"prius {msg.name} ({len(msg.signals)}, big-endian)", db, msg.name))

    rng = random.Random(1)
    n = args.frames
    print(f"{n} frames per run, best of {args.repeat}; CPU µs per frame (ratio: decode_message / generated)")
    header = (
        f"{'message':40} {'decode_message':>14} {'Message.decode':>14} "
        f"{'generated':>10} {'unchanged':>10} {'ratio':>6} {'encode':>8} {'gen.enc':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, db, name in cases:
        msg = db.get_message_by_name(name)
        payloads = [bytes(rng.getrandbits(8) for _ in range(msg.length)) for _ in range(n)]
        if msg.is_multiplexed():
            # keep the multiplexer at ids that exist, so cantools does not raise
            mux = next(s for s in msg.signals if s.is_multiplexer)
            ids = sorted({i for s in msg.signals for i in (s.multiplexer_ids or [])})
            payloads = [
                encode_message(msg, {mux.name: ids[i % len(ids)]})[:1] + p[1:] for i, p in enumerate(payloads)
            ]
        indices = {s.name: i for i, s in enumerate(msg.signals)}
        decoder = compile_decoder(msg, indices)
        values: list[Any] = [None] * len(indices)
        changed: list[int] = []
        frame_id = msg.frame_id

        decoded = [msg.decode(p, decode_choices=False) for p in payloads[:2000]]
        same = [payloads[0]] * n

        def naive(ps: list[bytes] = payloads, db: Any = db, fid: int = frame_id) -> None:
            for p in ps:
                db.decode_message(fid, p)

        def message_decode(ps: list[bytes] = payloads, m: Any = msg) -> None:
            for p in ps:
                m.decode(p, decode_choices=False)

        def generated(
            ps: list[bytes] = payloads, dec: Any = decoder, vs: Any = values, ch: Any = changed
        ) -> None:
            for p in ps:
                dec(p, vs, ch)
                ch.clear()

        def unchanged(
            ps: list[bytes] = same, dec: Any = decoder, vs: Any = values, ch: Any = changed
        ) -> None:
            generated(ps, dec, vs, ch)

        def cantools_encode(ds: list[Any] = decoded, m: Any = msg) -> None:
            for d in ds:
                m.encode(d, strict=False)

        def generated_encode(ds: list[Any] = decoded, m: Any = msg) -> None:
            for d in ds:
                encode_message(m, d)

        us = 1e6 / n
        t_naive = _best(naive, args.repeat) * us
        t_msg = _best(message_decode, args.repeat) * us
        t_gen = _best(generated, args.repeat) * us
        t_same = _best(unchanged, args.repeat) * us
        t_enc = _best(cantools_encode, args.repeat) * 1e6 / len(decoded)
        t_genc = _best(generated_encode, args.repeat) * 1e6 / len(decoded)
        print(
            f"{label:40} {t_naive:14.2f} {t_msg:14.2f} {t_gen:10.2f} {t_same:10.2f} "
            f"{t_naive / t_gen:5.1f}x {t_enc:8.2f} {t_genc:8.2f}"
        )
    print(f"(python {sys.version.split()[0]}, cantools {cantools.__version__}, pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
