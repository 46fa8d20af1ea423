"""Report by exception: deadbands (absolute and percent), quality changes, maximum age."""

from __future__ import annotations

from canbridge_mqtt.rbe import ReportFilter, deadbands

from canbridge import Quality, SignalValue
from canbridge.testing import signal_info


def v(name: str, value: object, q: Quality = Quality.GOOD, ts: int = 1_000_000) -> SignalValue:
    return SignalValue(name, value, q, ts)  # type: ignore[arg-type]


def test_deadband_globs_abs_and_percent_last_wins() -> None:
    signals = [signal_info("b.M.Temperature1", minimum=0, maximum=200), signal_info("b.M.Speed"),
               signal_info("b.M.Flag", value_type=bool)]
    bands = deadbands(signals, {"*": 0, "*.Temp*": 0.5, "b.M.Temperature1": "2%", "b.M.Flag": 1})
    assert bands == {"b.M.Temperature1": 4.0}


def test_changes_inside_the_deadband_are_not_reported_until_they_add_up() -> None:
    f = ReportFilter({"s": 1.0}, None)
    assert [c[1] for c in f.select([v("s", 10.0)], 0)] == [10.0]
    assert f.select([v("s", 10.5)], 1) == [] and f.suppressed == 1
    assert f.select([v("s", 10.9)], 2) == []  # measured from the last *reported* value, not the last seen
    assert [c[1] for c in f.select([v("s", 11.0)], 3)] == [11.0]
    assert [c[2] for c in f.select([v("s", 11.0, Quality.STALE)], 4)] == [Quality.STALE]  # quality always


def test_unchanged_values_are_not_reported_but_every_change_without_deadband_is() -> None:
    f = ReportFilter({}, None)
    assert len(f.select([v("a", 1), v("b", True)], 0)) == 2
    assert f.select([v("a", 1), v("b", True)], 1) == []
    assert [c[0] for c in f.select([v("a", 2), v("b", True)], 2)] == ["a"]
    assert [c[3] for c in f.select([v("a", 3, ts=7_000_000)], 3)] == [7]  # ms since the epoch


def test_max_age_sends_unchanged_values_again() -> None:
    f = ReportFilter({}, 10.0)
    f.mark([v("a", 1), v("b", 2)], 0)
    assert f.expired(int(9e9)) == []
    f.select([v("b", 3)], int(5e9))
    assert f.expired(int(10e9)) == ["a"]
    assert [c[:2] for c in f.refresh([v("a", 1)], int(10e9))] == [("a", 1)]
    assert f.expired(int(14e9)) == [] and sorted(f.expired(int(20e9))) == ["a", "b"]
