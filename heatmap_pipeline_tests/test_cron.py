import datetime as dt

import pytest
from dagster._utils.schedules import cron_string_iterator

from heatmap_pipeline.core.cron import interval_cron_schedules, is_first_tick_of_day


def ticks_of_day(minutes: int) -> list[dt.time]:
    """Every fire time in one UTC day, computed by Dagster's own cron iterator."""
    start = dt.datetime(2025, 11, 16, tzinfo=dt.timezone.utc).timestamp() - 1
    times = set()
    for cron in interval_cron_schedules(minutes):
        for moment in cron_string_iterator(start, cron, "UTC"):
            if moment.date() != dt.date(2025, 11, 16):
                break
            times.add(moment.time())
    return sorted(times)


@pytest.mark.parametrize("minutes", [1, 5, 7, 15, 30, 45, 60, 90, 120, 1000, 1440])
def test_cron_fires_every_n_minutes_from_midnight(minutes):
    expected = [dt.time(t // 60, t % 60) for t in range(0, 1440, minutes)]
    assert ticks_of_day(minutes) == expected


def test_simple_intervals_stay_readable():
    assert interval_cron_schedules(15) == ["*/15 * * * *"]
    assert interval_cron_schedules(60) == ["0 * * * *"]
    assert interval_cron_schedules(1440) == ["0 0 * * *"]


@pytest.mark.parametrize("bad", [0, -1, 1441])
def test_out_of_range_interval_is_refused(bad):
    with pytest.raises(ValueError):
        interval_cron_schedules(bad)


def test_first_tick_of_day():
    assert is_first_tick_of_day(dt.datetime(2025, 11, 16, 0, 0), 15)
    assert is_first_tick_of_day(dt.datetime(2025, 11, 16, 0, 10), 15)
    assert not is_first_tick_of_day(dt.datetime(2025, 11, 16, 0, 15), 15)
