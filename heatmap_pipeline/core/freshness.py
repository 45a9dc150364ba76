"""How old today's partition may be before it counts as stale. No Dagster here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Freshness:
    fresh: bool
    age_minutes: float | None  # since the last update today; None when never updated today
    limit_minutes: float
    description: str


def todays_freshness(
    what: str, now: dt.datetime, last_update: dt.datetime | None, interval_minutes: int
) -> Freshness:
    """Fresh when ``what`` was updated within twice its refresh interval (all naive UTC).

    A day's first refresh is allowed the same grace after midnight: just after 00:00 nothing of
    today exists yet, and that is not stale.
    """
    limit = 2 * interval_minutes
    midnight = dt.datetime.combine(now.date(), dt.time.min)
    if last_update is None or last_update < midnight:
        waited = (now - midnight).total_seconds() / 60
        fresh = waited <= limit
        state = "not due yet" if fresh else "STALE"
        return Freshness(fresh, None, limit, f"{what}: not updated yet today ({waited:.0f} min after midnight, "
                         f"limit {limit} min): {state}")
    age = (now - last_update).total_seconds() / 60
    fresh = age <= limit
    return Freshness(fresh, age, limit, f"{what}: updated {age:.1f} min ago (limit {limit} min, twice the "
                     f"interval){'' if fresh else ': STALE'}")
