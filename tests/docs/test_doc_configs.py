"""Every configuration example in README.md and docs/*.md passes ``canbridge check`` (the same code,
:func:`canbridge.cli.check_data`), so a new user never copies an example that does not start.

A YAML block is either a whole configuration (it has ``buses:``), or a fragment of one (only top-level
keys of a configuration, e.g. ``plugins:``), which is checked inside a minimal configuration: the demo
bus ``demo`` with the demo DBC. A mapping file an example names (``vehicle.dbc``) stands for the reader's
own: the demo DBC stands in for it. A YAML block that is intentionally not a configuration (a register
map, an output) says so with ``<!-- not-a-config: why -->`` on a line before it; an unmarked block that is
neither fails the test. A block in another language that is a configuration must be labelled ``yaml``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from canbridge.cli import check_data
from canbridge.config import Config, load_yaml
from canbridge.core.app import DEMO_DBC
from canbridge.core.host import load_registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*not-a-config\b")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
STAND_INS = {"dbc": DEMO_DBC, "signals": ROOT / "mappings" / "examples" / "signals.yaml"}
TOP_KEYS = set(Config.model_fields)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # line of the first line of the block's content
    lang: str
    text: str
    marked: bool  # <!-- not-a-config --> before it

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc}:{self.line}"


def blocks(doc: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file, with the marker seen on the last non-blank line
    before the fence."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        start = i + 1
        i = start
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            i += 1
        yield Block(doc, start + 1, lang, "\n".join(lines[start:i]) + "\n", bool(MARKER.search(previous)))
        previous = ""
        i += 1


def classify(block: Block) -> str:
    """'config', 'fragment', 'skip' (marked, or plainly not YAML config), or 'unknown' (fails)."""
    if block.marked:
        return "skip"
    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError:
        data = None
    is_yaml = block.lang in ("yaml", "yml")
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        return "unknown" if is_yaml else "skip"
    keys = set(data)
    if not keys <= TOP_KEYS:
        return "unknown" if is_yaml else "skip"
    if not is_yaml:
        return "unlabelled"  # a configuration in a ```text or ```sh block escapes the check
    return "config" if "buses" in keys else "fragment"


def check_block(block: Block, kind: str, tmp: Path) -> list[str]:
    """Problems of the block under ``canbridge check`` (interfaces and free ports depend on the machine
    that reads the docs: not checked), each placed at its line in the Markdown file."""
    text = block.text
    if kind == "fragment":
        # appended after the fragment so that its lines keep their numbers
        data = yaml.safe_load(text)
        text += f"buses:\n  - {{name: demo, interface: virtual, channel: docs-{block.line}}}\n"
        if "mappings" not in data:
            text += f"mappings:\n  - {{bus: demo, dbc: {DEMO_DBC}, writable: [\"MotorCommand.*\"]}}\n"
    path = tmp / "example.yaml"
    path.write_text(text)
    data, lines = load_yaml(path)
    for m in data.get("mappings") or [] if isinstance(data, dict) else []:
        for key, stand_in in STAND_INS.items():
            name = m.get(key) if isinstance(m, dict) else None
            if isinstance(name, str) and not Path(name).is_absolute():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = ROOT / name if (ROOT / name).is_file() else stand_in
                shutil.copyfile(source, target)
    for b in data.get("buses") or [] if isinstance(data, dict) else []:  # CANopen nodes' EDS files, from the repo
        for n in b.get("nodes") or [] if isinstance(b, dict) else []:
            if isinstance(n, dict) and isinstance(n.get("eds"), str) and (ROOT / n["eds"]).is_file():
                (tmp / n["eds"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / n["eds"], tmp / n["eds"])
    _, registry = load_registry()
    report = check_data(data, lines, str(path), tmp, registry, interfaces=False, ports=False)
    out = []
    for p in report.problems:
        if p.file == str(path) and p.line is not None and p.line <= block.text.count("\n"):
            out.append(f"{block.doc.name}:{block.line + p.line - 1} {p.path or ''}: {p.message}")
        else:
            out.append(f"{block.where} (block) {p}")
    return out


ALL = [b for doc in DOCS for b in blocks(doc)]
CHECKED = [b for b in ALL if classify(b) in ("config", "fragment")]


def test_the_docs_have_configuration_examples() -> None:
    # the extractor finds them: README's and configuration.md's full configurations, the plugin pages'
    # fragments (an extractor that finds nothing would pass everything)
    names = {(b.doc.name, classify(b)) for b in CHECKED}
    assert {("README.md", "config"), ("configuration.md", "config"), ("quickstart.md", "config"),
            ("opcua.md", "fragment"), ("modbus.md", "fragment"), ("rest.md", "fragment")} <= names, names
    assert len(CHECKED) >= 8


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.where)
def test_every_yaml_block_is_a_valid_configuration_or_marked(block: Block, tmp_path: Path) -> None:
    kind = classify(block)
    if kind == "skip":
        return
    assert kind != "unknown", (
        f"{block.where}: a YAML block that is neither a configuration nor a fragment of one: "
        "put <!-- not-a-config: why --> on a line before it if it is meant to be something else"
    )
    assert kind != "unlabelled", f"{block.where}: a configuration in a ```{block.lang} block: label it ```yaml"
    problems = check_block(block, kind, tmp_path)
    assert not problems, f"{block.where}: the example fails canbridge check:\n" + "\n".join(problems)


# --- the checker itself catches what it must --------------------------------------------------------

def _doc(tmp_path: Path, body: str) -> list[Block]:
    p = tmp_path / "page.md"
    p.write_text(body)
    return list(blocks(p))


def test_a_broken_example_fails_at_its_line_in_the_page(tmp_path: Path) -> None:
    [b] = _doc(tmp_path, "# Page\n\ntext\n\n```yaml\nplugins:\n  opcua: {}\n```\n")
    assert classify(b) == "fragment"
    problems = check_block(b, "fragment", tmp_path)
    assert len(problems) == 1 and problems[0].startswith("page.md:7 plugins.opcua: no one can log in"), problems


def test_a_broken_full_configuration_fails(tmp_path: Path) -> None:
    [b] = _doc(tmp_path, "```yaml\nbuses:\n  - {name: v, interface: virtual}\nmappings:\n"
                         "  - {bus: w, dbc: vehicle.dbc}\n```\n")
    assert classify(b) == "config"
    problems = check_block(b, "config", tmp_path)
    assert any(p.startswith("page.md:5 mappings[0].bus:") and "'w'" in p for p in problems), problems


def test_unmarked_unclassifiable_and_unlabelled_blocks_are_caught(tmp_path: Path) -> None:
    found = _doc(tmp_path, "```yaml\nversion: 1\nsignals: {}\n```\n\n<!-- not-a-config: a register map -->\n"
                           "```yaml\nversion: 1\n```\n\n```\nplugins:\n  rest: {}\n```\n\n"
                           "```sh\ncanbridge check x.yaml\n```\n")
    assert [classify(b) for b in found] == ["unknown", "skip", "unlabelled", "skip"]


def test_a_valid_example_passes(tmp_path: Path) -> None:
    [b] = _doc(tmp_path, "```yaml\nplugins:\n  rest: {port: 0}\n```\n")
    assert check_block(b, "fragment", tmp_path) == []
