"""The Dagster instance of the embedded default: DAGSTER_HOME and its dagster.yaml."""

from __future__ import annotations

from pathlib import Path

# The old scheduler ran with max_instances=1 and coalesce=True. Here:
# - concurrency.runs: at most one queued-or-running run per partition key (dagster/partition
#   tag), so two runs of the same job and partition never overlap, whoever launched them;
# - scheduler.max_catchup_runs: 1, so ticks missed while the daemon was down collapse into one.
# The production instance (PostgreSQL, Celery workers) is deploy/dagster.yaml.
DAGSTER_YAML = """\
# Written by `heatmap-pipeline dev`; edit freely, it is not overwritten.
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: "dagster/partition"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
scheduler:
  module: dagster._core.scheduler
  class: DagsterDaemonScheduler
  config:
    max_catchup_runs: 1
telemetry:
  enabled: false
"""


# What earlier versions wrote, on the legacy ``run_queue:`` key. A file still holding exactly
# this text was never edited, so it is replaced by DAGSTER_YAML; an edited one is left alone.
_LEGACY_DAGSTER_YAML = DAGSTER_YAML.replace(
    """concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: "dagster/partition"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
""",
    """run_queue:
  max_concurrent_runs: 4
  tag_concurrency_limits:
    - key: "dagster/partition"
      value:
        applyLimitPerUniqueValue: true
      limit: 1
""",
)


def prepare_dagster_home(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with our dagster.yaml unless one is already there (an unedited one
    of an earlier version, on the legacy run_queue key, is brought up to date)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() == _LEGACY_DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)
    return dagster_home
