"""The quick benchmark (100k events, PostgreSQL and SQLite) runs as CI's smoke check.

It is run exactly as a person would run it, in a subprocess; the test asserts its exit status
and that it reports matching matrices - never any wall-clock number (the script itself checks
that the heatmaps are clearly faster than the old approach, and exits non-zero if not).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heatmap_pipeline_tests.conftest import ADMIN_POSTGRES_URL, require_postgres

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_benchmark_runs_and_reports_matching_matrices():
    require_postgres()
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--admin-url", ADMIN_POSTGRES_URL],
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "MATRICES MATCH" in done.stdout, output[-4000:]
    assert "MISMATCH" not in done.stdout
    # both databases ran, with all three phases the issue asks for
    for db in ("postgresql", "sqlite"):
        for phase in ("etl", "heatmaps", "floor_read", "reference"):
            assert f"| {db} | 100k | {phase} |" in done.stdout, output[-4000:]


def test_benchmark_exits_non_zero_on_a_mismatch(tmp_path):
    """The mismatch check itself: a doctored reference must fail the run (pure function, no database)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.pop(0)
    import numpy as np

    good = {level: (np.ones((2, 2)), [0.0, 1.0, 0.0, 1.0]) for level in bench.LEVELS}
    bad = dict(good, **{"2": (np.array([[1.0, 1.0], [1.0, 2.0]]), [0.0, 1.0, 0.0, 1.0])})
    assert bench.compare_matrices(good, good) == []
    assert bench.compare_matrices(good, bad) == ["2"]
    shifted = dict(good, **{"3": (np.ones((2, 2)), [0.0, 1.0, 0.0, 1.5])})
    assert bench.compare_matrices(good, shifted) == ["3"]
