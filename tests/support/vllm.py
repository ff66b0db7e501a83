"""The session's shared real vLLM server (the ``vllm`` fixture of tests/conftest.py).

The server is started by the first test that needs it (a start costs a minute or two on CPU),
serves the provisioned SmolLM2 with the flags the hot swap needs (mathagent.vllm_server's
defaults: fp32, runtime LoRA, dev routes, ``--enable-scale-out``), and is stopped at the end of
the session. A test that kills it leaves it dead: the next test asking for ``vllm`` starts a new
one on the same port. After each test the fixture puts back what the test may have changed (resumed, weight label
``default``, base weights, no adapter), so tests do not depend on each other's order.

Without ``.venv-vllm`` the tests fail (they are not skipped): CI installs it with
``scripts/setup.sh dev``; locally ``scripts/setup.sh vllm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mathagent.vllm_server import INSTALL_HINT, VLLMServer, VLLMServerConfig, VLLMServerError, free_port
from support.paths import model_state_dir

SERVED_NAME = "mathagent-test"


@dataclass
class RunningVLLM:
    """What a test needs to talk to the shared server."""

    server: VLLMServer
    url: str
    served_name: str
    model_dir: Path
    version: str  # the version of the --model weights (what the label "default" stands for)


class SharedVLLM:
    def __init__(self, log_dir: Path) -> None:
        from agent import modelstore

        resolved = modelstore.resolve("smollm2", model_state_dir())
        self.model_dir = resolved.path
        self.version = resolved.version
        self.log_dir = log_dir
        self.server: VLLMServer | None = None
        self.starts = 0
        self.port = free_port()  # kept across restarts: a gateway pointed at it finds the new server

    def running(self) -> RunningVLLM:
        if self.server is None or not self.server.alive() or not self.server.healthy():
            self._start()
        assert self.server is not None
        return RunningVLLM(self.server, self.server.url, SERVED_NAME, self.model_dir, self.version)

    def _start(self) -> None:
        if self.server is not None:
            self.server.stop()  # a killed leader can leave its engine processes behind
        cfg = VLLMServerConfig(
            model=self.model_dir, served_model_name=SERVED_NAME, port=self.port,
            log_path=self.log_dir / f"vllm-{self.starts}.log",
        )
        if not cfg.python.exists():
            pytest.fail(f"vLLM is not installed ({cfg.python} is missing): {INSTALL_HINT}", pytrace=False)
        self.starts += 1
        self.server = VLLMServer(cfg)
        try:
            self.server.start()
        except VLLMServerError as exc:
            pytest.fail(str(exc), pytrace=False)

    def restore(self) -> None:
        """Undo what a test may have left: paused, relabelled or reloaded weights, adapters."""
        if self.server is None or not self.server.alive() or not self.server.healthy():
            return  # the next test starts a new one
        with httpx.Client(base_url=self.server.url, timeout=120) as c:
            if c.get("/is_paused").json()["is_paused"]:
                c.post("/resume")
            if c.get("/weight_info").json()["weight_version"] != "default":
                c.post("/pause", params={"mode": "wait"})
                c.post("/collective_rpc", json={"method": "reload_weights", "kwargs": {"weights_path": str(self.model_dir)}},
                       headers={"Connection": "close"}).raise_for_status()
                c.post("/update_weight_version", json={"new_version": "default"})
                c.post("/reset_prefix_cache")
                c.post("/resume")
            for m in c.get("/v1/models").json()["data"]:
                if m["id"] != SERVED_NAME:
                    c.post("/v1/unload_lora_adapter", json={"lora_name": m["id"]})

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
