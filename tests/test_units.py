"""The one time-unit table: every spelling converts the same way, and unknown units are named."""

from __future__ import annotations

import pytest

from medsim.policies.protocol import units_per_hour as protocol_units_per_hour
from medsim.policies.spec import SpecError
from medsim.policies.spec import convert_time as spec_convert_time
from medsim.units import UnknownTimeUnitError, convert_time, units_per_hour


@pytest.mark.parametrize(
    ("unit", "per_hour"),
    [("min", 60.0), ("minutes", 60.0), ("h", 1.0), ("hours", 1.0), ("d", 1 / 24), ("days", 1 / 24)],
)
def test_units_per_hour(unit, per_hour):
    assert units_per_hour(unit) == pytest.approx(per_hour, rel=1e-15)
    assert protocol_units_per_hour is units_per_hour


def test_a_day_is_1440_minutes_and_24_hours():
    assert convert_time(1, "d", "min") == 1440.0 and convert_time(1, "day", "h") == 24.0
    assert convert_time(90, "min", "h") == 1.5


def test_unknown_units_are_named():
    with pytest.raises(UnknownTimeUnitError, match="'fortnight'"):
        convert_time(1, "fortnight", "h")
    with pytest.raises(SpecError, match="horizon: unknown time unit 'weeks'"):
        spec_convert_time(1, "weeks", "h", where="horizon")
