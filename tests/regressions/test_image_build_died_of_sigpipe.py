"""CI's image step died with exit 141: `buildah images ... | head -n1` under `set -o pipefail`.

`head` exits after the first line; the producer gets SIGPIPE and pipefail turns that into a failure of the
whole pipeline, so `set -e` ended a build that had succeeded. Whether it fires depends on how much the
producer writes and on timing, so the class is banned: no shell script of ours that sets pipefail may cut a
pipeline short with `head` (or `grep -q`/`grep -m`, which stop reading the same way).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EARLY_EXIT = re.compile(r"\|\s*(head\b|grep\s+(-\w*[qm]\w*\b))")


def _shell_scripts() -> list[Path]:
    scripts = [*ROOT.glob("tools/**/*.sh"), ROOT / ".ci" / "run"]
    return sorted(p for p in scripts if p.is_file())


def _offending_lines(text: str) -> list[str]:
    if "pipefail" not in text:
        return []
    return [line.strip() for line in text.splitlines() if EARLY_EXIT.search(line.split("#", 1)[0])]


def test_no_pipefail_script_cuts_a_pipeline_short() -> None:
    scripts = _shell_scripts()
    assert len(scripts) > 5, "the glob found no scripts: the test would pass on nothing"
    found = {str(p.relative_to(ROOT)): bad for p in scripts if (bad := _offending_lines(p.read_text()))}
    assert not found, f"pipelines that end early under pipefail (use `sed -n 1p`, which reads all): {found}"


def test_the_pattern_catches_the_line_that_broke_ci() -> None:
    broken = "set -euo pipefail\nsize=$(buildah images --format '{{.Size}}' \"$tag\" | head -n1)\n"
    assert _offending_lines(broken)
    assert _offending_lines("set -o pipefail\nx | grep -q foo\n")
    assert not _offending_lines("set -o pipefail\nx | sed -n 1p\n")


def test_the_failure_is_real(tmp_path: Path) -> None:
    # the mechanism, shown with bash itself: the producer writes more than a pipe buffer after head left
    script = tmp_path / "s.sh"
    script.write_text("set -euo pipefail\nv=$(yes | head -n1)\necho reached\n")
    bad = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 141 and "reached" not in bad.stdout
    script.write_text("set -euo pipefail\nv=$(seq 100000 | sed -n 1p)\necho reached $v\n")
    good = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert good.returncode == 0 and good.stdout.strip() == "reached 1"
