"""``run_failure_sensor``: every failed run is logged at ERROR with its partition and reason, and
POSTed as JSON to RUN_FAILURE_WEBHOOK_URL when that is set (Slack-style incoming webhooks, an
alert manager, a chat bridge).

The old runner only logged a failed job; Dagster records the failure in the run, and this sensor
makes it reach a person. It runs in the daemon, so it sees runs however they were launched.
"""

from __future__ import annotations

import logging

import dagster as dg
import httpx

from heatmap_pipeline.orchestration import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG, PARTITION_TAG, TRIGGER_TAG
from heatmap_pipeline.settings import Settings

SENSOR = "run_failure_sensor"
log = logging.getLogger("heatmap_pipeline.alerts")
WEBHOOK_TIMEOUT_SECONDS = 10.0


def run_partition(tags: dict[str, str]) -> str:
    """The run's partition key, its range (``first...last``) for a single-run backfill, or ``-``."""
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    if PARTITION_RANGE_START_TAG in tags:
        return f"{tags[PARTITION_RANGE_START_TAG]}...{tags.get(PARTITION_RANGE_END_TAG, '')}"
    return "-"


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """What failed: each failed step with its error's first line, else the run's own failure message."""
    reasons = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        first_line = (error.message.strip().splitlines() or [""])[0] if error else ""
        reasons.append(f"step {event.step_key}: {first_line}".strip())
    return "; ".join(reasons) or (context.failure_event.message or "run failed")


def failure_message(context: dg.RunFailureSensorContext, ui_url: str) -> dict:
    run = context.dagster_run
    return {
        "text": f"Dagster run failed: {run.job_name} partition {run_partition(run.tags)}: {failure_reason(context)}",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run_partition(run.tags),
        "trigger": run.tags.get(TRIGGER_TAG, run.tags.get("dagster/schedule_name", run.tags.get("dagster/sensor_name", "manual"))),
        "reason": failure_reason(context),
        "run_url": f"{ui_url}/runs/{run.run_id}",
    }


def build_run_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    ui_url = settings.dagster_graphql_url.rsplit("/graphql", 1)[0]

    @dg.run_failure_sensor(
        name=SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Logs every failed run at ERROR (job, partition, reason) and POSTs it to "
        "RUN_FAILURE_WEBHOOK_URL when that is set.",
    )
    def run_failure_sensor(context: dg.RunFailureSensorContext):
        message = failure_message(context, ui_url)
        line = f"run {message['run_id']} of {message['job']} failed: partition {message['partition']}: {message['reason']}"
        log.error(line)
        context.log.error(line)
        if not settings.run_failure_webhook_url:
            return
        try:
            response = httpx.post(settings.run_failure_webhook_url, json=message, timeout=WEBHOOK_TIMEOUT_SECONDS)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            # Not raised: a failed tick would not resend this run's alert either, and the run's
            # failure is already logged above. The URL is left out (it may hold a token).
            context.log.warning(f"RUN_FAILURE_WEBHOOK_URL did not accept the alert for run {message['run_id']}: "
                                f"{type(exc).__name__}")

    return run_failure_sensor
