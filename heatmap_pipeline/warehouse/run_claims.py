"""One in-flight run per job and partition, across processes: the ``run_claims`` table.

Every launcher of ``etl_job`` and ``heatmap_job`` partitions (the admin API, ``admin_trigger_sensor``,
``etl_schedule``) calls :func:`claim_run` before it launches. In one transaction per attempt
it inserts the (job, partition) row, or reads the row another launcher holds:

* no row, or a row whose run has ended (or was never launched within ``LAUNCH_GRACE``): the
  caller takes it (an INSERT, or an UPDATE conditional on the old holder: of two callers, the
  database lets exactly one win) and launches, tagging the run with its token (``CLAIM_TAG``);
* a row whose run is queued or running: the caller shares that run;
* a row taken moments ago whose run does not exist yet (its holder is launching it): the caller
  tries again shortly (``LAUNCHING``).

A lock in one process cannot do this: the admin API and the daemon's sensor are two processes,
and a deployment may run several admin APIs. Which run a claim names, and whether it is still in
flight, is asked through ``run_of`` (the Dagster instance or its GraphQL API): no Dagster here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.warehouse.tables import run_claims as table

WON, SHARED, LAUNCHING = "won", "shared", "launching"
# A claim whose run does not exist this long after it was taken: its holder died before launching.
LAUNCH_GRACE = dt.timedelta(seconds=60)
_ATTEMPTS = 10

RunOf = Callable[[str, str | None], "tuple[str, bool] | None"]  # (claim, run id) -> (run id, in flight) | None


@dataclass(frozen=True)
class Claim:
    outcome: str  # WON: launch (or adopt run_id); SHARED: use run_id; LAUNCHING: ask again shortly
    claim: str  # the token of the row's holder
    run_id: str | None = None


def claim_run(engine: sa.Engine, job_name: str, partition_key: str, claim: str, claimed_by: str, run_of: RunOf,
              now: dt.datetime | None = None) -> Claim:
    """Take (job, partition) for ``claim``, or say which run or launcher has it (module docstring).

    Taking it again with the same token is allowed (a launcher retrying): WON, with the run id
    when that run exists already."""
    key = (table.c.job_name == job_name) & (table.c.partition_key == partition_key)
    for _ in range(_ATTEMPTS):
        moment = now or utcnow()
        with engine.connect() as conn:
            row = conn.execute(sa.select(table).where(key)).first()
        if row is None:
            try:
                with engine.begin() as conn:
                    conn.execute(table.insert().values(job_name=job_name, partition_key=partition_key, claim=claim,
                                                       claimed_by=claimed_by, run_id=None, claimed_at=moment))
                return Claim(WON, claim)
            except sa.exc.IntegrityError:
                continue  # another launcher inserted it first: read theirs
        run = run_of(row.claim, row.run_id)
        if row.claim == claim:
            return Claim(WON, claim, run[0] if run else None)
        if run is not None and run[1]:
            return Claim(SHARED, row.claim, run[0])
        if run is None and moment - row.claimed_at < LAUNCH_GRACE:
            return Claim(LAUNCHING, row.claim)
        # Its run ended, or its holder never launched one: take it over, unless someone else just did.
        with engine.begin() as conn:
            taken = conn.execute(table.update().where(key & (table.c.claim == row.claim)).values(
                claim=claim, claimed_by=claimed_by, run_id=None, claimed_at=moment)).rowcount
        if taken == 1:
            return Claim(WON, claim)
    raise RuntimeError(f"could not claim {job_name} {partition_key} in {_ATTEMPTS} attempts: launchers keep taking it")


def record_run(engine: sa.Engine, job_name: str, partition_key: str, claim: str, run_id: str) -> None:
    """The holder of ``claim`` names its run (launched, or an unclaimed in-flight run it shares)."""
    with engine.begin() as conn:
        conn.execute(table.update().where(
            (table.c.job_name == job_name) & (table.c.partition_key == partition_key) & (table.c.claim == claim)
        ).values(run_id=run_id))


def release(engine: sa.Engine, job_name: str, partition_key: str, claim: str) -> None:
    """Give a claim back without a run (the launch failed): others may take it at once."""
    with engine.begin() as conn:
        conn.execute(table.delete().where(
            (table.c.job_name == job_name) & (table.c.partition_key == partition_key) & (table.c.claim == claim)
            & table.c.run_id.is_(None)
        ))
