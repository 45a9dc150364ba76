"""Moving a trigger request forward: launch its current stage, watch its runs, go to the next stage.

:func:`drive` does one step through the Dagster GraphQL API (the admin API's side);
``admin_trigger_sensor`` does the same steps from the daemon with the instance (sensors.py).
Both claim the request's stage before launching (store.py), and each run's job and partition in
the database (warehouse/run_claims.py: one in-flight run per job and partition, whichever process
launches), both put the ETL before a heatmap-only request whose day is not loaded (:func:`etl_first_if_needed`) and both use :func:`settle_stage` once runs exist.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

import anyio.to_thread
import sqlalchemy as sa

from heatmap_pipeline.orchestration import CLAIM_TAG, etl_needed_because
from heatmap_pipeline.trigger import store
from heatmap_pipeline.trigger.graphql import DagsterGraphQL, DagsterRejected, DagsterUnreachable
from heatmap_pipeline.trigger.plan import PlannedRun, failure_message, stage_outcome, stage_runs
from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import run_claims

log = logging.getLogger("heatmap_pipeline.admin")
ENDPOINT = "admin_api"
BACKGROUND_DRIVE_SECONDS = 6 * 3600  # after that, admin_trigger_sensor alone moves the request on
DRIVE_POLL_SECONDS = 0.5  # between two steps of one request, while its runs are in flight
MAX_DRIVE_STEPS_PER_SECOND = 100  # across every request this process drives (see RequestDrivers._poll_seconds)


def etl_first_if_needed(
    engine: sa.Engine, request: TriggerRequest, status_of: Callable[[str], str | None]
) -> TriggerRequest:
    """For a just claimed heatmap stage of a request without ETL: ask Dagster (``status_of``: day ->
    game_events partition status) whether the day is loaded; if not, put its ETL stage first.

    Asked once, before any heatmap run of the request exists: never after its heatmaps launched."""
    if request.stage != "heatmap" or "etl" in request.stages or any(slot.startswith("heatmap:") for slot in request.run_ids):
        return request
    day = request.date.isoformat()
    reason = etl_needed_because(day, status_of(day))
    if reason is None or not store.add_etl(engine, request, reason):
        return request
    log.info(f"request {request.id}: running etl_job {day} before the heatmaps: {reason}")
    return store.get_request(engine, request.id)


def settle_stage(
    engine: sa.Engine,
    settings: Settings,
    request: TriggerRequest,
    statuses_of: Callable[[list[str]], dict[str, str]],
    ui_url: str,
    failure_of: Callable[[str], str | None] = lambda _run_id: None,
) -> str:
    """For a 'launched' request: read its runs' statuses; when all ended, finish or advance.

    ``failure_of`` (run id -> what its failed steps said) makes the error say why a run failed.
    Returns the stage outcome ('running', 'success' or 'failure')."""
    planned = stage_runs(settings, request)
    slots = {run.slot: request.run_ids.get(run.slot) for run in planned}
    by_id = statuses_of([run_id for run_id in slots.values() if run_id])
    statuses = {slot: by_id.get(run_id) if run_id else None for slot, run_id in slots.items()}
    store.record_statuses(engine, request, {slot: status for slot, status in statuses.items() if status})
    outcome, failed = stage_outcome(statuses)
    if outcome == "failure":
        reasons = {slot: failure_of(slots[slot]) for slot in failed if slots[slot]}
        store.finish(engine, request, error=failure_message(planned, request, failed, ui_url, reasons))
    elif outcome == "success":
        following = request.next_stage()
        if following:
            store.advance(engine, request, following)
        else:
            store.finish(engine, request)
    return outcome


def _claimed_launch(engine: sa.Engine, dagster: DagsterGraphQL, request: TriggerRequest, run: PlannedRun) -> str | None:
    """The run id for one slot: launched under a run_claims claim, or the in-flight run of its job
    and partition that another launcher holds; None while another launcher is launching it."""
    token = run.run_key(request)  # the sensor's run key too: a request slot holds one claim, whoever launches
    claim = run_claims.claim_run(engine, run.job_name, run.partition_key, token, ENDPOINT, dagster.claimed_run)
    if claim.outcome == run_claims.SHARED:
        log.info(f"request {request.id}: {run.job_name} {run.partition_key} shares queued/running run {claim.run_id}")
        return claim.run_id
    if claim.outcome == run_claims.LAUNCHING or claim.run_id:
        return claim.run_id  # None: try again on the next step; a run id: this slot launched it before
    try:
        # A run launched without a claim (Declarative Automation, the UI, a backfill) is shared too.
        run_id = dagster.in_flight_run(run.job_name, run.partition_key) or dagster.launch_run(
            run.job_name, {**run.tags(request, ENDPOINT), CLAIM_TAG: token})
    except DagsterRejected:
        run_claims.release(engine, run.job_name, run.partition_key, token)
        raise
    run_claims.record_run(engine, run.job_name, run.partition_key, token, run_id)
    return run_id


def _launch_stage(engine: sa.Engine, settings: Settings, dagster: DagsterGraphQL, request: TriggerRequest) -> None:
    """Launch (or share) every run of the claimed stage; on losing Dagster, or while another
    launcher is launching one of its partitions, hand the claim back (pending) and try again later."""
    launched: dict[str, str] = {}
    started = time.monotonic()
    waiting = []
    try:
        request = etl_first_if_needed(engine, request, dagster.game_events_status)
        for run in stage_runs(settings, request):
            if run.slot in request.run_ids:  # launched before a previous launcher lost Dagster
                continue
            run_id = _claimed_launch(engine, dagster, request, run)
            if run_id:
                launched[run.slot] = run_id
            else:
                waiting.append(f"{run.job_name} {run.partition_key}")
    except DagsterUnreachable as exc:
        store.release(engine, request, launched)
        log.warning(f"request {request.id}: {exc}; left pending for admin_trigger_sensor")
        return
    except DagsterRejected as exc:
        store.finish(engine, request, error=str(exc), launched=launched)
        log.error(f"request {request.id}: {exc}")
        return
    if waiting:
        store.release(engine, request, launched)
        log.info(f"request {request.id}: another launcher is launching {', '.join(waiting)}; sharing it on the next step")
        return
    store.mark_launched(engine, request, launched)
    log.info(f"request {request.id}: stage {request.stage} launched {launched} in {time.monotonic() - started:.2f}s")


def drive(engine: sa.Engine, settings: Settings, dagster: DagsterGraphQL, request_id: str) -> TriggerRequest | None:
    """One step forward through GraphQL. Safe to call any number of times, from any process."""
    request = store.get_request(engine, request_id)
    if request is None or request.finished:
        return request
    if request.state == "launched":
        try:
            settle_stage(engine, settings, request, dagster.run_statuses, dagster.ui_url, dagster.run_failure_reason)
        except (DagsterUnreachable, DagsterRejected) as exc:
            log.warning(f"request {request.id}: cannot read run statuses yet: {exc}")
        request = store.get_request(engine, request_id)
    # Pending: just created, or its ETL has just succeeded and the heatmaps are due now.
    if request.state == "pending" and store.claim(engine, request.id, request.stage, ENDPOINT):
        _launch_stage(engine, settings, dagster, store.get_request(engine, request.id))
    return store.get_request(engine, request_id)


def drive_until_finished(
    engine: sa.Engine,
    settings: Settings,
    dagster: DagsterGraphQL,
    request_id: str,
    timeout: float,
    stop: threading.Event | None = None,
    poll: float = DRIVE_POLL_SECONDS,
    unreachable_poll: float = 3.0,
) -> TriggerRequest | None:
    """Drive until the request finishes, ``timeout`` seconds pass or ``stop`` is set; returns its latest state."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        request = drive(engine, settings, dagster, request_id)
        remaining = deadline - time.monotonic()
        if request is None or request.finished or remaining <= 0 or stop.is_set():
            return request
        # Still pending after drive() means Dagster was unreachable: retry less often.
        stop.wait(min(unreachable_poll if request.state == "pending" else poll, remaining))


