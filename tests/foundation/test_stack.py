"""`mathagent up` end to end: it starts every component, /healthz reports them, and Ctrl-C
(SIGINT) stops every process it started, leaving nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support.paths import model_state_dir

pytestmark = pytest.mark.slow

MATHAGENT = str(Path(sys.executable).with_name("mathagent"))
CACHE = model_state_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "smollm2").symlink_to(CACHE / "models" / "smollm2")
    redis_port, api_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATHAGENT_")}
    env.update(
        MATHAGENT_STATE_DIR=str(state),
        MATHAGENT_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",  # nothing there: up starts a private one
        MATHAGENT_PORT=str(api_port),
        MATHAGENT_DEV="1",
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.Popen([MATHAGENT, "up"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        health = None
        # Ready = the components answer AND `up` has printed what runs where.
        while time.monotonic() < deadline and proc.poll() is None and "mathagent is up" not in "".join(lines):
            time.sleep(0.2)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=5)
                if r.status_code == 200:
                    health = r.json()
                    if all(health["components"][c]["status"] == "up" for c in ("sandbox", "trainer")):
                        break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None, f"gateway never answered; up exited with {proc.poll()}"
        comps = health["components"]
        for name in ("gateway", "model", "redis", "sandbox", "trainer"):
            assert comps[name]["status"] == "up", (name, comps[name])
        token = (state / "admin_token").read_text().strip()
        # details for the admin only; a token in a query string (a mistake) never reaches the log
        detailed = httpx.get(f"http://127.0.0.1:{api_port}/healthz?token={token}",
                             headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["components"]
        assert str(redis_port) in detailed["redis"]["url"] and "url" not in comps["redis"]
        assert (state / "redis").is_dir(), "the private redis keeps its data under the state dir"
        seen = _descendants(proc.pid)
        assert len(seen) >= 4  # redis, sandbox (+ its workers), gateway, trainer worker
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    gateway_log = state / "logs" / "gateway.log"
    assert (gateway_log.stat().st_mode & 0o777) == 0o600
    assert "/healthz?token=***" in gateway_log.read_text() and token not in gateway_log.read_text()
    assert "mathagent is up" in out and "stopped" in out
    time.sleep(0.5)
    alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2)
