"""The plugin's configuration: a pydantic model on canbridge.Strict, so unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

import canbridge


class CsvLogConfig(canbridge.Strict):
    """``plugins.csvlog``: where to write, how often, which signals."""

    file: Path = Field(description="CSV file to append to (relative: to the state directory)")
    interval_s: float = Field(1.0, gt=0, description="how often changes are written")
    signals: list[str] = Field(default_factory=lambda: ["*"], description="signal name globs")