class RequestDrivers:
    """Drives the admin API's requests, each in a background thread of its own until it finishes or
    ``background_seconds`` pass.

    A caller that waits for the answer (:meth:`answer`) holds no thread while it waits: it awaits
    a future that the request's background driver resolves when it returns, so any number of
    waiters leave the server's worker threads free (``/healthz``, the status endpoint). The more
    requests are driven at once, the less often each one polls Dagster (:meth:`_poll_seconds`).

    ``stop`` is set at shutdown: waiting callers answer at once and background drivers stop after
    their current step, so no claim is left half-done by a dying process.
    """

    def __init__(self, engine: sa.Engine, settings: Settings, dagster: DagsterGraphQL, stop: threading.Event,
                 background_seconds: float = BACKGROUND_DRIVE_SECONDS):
        self.engine, self.settings, self.dagster, self.stop = engine, settings, dagster, stop
        self.background_seconds = background_seconds
        self._threads: set[threading.Thread] = set()
        self._driven: set[str] = set()  # request ids with a background driver
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()

    async def answer(self, request_id: str, wait_seconds: float) -> TriggerRequest | None:
        """The request's state after up to ``wait_seconds`` (0: after its first step, e.g. its launch)."""
        if wait_seconds <= 0 or self.stop.is_set():
            request = await anyio.to_thread.run_sync(drive, self.engine, self.settings, self.dagster, request_id)
            if request is not None and not request.finished:
                self._in_background(request_id)
            return request
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        with self._lock:
            self._waiters.setdefault(request_id, []).append((loop, ended))
        self._in_background(request_id)
        try:
            await asyncio.wait_for(asyncio.shield(ended), wait_seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                waiting = self._waiters.get(request_id, [])
                if (loop, ended) in waiting:
                    waiting.remove((loop, ended))
        return await anyio.to_thread.run_sync(store.get_request, self.engine, request_id)

    def _poll_seconds(self) -> float:
        # 0.5 s for a few requests; with 200 driven at once each polls every 2 s (100 steps/s in all).
        return max(DRIVE_POLL_SECONDS, len(self._threads) / MAX_DRIVE_STEPS_PER_SECOND)

    def _in_background(self, request_id: str) -> None:
        def run():
            try:
                drive_until_finished(self.engine, self.settings, self.dagster, request_id, self.background_seconds,
                                     self.stop, poll=self._poll_seconds())
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())
                    self._driven.discard(request_id)
                    waiters = self._waiters.pop(request_id, [])
                for loop, ended in waiters:
                    loop.call_soon_threadsafe(_resolve, ended)

        with self._lock:
            if self.stop.is_set():  # shutting down: a caller waiting for this request answers now
                for loop, ended in self._waiters.pop(request_id, []):
                    loop.call_soon_threadsafe(_resolve, ended)
                return
            if request_id in self._driven:
                return
            thread = threading.Thread(target=run, name=f"admin-request-{request_id}", daemon=True)
            self._driven.add(request_id)
            self._threads.add(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for each background driver (set ``stop`` first)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
