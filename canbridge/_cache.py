"""The start-up cache: what start-up computes from unchanged inputs, kept in ``<state_dir>/cache/``.

One file per kind of result (``<kind>.json``), holding the latest result and the key it was computed
for. The key is a SHA-256 over canbridge's version, the cache format and every input the caller names
(file contents, the configuration, the mapping table), so any change to them is a miss. The format is
JSON, never pickle or marshal: a cache file can only ever give data back, never run code, and what it
gives is checked before it is used. A file that is truncated, corrupt, of another format, not owned by
this user or writable by others is ignored with a warning (and replaced on the next store). Writes go
to a temporary file in the same directory, renamed over the old one, so a reader sees the old file or
the new one, never half of either. A cache that cannot be written is only a warning: start-up goes on
computing everything.

File layout: one line of JSON header ``{"format", "canbridge", "kind", "key", "sha256", "size"}``, then
the payload (JSON) whose SHA-256 and size the header gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("canbridge.cache")

FORMAT = 1
MAX_BYTES = 256 * 1024 * 1024  # a cache file larger than this is not read (none comes near it)
_KIND = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def cache_key(*parts: str | bytes | None) -> str:
    """The SHA-256 (hex) of canbridge's version, the cache format and ``parts``, each part length-
    prefixed so that no two different lists of parts give the same bytes (None is not b"")."""
    from canbridge import __version__  # the package's, set before any cache is used

    h = hashlib.sha256()
    for p in (__version__, str(FORMAT), *parts):
        if p is None:
            h.update(b"N")
            continue
        data = p.encode("utf-8") if isinstance(p, str) else p
        h.update(b"S" if isinstance(p, str) else b"B")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


class StartupCache:
    """The cache in one directory (``None``: a cache that holds nothing, for callers without one)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self._warned_write = False

    def path(self, kind: str) -> Path | None:
        if not _KIND.match(kind):
            raise ValueError(f"cache kind {kind!r} must be lower-case letters, digits and '-'")
        return None if self.directory is None else self.directory / f"{kind}.json"

    def load(self, kind: str, key: str) -> Any | None:
        """The data stored for ``kind`` under ``key``, or None (absent, another key, or unusable)."""
        path = self.path(kind)
        if path is None:
            return None
        try:
            data = self._read(path, kind, key)
        except FileNotFoundError:
            data = None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.warning("start-up cache %s is not usable (%s); ignoring it", path, e)
            data = None
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def store(self, kind: str, key: str, data: Any) -> bool:
        """Replace what is stored for ``kind`` atomically; False (and a warning, once) if it cannot be."""
        path = self.path(kind)
        if path is None:
            return False
        from canbridge import __version__

        payload = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
        header = {
            "format": FORMAT, "canbridge": __version__, "kind": kind, "key": key,
            "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
        }
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{kind}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(header).encode("utf-8") + b"\n")
                f.write(payload)
            os.replace(tmp, path)
            tmp = None
            return True
        except OSError as e:
            if not self._warned_write:
                self._warned_write = True
                log.warning(
                    "start-up cache %s cannot be written (%s); start-up computes everything each time",
                    path, e.strerror or e,
                )
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    @staticmethod
    def _read(path: Path, kind: str, key: str) -> Any | None:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ValueError("owned by another user or writable by others")
            if st.st_size > MAX_BYTES:
                raise ValueError(f"{st.st_size} bytes, more than {MAX_BYTES}")
            raw = f.read()
        head, sep, payload = raw.partition(b"\n")
        if not sep:
            raise ValueError("no header line (truncated)")
        header = json.loads(head)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        if header.get("format") != FORMAT or header.get("kind") != kind:
            raise ValueError(f"format {header.get('format')!r} kind {header.get('kind')!r}, expected {FORMAT} {kind}")
        if header.get("key") != key:
            return None  # computed from other inputs: an ordinary miss
        if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
            raise ValueError("the payload does not match its checksum (truncated or corrupt)")
        return json.loads(payload)
