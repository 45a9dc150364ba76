"""The ``admin_trigger_requests`` table: recording a request and moving it through its states.

A request runs its stages in order (``etl``, then ``heatmap``). For the current stage it is:

    pending --claim--> launching --mark_launched--> launched --advance--> pending (next stage)
                         |  |  release (webserver unreachable)             `--finish--> done | error
                         |  `--------> pending
                         `--add_etl--> launching (stage etl)

``add_etl``: a heatmap-only request whose day Dagster does not report as loaded gets the ETL stage
first (launcher.etl_first_if_needed); ``etl_reason`` records why, and ``stages`` includes it.

Every transition is one conditional UPDATE checked by its rowcount, so whoever launches a stage
(the endpoint or ``admin_trigger_sensor``) has won the claim first: a stage is launched once.
No Dagster here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.trigger.validation import TriggerSpec
from heatmap_pipeline.warehouse.tables import admin_trigger_requests as table

ACTIVE = ("pending", "launching", "launched")
TERMINAL = ("done", "error")


@dataclass
class TriggerRequest:
    id: str
    tasks: list[str]
    levels: list[str]
    date: dt.date
    state: str
    stage: str
    run_ids: dict[str, str] = field(default_factory=dict)
    run_statuses: dict[str, str] = field(default_factory=dict)
    launched_by: str | None = None
    requester: str | None = None
    error: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    etl_reason: str | None = None  # set when the ETL was added to a heatmap-only request: why

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def stages(self) -> list[str]:
        """The stages it runs, in order: its tasks, after the added ETL if any."""
        return ["etl", *self.tasks] if self.etl_reason and "etl" not in self.tasks else list(self.tasks)

    def next_stage(self) -> str | None:
        later = self.stages[self.stages.index(self.stage) + 1:]
        return later[0] if later else None


def _row(row) -> TriggerRequest:
    data = dict(row._mapping)
    data["run_ids"] = dict(data["run_ids"] or {})
    data["run_statuses"] = dict(data["run_statuses"] or {})
    data["tasks"], data["levels"] = list(data["tasks"]), list(data["levels"])
    return TriggerRequest(**data)


def create_request(engine: sa.Engine, spec: TriggerSpec, requester: str | None) -> TriggerRequest:
    now = utcnow()
    values = dict(
        id=str(uuid.uuid4()), tasks=list(spec.tasks), levels=list(spec.levels), date=spec.date, state="pending",
        stage=spec.tasks[0], run_ids={}, run_statuses={}, requester=(requester or "")[:128] or None, created_at=now, updated_at=now,
    )
    with engine.begin() as conn:
        conn.execute(table.insert().values(**values))
    return TriggerRequest(**values)


def get_request(engine: sa.Engine, request_id: str) -> TriggerRequest | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == request_id)).first()
    return _row(row) if row else None


def active_requests(engine: sa.Engine, limit: int = 100) -> list[TriggerRequest]:
    """Oldest first, so a backlog drains in arrival order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.state.in_(ACTIVE)).order_by(table.c.created_at).limit(limit)
        ).all()
    return [_row(row) for row in rows]


def _transition(engine: sa.Engine, request_id: str, expect: dict, **values) -> bool:
    conditions = [table.c.id == request_id] + [table.c[name] == value for name, value in expect.items()]
    with engine.begin() as conn:
        result = conn.execute(table.update().where(*conditions).values(updated_at=utcnow(), **values))
    return result.rowcount == 1


def claim(engine: sa.Engine, request_id: str, stage: str, by: str) -> bool:
    """pending -> launching for ``stage``; True only for the one caller that won."""
    return _transition(engine, request_id, {"state": "pending", "stage": stage}, state="launching", launched_by=by)


def take_over(engine: sa.Engine, request: TriggerRequest, by: str) -> bool:
    """A claim left in 'launching' (its launcher died): take it, if nobody touched it since we read it."""
    return _transition(
        engine, request.id, {"state": "launching", "stage": request.stage, "updated_at": request.updated_at},
        launched_by=by,
    )


def release(engine: sa.Engine, request: TriggerRequest, launched: dict[str, str]) -> bool:
    """launching -> pending: the launcher lost Dagster midway. Runs it did launch are kept, so
    whoever claims the stage next launches only the rest."""
    return _transition(
        engine, request.id, {"state": "launching", "stage": request.stage},
        state="pending", launched_by=None, run_ids={**request.run_ids, **launched},
    )


def mark_launched(engine: sa.Engine, request: TriggerRequest, run_ids: dict[str, str]) -> bool:
    merged = {**request.run_ids, **run_ids}
    return _transition(engine, request.id, {"state": "launching", "stage": request.stage}, state="launched", run_ids=merged)


def add_etl(engine: sa.Engine, request: TriggerRequest, reason: str) -> bool:
    """launching (heatmap) -> launching (etl), by the launcher holding the claim: the day is not
    loaded, so its ETL runs first and the heatmaps after it (``stages``)."""
    return _transition(
        engine, request.id, {"state": "launching", "stage": "heatmap", "launched_by": request.launched_by},
        stage="etl", etl_reason=reason,
    )


def advance(engine: sa.Engine, request: TriggerRequest, next_stage: str) -> bool:
    """launched -> pending for the next stage, once every run of this stage succeeded."""
    return _transition(engine, request.id, {"state": "launched", "stage": request.stage}, state="pending", stage=next_stage, launched_by=None)


def record_statuses(engine: sa.Engine, request: TriggerRequest, statuses: dict[str, str]) -> None:
    """Remember the last status seen of each run (for answers while Dagster is unreachable)."""
    if statuses and {**request.run_statuses, **statuses} != request.run_statuses:
        request.run_statuses = {**request.run_statuses, **statuses}
        with engine.begin() as conn:
            conn.execute(table.update().where(table.c.id == request.id).values(run_statuses=request.run_statuses))


def finish(engine: sa.Engine, request: TriggerRequest, error: str | None = None, launched: dict[str, str] | None = None) -> bool:
    """launched (or launching, when Dagster refused the launch) -> done | error."""
    state = "error" if error else "done"
    return _transition(
        engine, request.id, {"state": request.state, "stage": request.stage},
        state=state, error=error, finished_at=utcnow(), run_ids={**request.run_ids, **(launched or {})},
    )
