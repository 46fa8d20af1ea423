"""Start-up with the cyclic garbage collector paused.

Start-up allocates millions of objects that all stay alive (the mapping table, codecs, an OPC UA address
space of 30,000 nodes); each full collection walks all of them again, and at 10,000 signals the
collections were two thirds of the OPC UA plugin's start-up. Nothing built then is garbage worth
collecting, and the runtime collects and freezes everything once start-up is over (``gc_freeze``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection inside; nested uses and an already disabled collector are left alone."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
