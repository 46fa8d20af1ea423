"""Regression: pyproject.toml declared lower bounds nobody had installed (issue 9, finding 8).

`pluggy>=1.3` allowed a pluggy without the private module the host imported, `aiohttp>=3.9` one without
`web.RequestKey`, `cryptography>=41` one asyncua 2.1 refuses, `pymodbus>=3.16` a yanked release, `pyroute2>=0.7`
a release that does not exist and, from there to 0.7.9, ones that silently drop CAN bit timing.
`make test-lowest` (CI) now runs the suite on exactly the lower bounds, from tools/constraints-lowest.txt;
these tests keep that file honest: it must be the bounds pyproject.toml declares, and every dependency must
have a bound it can pin.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_constraints_lowest", ROOT / "tools/gen_constraints_lowest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_constraints_are_the_declared_lower_bounds() -> None:
    gen = _gen()
    assert gen.CONSTRAINTS.read_text(encoding="utf-8") == gen.render(gen.lower_bounds()), (
        "tools/constraints-lowest.txt is stale: python tools/gen_constraints_lowest.py > tools/constraints-lowest.txt"
    )
    assert gen.main(["--check"]) == 0


def test_every_runtime_dependency_is_pinned_to_its_lower_bound() -> None:
    gen = _gen()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = [line for line in gen.CONSTRAINTS.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert len(pins) == len(deps) >= 11
    for dep, pin in zip(deps, pins, strict=True):
        name, version = pin.split("==")
        assert dep.startswith(name) and f">={version}" in dep.replace(" ", ""), (dep, pin)


def _bounds_of(tmp_path: Path, *deps: str) -> dict[str, str]:
    p = tmp_path / "pyproject.toml"
    p.write_text("[project]\ndependencies = [" + ", ".join(f"'{d}'" for d in deps) + "]\n", encoding="utf-8")
    bounds: dict[str, str] = _gen().lower_bounds(p)
    return bounds


def test_lower_bounds_are_read_from_every_form_of_range(tmp_path: Path) -> None:
    assert _bounds_of(tmp_path, "a>=1.2", "b >= 3.16.1, <3.17", "c<5,>=4.4", "d_e.f>=0.7.1") == {
        "a": "1.2", "b": "3.16.1", "c": "4.4", "d_e.f": "0.7.1",
    }


@pytest.mark.parametrize(
    "dep",
    [
        "nobound",  # anything goes: there is no lowest version to test
        "upperonly<2",
        "exact==1.0",  # not a range: say it as >=1.0,<1.1 or so
        "two>=1,>=2",
        "compat~=1.4",  # the lower bound hides in ~=: spell it out
        "extra[x]>=1",
        'marker>=1; python_version < "3.12"',
    ],
)
def test_a_dependency_without_one_plain_lower_bound_is_refused(tmp_path: Path, dep: str) -> None:
    with pytest.raises(ValueError, match="dependency"):
        _bounds_of(tmp_path, dep)


def test_ci_runs_the_lowest_tier() -> None:
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert "make test-lowest" in ci
    assert "test-lowest:" in (ROOT / "Makefile").read_text(encoding="utf-8")
