"""Where the bridge's time goes, from a py-spy ``--format raw`` profile (collapsed stacks with counts):
the share of the event loop thread's samples per component, so CPU per plugin is visible without any
help from the bridge.

    python bench/e2e/profile_summary.py PROFILE.txt

A sample belongs to the first plugin package on its stack, root first (``canbridge_opcua``,
``canbridge_modbus``, ``canbridge_rest``; their libraries asyncua, pymodbus and aiohttp count for them
only when called from them or from their servers' own tasks), else to the core (``canbridge/``), else to
"waiting" when the loop sits in ``select``, else to "other" (asyncio's own work, logging).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

COMPONENTS = (
    ("opcua", ("canbridge_opcua/", "asyncua/")),
    ("modbus", ("canbridge_modbus/", "pymodbus/")),
    ("rest", ("canbridge_rest/", "aiohttp/")),
    ("core", ("canbridge/",)),
)


# frames on every stack of the loop thread, so they name no component: the CLI's start-up and the CPU
# account's wrap of Handle._run (with it, every sample counted for the core)
_FRAMES_OF_EVERY_SAMPLE = ("main (canbridge/cli", "cmd_run", "_run_async", "_timed_run (canbridge/core/cpuaccount")


def classify(stack: str) -> str | None:
    """The component a sample of the loop thread belongs to; None for other threads."""
    frames = stack.split(";")
    if not any("run_forever" in f for f in frames):
        return None  # not the event loop's thread (the default executor's workers)
    if "select (selectors.py" in frames[-1]:
        return "waiting"
    for f in frames:
        for name, needles in COMPONENTS:
            if any(n in f for n in needles) and not f.startswith(_FRAMES_OF_EVERY_SAMPLE):
                return name
    return "other"


def summarise(text: str) -> dict[str, float]:
    """Percent of the loop thread's samples per component."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        kind = classify(stack)
        if kind is not None:
            counts[kind] += int(n)
    total = sum(counts.values()) or 1
    return {k: 100 * v / total for k, v in counts.most_common()}


def main() -> int:
    for name, pct in summarise(Path(sys.argv[1]).read_text()).items():
        print(f"{name:<8} {pct:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
