"""Bad configuration exits with one clear line naming the setting, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import model_state_dir

from agent.configuration import ConfigError, load
from api.settings import GatewaySettings
from mathagent.settings import example_env

ROOT = Path(__file__).resolve().parents[2]
MATHAGENT = str(Path(sys.executable).with_name("mathagent"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATHAGENT_")}
    env["MATHAGENT_STATE_DIR"] = str(model_state_dir())
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _one_clear_line(proc: subprocess.CompletedProcess[str], setting: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if setting in line]
    assert len(lines) == 1, proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unknown_model_is_one_line(tmp_path: Path) -> None:
    proc = _run([MATHAGENT, "provision"], _env(tmp_path, MATHAGENT_MODEL="no-such-model"), tmp_path)
    assert proc.returncode == 2
    _one_clear_line(proc, "MATHAGENT_MODEL=no-such-model")


def test_hub_id_without_network_is_one_line(tmp_path: Path) -> None:
    proc = _run([MATHAGENT, "generate", "hi"], _env(tmp_path, MATHAGENT_MODEL="nobody/nothing"), tmp_path)
    assert proc.returncode == 2
    _one_clear_line(proc, "MATHAGENT_MODEL=nobody/nothing")


def test_gateway_refuses_missing_admin_token(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-m", "api", "serve"], _env(tmp_path, PYTHONPATH=str(ROOT)), tmp_path)
    assert proc.returncode == 2
    _one_clear_line(proc, "MATHAGENT_ADMIN_TOKEN")


@pytest.mark.parametrize("token", ["changeme", "short", "   "])
def test_placeholder_tokens_refused_outside_dev(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(GatewaySettings, admin_token=token, dev=False)
    assert "MATHAGENT_ADMIN_TOKEN" in info.value.message


def test_dev_mode_accepts_no_token_and_real_token_accepted() -> None:
    assert load(GatewaySettings, dev=True).dev
    good = "x" * 8 + "3f9a1c2e7b"
    assert load(GatewaySettings, admin_token=good).admin_token.get_secret_value() == good


def test_bad_port_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load(GatewaySettings, dev=True, port=70000)
    assert info.value.message.startswith("MATHAGENT_PORT:")


def test_unreachable_redis_without_redis_server_is_one_line(tmp_path: Path) -> None:
    # A loopback port where nothing listens, and a PATH without redis-server: `up` cannot
    # start a private one, so it must say how to get Redis, and start nothing.
    url = f"redis://127.0.0.1:{_free_port()}/0"
    env = _env(tmp_path, MATHAGENT_REDIS_URL=url, PATH=str(tmp_path), MATHAGENT_STATE_DIR=str(tmp_path / "state"))
    (tmp_path / "state" / "models").mkdir(parents=True)
    real_cache = Path(_env(tmp_path)["MATHAGENT_STATE_DIR"]) / "models" / "smollm2"
    (tmp_path / "state" / "models" / "smollm2").symlink_to(real_cache)
    proc = _run([MATHAGENT, "up"], env, tmp_path)
    assert proc.returncode == 1
    _one_clear_line(proc, f"MATHAGENT_REDIS_URL={url}")
    assert "apt-get install redis-server" in proc.stderr


def test_env_example_lists_every_setting() -> None:
    committed = (ROOT / ".env.example").read_text()
    assert committed == example_env(), "run `mathagent config-example > .env.example`"


def test_api_keys_are_digests_made_by_new_key(tmp_path: Path) -> None:
    """`python -m api new-key` prints a key and its digest; the settings take the digest (never a
    key: a plain key in MATHAGENT_API_KEYS is refused, naming the variable, without echoing it)."""
    import hashlib

    proc = _run([sys.executable, "-m", "api", "new-key"], _env(tmp_path, PYTHONPATH=str(ROOT)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    key, digest = fields["key"].strip(), fields["sha256"].strip()
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert load(GatewaySettings, dev=True, api_keys=digest).api_key_digests == {digest}
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops team\n{digest}\n")
    assert load(GatewaySettings, dev=True, api_keys_file=keys_file).api_key_digests == {digest}
    with pytest.raises(ConfigError) as info:
        load(GatewaySettings, dev=True, api_keys=key)
    assert "MATHAGENT_API_KEYS" in info.value.message and key not in info.value.message
    for bad in ({"require_api_key": True}, {"trusted_proxies": "10.0.0.0/33"}, {"api_keys_file": tmp_path / "none"}):
        with pytest.raises(ConfigError):
            load(GatewaySettings, dev=True, **bad)
