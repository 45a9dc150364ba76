"""Which Dagster runs a trigger request's stage needs, with which tags, and what their statuses mean.

The partition tags come from the jobs' own partitions definitions (``get_tags_for_partition_key``):
a heatmap run needs ``dagster/partition/date`` and ``dagster/partition/level`` as well as
``dagster/partition``, or ``context.partition_key.keys_by_dimension`` fails inside the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.defs.partitions import date_partitions, heatmap_partitions
from heatmap_pipeline.orchestration import ETL_JOB, FAILED, HEATMAP_JOB, REQUEST_TAG, REQUESTER_TAG, SUCCESS, TRIGGER_TAG
from heatmap_pipeline.settings import Settings



@dataclass(frozen=True)
class PlannedRun:
    slot: str  # key in the request's run_ids: "etl" or "heatmap:<level>"
    job_name: str
    partition_key: str
    partition_tags: dict[str, str]

    def tags(self, request: TriggerRequest, launcher: str) -> dict[str, str]:
        tags = {REQUEST_TAG: request.id, TRIGGER_TAG: launcher, **self.partition_tags}
        if request.requester:
            tags[REQUESTER_TAG] = request.requester
        return tags

    def run_key(self, request: TriggerRequest) -> str:
        """Sensor run key: Dagster never launches the same key twice, so a re-yielded request is a no-op."""
        return f"admin_request:{request.id}:{self.slot}"


def stage_runs(settings: Settings, request: TriggerRequest, stage: str | None = None) -> list[PlannedRun]:
    stage = stage or request.stage
    day = request.date.isoformat()
    if stage == "etl":
        return [PlannedRun("etl", ETL_JOB, day, dict(date_partitions(settings).get_tags_for_partition_key(day)))]
    partitions = heatmap_partitions(settings)
    runs = []
    for level in request.levels:
        key = str(dg.MultiPartitionKey({"date": day, "level": level}))
        runs.append(PlannedRun(f"heatmap:{level}", HEATMAP_JOB, key, dict(partitions.get_tags_for_partition_key(key))))
    return runs


def stage_outcome(statuses: dict[str, str | None]) -> tuple[str, list[str]]:
    """('running' | 'success' | 'failure', slots that failed). A stage ends when all its runs have ended,
    so a failed heatmap level does not hide the results of the others."""
    if any(status not in (SUCCESS, *FAILED, None) for status in statuses.values()):
        return "running", []
    failed = sorted(slot for slot, status in statuses.items() if status != SUCCESS)
    return ("failure" if failed else "success"), failed


def failure_message(
    planned: list[PlannedRun], request: TriggerRequest, failed: list[str], ui_url: str,
    reasons: dict[str, str | None] | None = None,
) -> str:
    """Which runs failed, why (``reasons``: slot -> what their failed steps said) and where to look."""
    by_slot = {run.slot: run for run in planned}
    parts = []
    for slot in failed:
        run_id = request.run_ids.get(slot)
        status = request.run_statuses.get(slot) or "NOT FOUND"
        reason = (reasons or {}).get(slot)
        parts.append(f"{by_slot[slot].job_name} run {run_id} (partition {by_slot[slot].partition_key}) ended {status}"
                     f"{f': {reason}' if reason else ''}; see {ui_url}/runs/{run_id}")
    return "; ".join(parts)
