"""The vLLM server one command uses (a benchmark measures it, ``mathagent experiment --engine
vllm`` generates on it): the one at ``--vllm-url`` (it must serve the same checkpoint), or one
started from ``.venv-vllm`` for the run and stopped after it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from mathagent.vllm_server import VLLMServer, VLLMServerConfig, free_port

if TYPE_CHECKING:
    from agent.engines.base import Engine
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.modelstore import ResolvedModel
    from agent.runtime import Resources

BENCH_SERVED_NAME = "mathagent-bench"


@dataclass
class BenchVLLM:
    url: str
    served_name: str
    started_s: float | None  # seconds the start took (None: an existing server was used)

    def engine(self, checkpoint: Path, version: str) -> OpenAIHTTPEngine:
        """A client of this server, which serves ``checkpoint`` (its tokenizer is read there) as ``version``."""
        from agent.engines.openai_http import OpenAIHTTPEngine

        return OpenAIHTTPEngine.from_path(self.url, checkpoint, model=self.served_name, version=version)


async def leg_engine(name: str, resources: Resources, model: ResolvedModel, vllm: BenchVLLM | None,
                     console: Console) -> Engine:
    """The engine a benchmark leg measures on ``model``: ``vllm`` (the server's) or ``in-process``."""
    if name == "vllm":
        assert vllm is not None
        return vllm.engine(model.path, model.version)
    with console.status("loading the model..."):
        return await resources.engine(model.path, model.version)


@contextlib.contextmanager
def bench_vllm(
    model: Path,
    console: Console,
    *,
    url: str | None = None,
    served_name: str | None = None,
    lora: bool = False,
    log_dir: Path | None = None,
    log_name: str = "bench-vllm.log",
) -> Iterator[BenchVLLM]:
    """Yield a vLLM server on ``model``. ``url``: use that server (``served_name`` is its
    --served-model-name); else start one (fp32, the flags of :mod:`mathagent.vllm_server`; ``lora``
    also enables runtime adapters, which turns off vLLM's compiled paths and slows the start)."""
    if url:
        yield BenchVLLM(url.rstrip("/"), served_name or BENCH_SERVED_NAME, None)
        return
    log = (log_dir or Path.home() / ".cache" / "mathagent" / "logs") / log_name
    cfg = VLLMServerConfig(
        model=model, served_model_name=BENCH_SERVED_NAME, port=free_port(), enable_lora=lora, log_path=log
    )
    server = VLLMServer(cfg)
    t0 = time.perf_counter()
    with console.status(f"starting vLLM on {model.name} (log {log}; a minute or more on CPU)..."):
        server.start()
    started = time.perf_counter() - t0
    console.print(f"[dim]vLLM started in {started:.0f} s at {cfg.url}[/]")
    try:
        yield BenchVLLM(cfg.url, BENCH_SERVED_NAME, started)
    finally:
        server.stop()
