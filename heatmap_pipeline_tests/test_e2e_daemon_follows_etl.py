"""The real daemon with both intervals at 1 minute on a fresh data directory: today's heatmaps never run
ahead of the ETL, and each equals the positions of the ETL load it names (which finished before it).

`heatmap-pipeline dev` runs until the heatmaps of a tick have followed that tick's ETL and finished
(about 2 minutes: start-up, the next whole minute, its ETL, then its heatmaps), at most
HEATMAP_DAEMON_TEST_SECONDS (default 240), with the partitions starting today. For the 5-minute run of
issue 10: `python -m heatmap_pipeline_tests.daemon_follow --seconds 300`.
"""

import datetime as dt
import os

import pytest

from heatmap_pipeline_tests.daemon_follow import follow


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_todays_heatmaps_follow_the_etl_under_the_real_daemon(tmp_path):
    # The demo's week is cut to today, so its first fill does not hold the run queue for minutes.
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    verdict = follow(float(os.environ.get("HEATMAP_DAEMON_TEST_SECONDS", "240")), tmp_path / "data",
                     {"PARTITION_START_DATE": today}, stop_once_followed=True)
    log = (tmp_path / "data" / "dev.log").read_text()[-3000:]
    assert verdict.etl_loads >= 1, log
    assert verdict.heatmaps >= 1, log  # at least one tick's heatmaps came after an ETL
    assert verdict.heatmaps_of_a_scheduled_load >= 1, log  # ... after the ETL of a schedule tick, not only the demo's fill
    assert verdict.heatmaps_before_first_etl == []
    assert verdict.mismatches == []
