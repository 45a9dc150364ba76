"""Waiting requests (wait=true) hold no worker thread: the real admin API (uvicorn on a free port,
real HTTP) keeps answering /healthz and the status endpoint while 200 requests wait.

The Dagster webserver is absent, so every request stays pending and waits its whole
ADMIN_WAIT_TIMEOUT_SECONDS. Before the fix each waiter held one of the server's 40 worker threads:
/healthz queued behind them and answered only after the first waiters gave up.
"""

import asyncio
import time

import httpx
import pytest

from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.test_admin_api import KEY, admin_settings, rows

WAITERS = 200
WAIT_SECONDS = 10  # long enough for all 200 to arrive and the probes to run while they wait
PROBES = 200  # /healthz calls, one after the other, while all wait


async def _wait_and_probe(url: str, settings) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[float]]:
    limits = httpx.Limits(max_connections=WAITERS + 10, max_keepalive_connections=WAITERS + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def wait_for_runs(index: int) -> tuple[int, float]:
            body = '{"tasks":["heatmap"],"levels":["1"]}' if index % 2 else '{"tasks":["etl"]}'
            response = await client.post("/admin/run-jobs", content=body, headers={"x-api-key": KEY})
            return response.status_code, time.monotonic()

        waiters = [asyncio.create_task(wait_for_runs(i)) for i in range(WAITERS)]
        while len(await asyncio.to_thread(rows, settings)) < WAITERS:  # every request recorded: all are waiting
            assert not any(task.done() for task in waiters), "a waiter answered before all had arrived"
            await asyncio.sleep(0.1)
        probes, latencies = [], []
        async with httpx.AsyncClient(base_url=url, timeout=60) as prober:  # its own connections
            for _ in range(PROBES):
                started = time.monotonic()
                health = await prober.get("/healthz")
                latencies.append(time.monotonic() - started)
                probes.append((health.status_code, time.monotonic()))
            some_id = (await asyncio.to_thread(rows, settings))[0]["id"]
            status = await prober.get(f"/admin/run-jobs/{some_id}", headers={"x-api-key": KEY})
            probes.append((status.status_code, time.monotonic()))
        return [await task for task in waiters], probes, latencies


@pytest.mark.slow
def test_healthz_and_status_answer_while_200_requests_wait_and_every_waiter_gets_its_answer(tmp_path):
    settings = admin_settings(tmp_path, ADMIN_WAIT_TIMEOUT_SECONDS=str(WAIT_SECONDS), HEATMAP_LEVELS="1,2")
    with serve_in_thread(create_app(settings)) as url:
        answers, probes, latencies = asyncio.run(_wait_and_probe(url, settings))
    assert [code for code, _at in probes] == [200] * PROBES + [202]  # /healthz, then the status endpoint
    assert [code for code, _at in answers] == [202] * WAITERS  # each waited its whole timeout: pending
    # Every probe was answered while all 200 were still waiting (an order, not a speed).
    assert max(at for _code, at in probes) < min(at for _code, at in answers)
    latencies.sort()
    print(f"/healthz while {WAITERS} wait: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")


def test_a_waiting_request_answers_as_soon_as_the_server_shuts_down(tmp_path):
    settings = admin_settings(tmp_path, ADMIN_WAIT_TIMEOUT_SECONDS="600")
    app = create_app(settings)
    with serve_in_thread(app) as url, httpx.Client(timeout=60) as client:
        async def wait_then_shut_down():
            waiting = asyncio.create_task(asyncio.to_thread(
                client.post, f"{url}/admin/run-jobs", content=b'{"tasks":["etl"]}', headers={"x-api-key": KEY}))
            while not await asyncio.to_thread(rows, settings):
                await asyncio.sleep(0.05)
            assert not waiting.done()
            app.state.shutting_down.set()  # what `heatmap-pipeline admin` does on SIGTERM, before uvicorn drains
            return await waiting  # within the client's 60 s, not the 600 s wait

        answer = asyncio.run(wait_then_shut_down())
    assert answer.status_code == 202 and answer.json()["state"] == "pending"
