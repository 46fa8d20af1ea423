"""The benchmark's tables on stdout."""

from __future__ import annotations

import json
from typing import Any


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def print_scenario(r: dict[str, Any]) -> None:
    f = r["frames"]
    out = print
    print(f"\n== {r['scenario']}: {r['what']} ({r['signals']:,} signals, {r['buses']} bus(es) at "
          f"{r['rate_per_bus']:,.0f} frames/s); ready in {r['startup_s']:.1f} s; window {r['window_s']:.1f} s; "
          f"load average {r['loadavg'][0]:.2f} -> {r['loadavg'][1]:.2f}")
    print(f"frames: sent {f['sent']:,}, lost at a full socket queue {f['lost_queue_full']:,}, received by the "
          f"bridge {f['received']:,}, not received {f['lost_in_bridge']:,}, kernel drops {f['dropped_reported']:,}")
    off = r["send_to_kernel_ts"]
    if off["n"]:
        out(f"send -> kernel timestamp (from the source timestamps): p50 {off['p50'] * 1e6:.0f} us, "
            f"max {off['max'] * 1e6:.0f} us")
    print(f"{'frame -> client':<16} {'interval ms':>11} {'values':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'p99 - interval':>14}")
    for proto, v in r["frame_to_client"].items():
        extra = "-" if v["p99"] is None else f"{(v['p99'] - v['interval_s']) * 1000:.1f}"
        print(f"{proto:<16} {v['interval_s'] * 1000:>11.0f} {v['n']:>7} {ms(v['p50']):>8} {ms(v['p99']):>8} "
              f"{ms(v['max']):>8} {extra:>14}")
    if r.get("modbus_not_good_reads"):
        out(f"Modbus reads refused because a probe was not good (exception 0B): {r['modbus_not_good_reads']}; "
            f"the longest pause between two sends of a probe was {ms(r['longest_probe_send_gap_s'])} ms "
            f"(a probe is stale 300 ms after its last frame)")
    print(f"{'write -> frame':<16} {'writes':>7} {'missing':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, v in r["write_to_frame"].items():
        print(f"{label:<16} {v['n']:>7} {v['missing']:>7} {ms(v['p50']):>8} {ms(v['p99']):>8} {ms(v['max']):>8}")
    g = r["rest_get"]
    out(f"REST GET: {g['n']} requests ({g['per_s']:.0f}/s), p50 {ms(g['p50'])} ms, p99 {ms(g['p99'])} ms, "
        f"max {ms(g['max'])} ms")
    lag = r["machine_lag"]
    out(f"a bare asyncio process's 10 ms sleeps woke late by: p50 {ms(lag['p50'])} ms, p99 {ms(lag['p99'])} ms, "
        f"max {ms(lag['max'])} ms (the machine, not the bridge)")
    cpu = ", ".join(f"{c} {v:.0f} % ({r['rss_mb'][c]:.0f} MB)" for c, v in r["cpu_pct"].items())
    out(f"CPU (% of one core) and RSS: {cpu}")
    waits = ", ".join(f"{c} {v:.0f} %" for c, v in r["runqueue_wait_pct"].items())
    out(f"runnable but waiting for a CPU (% of the window, all threads): {waits}")
    if r.get("profile"):
        shares = ", ".join(f"{k} {v:.0f} %" for k, v in r["profile"].items())
        out(f"bridge event loop thread (py-spy samples): {shares}")
    lag = r.get("loop_lag")
    print(f"bridge loop lag: {lag if lag else 'no ' + 'canbridge_event_loop_lag_seconds metric in this bridge'}")
    if r.get("bridge_stats") is None:
        out("bridge /api/v1/stats: not in this bridge")
    else:
        out(f"bridge /api/v1/stats: {json.dumps(r['bridge_stats'])[:600]}")
    if r["errors"]:
        print(f"client errors: {r['errors']}")
