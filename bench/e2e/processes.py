"""Child processes the benchmark drives over stdin/stdout lines (generator and clients)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class Child:
    """``python bench/e2e/<script> SPEC OUT``: says ``ready``, obeys lines on stdin, writes OUT at ``stop``."""

    def __init__(self, name: str, script: str, spec: dict[str, Any], workdir: Path,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name = name
        self.spec_path = workdir / f"{name}.spec.json"
        self.out_path = workdir / f"{name}.out.json"
        self.spec_path.write_text(json.dumps(spec))
        self.log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, str(HERE / script), str(self.spec_path), str(self.out_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     pass_fds=pass_fds)
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str, timeout: float) -> None:
        """Wait for a line starting with ``word``; a child that fails or exits first is an error."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            readable, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not readable:
                break
            line = self.proc.stdout.readline().decode().strip()
            if line.startswith(word):
                return
            if not line or line.startswith("failed"):
                raise RuntimeError(f"{self.name}: {line or 'exited'}; see {self.workdir / (self.name + '.log')}:\n"
                                   f"{self.log_tail()}")
        raise RuntimeError(f"{self.name}: no {word!r} within {timeout} s:\n{self.log_tail()}")

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask it to stop and read what it wrote."""
        if self.proc.poll() is None:
            try:
                self.say("stop")
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} did not stop within {timeout} s") from None
        finally:
            self.log.close()
        if not self.out_path.exists():
            raise RuntimeError(f"{self.name} wrote no results:\n{self.log_tail()}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
