"""``canbridge stats``: a running bridge's operating statistics, read from its REST ``/api/v1/stats``.

Standard library only (urllib): the command must work where the bridge runs, with nothing else
installed, and it must not import the REST plugin to talk to it.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "CANBRIDGE_TOKEN"


class StatsError(Exception):
    """The statistics could not be read; the message says why and what to do."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"the REST plugin's base URL (default {DEFAULT_URL}; https:// with TLS)")
    p.add_argument("--token", help=f"a token with the read role (default: ${TOKEN_ENV})")
    p.add_argument("--cafile", help="with https: the CA certificate (or the server's self-signed one) to trust")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    p.add_argument("--json", action="store_true", help="print the JSON of /api/v1/stats as it is")


def fetch(url: str, token: str | None = None, cafile: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``<url>/api/v1/stats``; StatsError naming the URL and the fix on any failure."""
    target = url.rstrip("/") + "/api/v1/stats"
    if not target.startswith(("http://", "https://")):
        raise StatsError(f"--url must start with http:// or https://, got {url!r}")
    req = urllib.request.Request(target, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=cafile) if target.startswith("https://") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise StatsError(f"{target}: HTTP {e.code}: a token with the read role is needed "
                             f"(--token or ${TOKEN_ENV})") from None
        if e.code == 404:
            raise StatsError(f"{target}: HTTP 404: not a canbridge with /api/v1/stats (a newer REST plugin?)") from None
        raise StatsError(f"{target}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise StatsError(f"cannot reach the bridge at {target}: {why} (is it running with the REST plugin "
                         "enabled? --url says where)") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise StatsError(f"{target}: the answer is not JSON") from None
    if not isinstance(data, dict) or "loop_lag" not in data:
        raise StatsError(f"{target}: the answer is not canbridge statistics")
    return data


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def _duration(s: float) -> str:
    s = int(s)
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {sec:02d}s"


def _table(out: TextIO, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for i, row in enumerate([head, *rows]):
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)


def render(data: dict[str, Any], url: str, out: TextIO | None = None) -> None:
    """The statistics as readable tables."""
    out = out or sys.stdout
    lag = data["loop_lag"]
    up = float(data["uptime_s"])
    print(f"canbridge at {url}: up {_duration(up)}, CPU {data['cpu_seconds']:.1f} s "
          f"({data['cpu_seconds'] / up * 100 if up > 0 else 0:.1f} % of a core), core {data['core_cpu_seconds']:.1f} s",
          file=out)
    flag = "  <- stalls: a callback held the event loop" if lag["stalls"] else ""
    print(f"\nevent-loop lag (last {lag['window_samples']} samples every {_ms(lag['interval_s'])}): "
          f"p50 {_ms(lag['p50_s'])}, p99 {_ms(lag['p99_s'])}; since start: max {_ms(lag['max_s'])}, "
          f"over {_ms(lag['stall_threshold_s'])}: {lag['stalls']}{flag}", file=out)
    plugins = data["plugins"]
    if plugins:
        print("\nplugins", file=out)
        _table(out, ["plugin", "CPU s", "share"],
               [[n, f"{p['cpu_seconds']:.2f}", f"{p['cpu_share'] * 100:.1f} %"] for n, p in sorted(plugins.items())])
    print("\nbuses", file=out)
    _table(out, ["bus", "frames", "decoded", "lost", "decode errors", "error frames"],
           [[n, f"{b['frames']:,}", f"{b['decoded']:,}", f"{b['lost']:,}", f"{b['decode_errors']:,}",
             f"{b['error_frames']:,}"] for n, b in data["buses"].items()])
    q = data["queues"]
    if q["subscriptions"]:
        print("\nsubscriptions", file=out)
        _table(out, ["plugin", "signals", "interval", "pending", "lag", "coalesced"],
               [[s["plugin"] or "-", "all" if s["signals"] is None else str(s["signals"]), _ms(s["interval_s"]),
                 str(s["pending"]), _ms(s["lag_s"]), f"{s['coalesced']:,}"] for s in q["subscriptions"]])
    if q["frame_subscriptions"]:
        print("\nframe subscriptions", file=out)
        _table(out, ["plugin", "bus", "buffered", "dropped"],
               [[f["plugin"] or "-", f["bus"] or "all", f"{f['buffered']}/{f['capacity']}", f"{f['dropped']:,}"]
                for f in q["frame_subscriptions"]])
    c = data["coalesced"]
    by = ", ".join(f"{k} {v:,}" for k, v in sorted(c["by_plugin"].items())) or "none"
    print(f"\ncoalesced updates (values no consumer saw): {c['total']:,} ({by}); "
          f"raw frames dropped for slow subscribers: {c['frames_dropped']:,}", file=out)


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        data = fetch(args.url, token, args.cafile, args.timeout)
    except StatsError as e:
        print(f"canbridge stats: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data, args.url)
    return 0
