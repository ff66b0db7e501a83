"""The vLLM launcher: its command line and environment, and how it fails before vLLM is healthy.

Starting the real server, serving, killing it and reaping its engine processes are exercised by
the engine tests on the session's shared server (tests/agent/test_engine_openai_http.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mathagent.vllm_server import (
    VLLMServer,
    VLLMServerConfig,
    VLLMServerError,
    build_argv,
    build_env,
    free_port,
)

MODEL = Path(__file__)  # any existing path: argv building does not read it


def test_argv_and_env_carry_what_the_hot_swap_needs():
    cfg = VLLMServerConfig(model=MODEL, served_model_name="policy", port=8123, extra_args=["--seed", "3"])
    argv = build_argv(cfg)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for flag in ("--served-model-name policy", "--port 8123", "--host 127.0.0.1", "--dtype float32",
                 "--no-enable-chunked-prefill", "--max-model-len 4096", "--max-num-batched-tokens 8192",
                 "--enable-scale-out", "--enforce-eager", "--enable-lora --max-loras 2 --max-lora-rank 16"):
        assert flag in joined
    assert argv[-2:] == ["--seed", "3"]
    env = build_env(cfg, {"PATH": "/usr/bin"})
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["PATH"] == "/usr/bin"
    # the forward pass runs on every core this process may use (vLLM's own default keeps one back)
    assert sorted(map(int, env["VLLM_CPU_OMP_THREADS_BIND"].split(","))) == sorted(os.sched_getaffinity(0))
    assert build_env(cfg.model_copy(update={"cpu_cores": "auto"}), {})["VLLM_CPU_OMP_THREADS_BIND"] == "auto"

    plain = VLLMServerConfig(model=MODEL, enable_lora=False, chunked_prefill=True, enforce_eager=False, kv_cache_gib=2.5)
    assert "--enable-lora" not in build_argv(plain) and "--enforce-eager" not in build_argv(plain)
    assert "--enable-chunked-prefill" in build_argv(plain)
    env = build_env(plain, {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env and env["VLLM_CPU_KVCACHE_SPACE"] == "2.5"


def test_a_step_budget_smaller_than_a_prompt_is_refused():
    with pytest.raises(ValueError, match="must be at least max_model_len"):
        VLLMServerConfig(model=MODEL, max_model_len=4096, max_num_batched_tokens=2048)
    VLLMServerConfig(model=MODEL, max_model_len=4096, max_num_batched_tokens=2048, chunked_prefill=True)


def test_missing_install_names_the_install_command(tmp_path):
    cfg = VLLMServerConfig(python=tmp_path / "nope" / "python", model=tmp_path)
    with pytest.raises(VLLMServerError, match=r"scripts/setup\.sh vllm"):
        VLLMServer(cfg).start()


def test_model_dir_without_config_is_refused(tmp_path):
    with pytest.raises(VLLMServerError, match=r"no config\.json"):
        VLLMServer(VLLMServerConfig(python=Path(sys.executable), model=tmp_path)).start()


def test_a_server_that_exits_early_fails_with_its_log_tail(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    exe = tmp_path / "python"  # stands in for the venv's python: exits as vLLM does on a bad argument
    exe.write_text("#!/bin/sh\necho 'error: argument --dtype: invalid choice' >&2\nexit 2\n")
    exe.chmod(0o755)
    log = tmp_path / "vllm.log"
    server = VLLMServer(VLLMServerConfig(python=exe, model=tmp_path, log_path=log, start_timeout_s=30, port=free_port()))
    with pytest.raises(VLLMServerError, match=r"exited with status 2(.|\n)*invalid choice"):
        server.start()
    assert not server.alive()
