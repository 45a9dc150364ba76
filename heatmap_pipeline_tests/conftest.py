"""Fixtures: a fresh SQLite file or a fresh PostgreSQL database per test, and a Dagster instance.

PostgreSQL tests use the real server at HEATMAP_TEST_POSTGRES_URL (default: the local trust
server). Without it they skip and say why - unless CI=true or HEATMAP_REQUIRE_POSTGRES=1,
where a missing server fails the run instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

ADMIN_POSTGRES_URL = os.environ.get("HEATMAP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("CI", "").lower() == "true" or os.environ.get("HEATMAP_REQUIRE_POSTGRES") == "1"


def _postgres_unavailable_reason() -> str | None:
    try:
        engine = sa.create_engine(ADMIN_POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"PostgreSQL not reachable at {ADMIN_POSTGRES_URL}: {type(exc).__name__}: {str(exc).splitlines()[0]}"


_PG_REASON: list[str | None] = []


def postgres_reason() -> str | None:
    if not _PG_REASON:
        _PG_REASON.append(_postgres_unavailable_reason())
    return _PG_REASON[0]


def require_postgres() -> None:
    """Skip the calling test without a PostgreSQL server, saying why; fail instead where it is required."""
    reason = postgres_reason()
    if reason:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (required: CI=true or HEATMAP_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)


def pytest_xdist_auto_num_workers(config):
    """Workers for ``-n auto`` (addopts): two for a run of the suite (or of part of it by -m or -k); none,
    one process, when pytest is given test files or node ids, where a second worker only adds its start-up.
    Not three: a fresh clone's suite took 5 min 54 s and 6 min 46 s with three (6 min 51 s with two), but a
    third run failed test_production's wait for a daemon sensor run (60 s) on the busier cores."""
    targeted = any(Path(arg.split("::", 1)[0]).is_file() for arg in config.args)
    return 0 if targeted else 2


def pytest_collection_modifyitems(config, items):
    """Modules with a slow test run first, the others after them, each group in file order.

    pytest-xdist (addopts: ``-n auto --dist loadfile --no-loadscope-reorder``) hands out whole modules
    in this order: the long end-to-end modules start at once on the workers and the many short
    modules fill the gaps at the end, instead of one worker finishing a 2-minute test alone."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)  # a stable sort: file order otherwise


@pytest.fixture(autouse=True)
def fresh_settings():
    """get_settings() caches the environment it read; tests change the environment (monkeypatch)."""
    from heatmap_pipeline.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def no_dagster_instance_left_current():
    """Each test starts with no "current" Dagster instance storage, and leaves none behind.

    Entering a DagsterInstance makes its defs-state storage current (a context variable). Dagster's
    test contexts (``build_schedule_context`` used without ``with``) enter an instance from its ref and
    never exit it; once that instance is garbage-collected, the next test that resolves a job with an
    in-memory instance fails with "Attempted to resolve undefined DagsterInstance weakref"."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'game.sqlite'}"


@contextlib.contextmanager
def postgres_database(create_options: str = ""):
    """A brand-new PostgreSQL database (its URL), dropped afterwards, even while servers still use it.

    ``create_options``: appended to CREATE DATABASE (e.g. an encoding)."""
    require_postgres()
    name = f"hp_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(ADMIN_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" {create_options}'))
    url = sa.engine.make_url(ADMIN_POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from heatmap_pipeline.warehouse.db import get_engine

        get_engine.cache_clear()  # close pooled connections before dropping
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url():
    """A brand-new PostgreSQL database for this test, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request):
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def instance(request):
    """A Dagster instance for the test: persistent (temporary directory) by default; a module that
    sets ``USE_MEMORY_INSTANCE = True`` gets a real in-memory one, whose runs are several times faster."""
    if getattr(request.module, "USE_MEMORY_INSTANCE", False):
        yield dg.DagsterInstance.ephemeral()
        return
    with dg.instance_for_test() as inst:
        yield inst
