"""Every-N-minutes intervals as cron strings, and the tick arithmetic schedules need. No Dagster here."""

from __future__ import annotations

import datetime as dt


def interval_cron_schedules(minutes: int) -> list[str]:
    """Cron strings firing every ``minutes`` minutes of the UTC day, counted from midnight.

    Dagster takes a list of cron strings. Intervals that divide an hour or a day give one
    string; others (e.g. 7) list each hour's minutes, and the count restarts at midnight, so
    the last gap of a day may be shorter.
    """
    if not 1 <= minutes <= 1440:
        raise ValueError(f"interval must be 1 to 1440 minutes, got {minutes}")
    if minutes < 60 and 60 % minutes == 0:
        return [f"*/{minutes} * * * *" if minutes > 1 else "* * * * *"]
    if minutes % 60 == 0 and 1440 % minutes == 0:
        hours = minutes // 60
        return ["0 * * * *" if hours == 1 else "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"]
    # group hours that share the same minute list, so the output stays short
    per_hour: dict[int, list[int]] = {}
    for tick in range(0, 1440, minutes):
        hour, minute = divmod(tick, 60)
        per_hour.setdefault(hour, []).append(minute)
    grouped: dict[tuple[int, ...], list[int]] = {}
    for hour, mins in per_hour.items():
        grouped.setdefault(tuple(mins), []).append(hour)
    return [
        f"{','.join(map(str, mins))} {','.join(map(str, hours))} * * *"
        for mins, hours in sorted(grouped.items(), key=lambda item: item[1][0])
    ]


def is_first_tick_of_day(tick: dt.datetime, minutes: int) -> bool:
    """True when the previous tick of an every-``minutes`` schedule fell on the previous UTC day."""
    start_of_day = tick.replace(hour=0, minute=0, second=0, microsecond=0)
    return tick - start_of_day < dt.timedelta(minutes=minutes)
