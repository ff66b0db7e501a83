"""The gateway's log as ``mathagent up`` writes it: the real ``python -m api serve`` process,
spawned by the launcher into ``<state>/logs/gateway.log``. Tokens sent in query strings never
reach the file, and the file is readable by its owner only."""

from __future__ import annotations

import os
import secrets
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from support.gateway_stack import Stack, free_port


def test_query_tokens_are_redacted_and_the_log_is_private(stack: Stack, tokenizer: Any, tmp_path: Path) -> None:
    from agent.modelstore import tiny_random_model
    from mathagent.settings import StackSettings
    from mathagent.stack import Stack as Launcher

    model = tmp_path / "tiny"
    tiny_random_model(tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    token, secret = secrets.token_hex(24), "s3cr3t-" + secrets.token_hex(8)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATHAGENT_")}
    env.update(MATHAGENT_STATE_DIR=str(tmp_path / "state"), MATHAGENT_MODEL=str(model), MATHAGENT_PORT=str(port),
               MATHAGENT_REDIS_URL=stack.redis_url, MATHAGENT_SANDBOX_URL=stack.sandbox_url,
               MATHAGENT_REDIS_PREFIX=f"log-{uuid.uuid4().hex[:8]}", MATHAGENT_ADMIN_TOKEN=token, HF_HUB_OFFLINE="1")
    launcher = Launcher(StackSettings(state_dir=tmp_path / "state"))
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "gateway.log").write_text("from an earlier run\n")
    os.chmod(logs / "gateway.log", 0o644)  # a file made before: its mode is tightened too
    child = launcher.spawn("gateway", [sys.executable, "-m", "api", "serve"], "", env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert child.proc.poll() is None, child.log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, child.log.read_text()[-3000:]
            time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get(f"/healthz?token={token}").status_code == 200
            assert c.get(f"/admin/jobs?access_token={token}&limit=5").status_code == 401
            assert c.get(f"/v1/models?api_key={secret}").status_code == 200
            assert c.get(f"/readyz?{secret}").status_code == 200
    finally:
        launcher.stop()
    text = (logs / "gateway.log").read_text()
    assert stat.S_IMODE((logs / "gateway.log").stat().st_mode) == 0o600
    assert "GET /healthz?token=*** HTTP/1.1" in text, text[-2000:]  # the access log is there, redacted
    assert "/admin/jobs?access_token=***&limit=*** HTTP/1.1" in text
    assert token not in text and secret not in text
