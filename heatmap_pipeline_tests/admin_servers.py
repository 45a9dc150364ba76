"""Helpers for the admin and end-to-end tests: free ports, a real uvicorn server in a thread,
real subprocesses of ``heatmap-pipeline`` and waiting until they answer, Debian's Chromium for Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, port: int | None = None):
    """Serve an ASGI app with a real uvicorn server on 127.0.0.1; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_answering(url: str, process: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers HTTP (any status), failing early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


CHROMIUM = "/usr/bin/chromium"
# Flags for a headless Chromium in a container: no sandbox (root), no GPU, nothing fetched in the background.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def browser_or_skip():
    """Playwright driving Debian's Chromium (browsers cannot be downloaded here). Without them the
    test skips and says why; under CI (CI=true) it fails instead."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        reason = f"playwright is not installed ({exc}); pip install -e '.[test]'"
    if reason is None and not shutil.which(CHROMIUM):
        reason = f"no Chromium at {CHROMIUM}; apt-get install -y chromium (.ci/run does)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (required under CI)")
        pytest.skip(reason)
    return sync_playwright
