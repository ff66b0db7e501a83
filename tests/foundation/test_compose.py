"""The production compose file (no Docker engine runs here, so the file is what we can check): its
structure, and that what one service names for another exists there: every path the gateway and
the trainer send vLLM or the sandbox is on a volume mounted at the same place in the receiver, the
served model name is the one the gateway asks for, and the gateway's tokenizer is read from the
checkpoint vLLM serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU_SERVICES = {"vllm", "trainer"}
ONE_SHOT = {"provision"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_expected_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "provision", "vllm", "sandbox", "api", "trainer"}


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in ONE_SHOT:
            assert svc["restart"] == "no", f"{name} runs once"
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_only_api_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name for name, svc in compose["services"].items() if svc.get("ports")}
    assert published == {"api"}


def test_gpu_services_reserve_a_gpu(compose: dict[str, Any]) -> None:
    for name in GPU_SERVICES:
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices), name
    for name in set(compose["services"]) - GPU_SERVICES:
        assert "deploy" not in compose["services"][name], f"{name} should not reserve a GPU"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, cond in deps.items():
            assert dep in services
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond == {"condition": wanted}, f"{name} -> {dep}"


def test_sandbox_is_locked_down(compose: dict[str, Any]) -> None:
    sb = compose["services"]["sandbox"]
    assert sb["network_mode"] == "none"
    assert sb["read_only"] is True
    assert "ALL" in sb["cap_drop"]
    assert "no-new-privileges:true" in sb["security_opt"]
    assert not sb.get("privileged", False)
    assert "MATHAGENT_ADMIN_TOKEN" not in sb.get("environment", {}), "the sandbox must hold no secrets"


def test_vllm_internal_only_and_redis_persistent(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["networks"] == ["internal"] and compose["networks"]["internal"]["internal"] is True
    assert vllm.get("ipc") == "host" or vllm.get("shm_size")
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert redis["volumes"]


def test_admin_token_is_required(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${MATHAGENT_ADMIN_TOKEN:?" in text
    assert compose["services"]["api"]["environment"]["MATHAGENT_ADMIN_TOKEN"].startswith("${MATHAGENT_ADMIN_TOKEN:?")


# ---- what one service names for another exists there -----------------------------------------


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """mount point -> volume name (named volumes only: a bind or tmpfs is private to the service)."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target, *_ = spec.split(":")
        out[target] = source
    return out


def _volume_of(svc: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(volume, mount point) holding ``path`` in this service, the deepest mount first."""
    for target, source in sorted(_mounts(svc).items(), key=lambda kv: -len(kv[0])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source, target
    return None


def _same_file_in(compose: dict[str, Any], sender: str, receiver: str, path: str) -> None:
    services = compose["services"]
    here, there = _volume_of(services[sender], path), _volume_of(services[receiver], path)
    assert here is not None, f"{path}: not on a shared volume in {sender}"
    assert there == here, f"{path}: {sender} has it on {here}, {receiver} on {there}"


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_registry_paths_the_gateway_sends_vllm_exist_there(compose: dict[str, Any]) -> None:
    """LoRA adapters and full weights are sent to vLLM as registry paths: <state_dir>/registry/<version>."""
    from api.settings import GatewaySettings

    for sender in ("api", "trainer"):
        env = _env(compose["services"][sender])
        settings = GatewaySettings(dev=True, state_dir=env["MATHAGENT_STATE_DIR"],
                                   registry_dir=env.get("MATHAGENT_REGISTRY_DIR") or None)
        _same_file_in(compose, sender, "vllm", str(settings.registry_path / "v0001"))
        _same_file_in(compose, sender, "vllm", env["MATHAGENT_MODEL"])  # a rollback reloads the base


def test_adapters_the_trainer_loads_on_vllm_exist_there(compose: dict[str, Any]) -> None:
    """A retrain job loads its LoRA candidate on the serving vLLM from its run directory
    (<runs_dir>/<job>/iter-1/train/adapter, trainer.engines), and a LoRA current version from the registry."""
    from trainer.settings import TrainerSettings

    env = _env(compose["services"]["trainer"])
    settings = TrainerSettings(dev=True, state_dir=env["MATHAGENT_STATE_DIR"], runs_dir=env.get("MATHAGENT_RUNS_DIR") or None)
    _same_file_in(compose, "trainer", "vllm", str(settings.runs_path / "job-1" / "iter-1" / "train" / "adapter"))


def test_the_sandbox_socket_is_where_the_clients_look(compose: dict[str, Any]) -> None:
    sandbox = compose["services"]["sandbox"]
    served = sandbox["command"][sandbox["command"].index("--socket") + 1]
    for client in ("api", "trainer"):
        url = _env(compose["services"][client])["MATHAGENT_SANDBOX_URL"]
        assert url == f"unix://{served}"
        _same_file_in(compose, client, "sandbox", served)


def test_vllm_serves_the_name_and_checkpoint_the_gateway_uses(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]["command"]
    provision = compose["services"]["provision"]
    exported = _arg(provision["command"], "--export")
    assert _arg(vllm, "--model") == exported, "vLLM must serve what provision exported"
    _same_file_in(compose, "provision", "vllm", exported)
    for name in ("api", "trainer"):
        env = _env(compose["services"][name])
        assert env["MATHAGENT_ENGINE"] == "vllm"
        assert env["MATHAGENT_VLLM_MODEL"] == _arg(vllm, "--served-model-name")
        assert env["MATHAGENT_MODEL"] == exported, f"{name}'s tokenizer must come from the checkpoint vLLM serves"
        _same_file_in(compose, name, "vllm", env["MATHAGENT_MODEL"])
        host_port = env["MATHAGENT_VLLM_URL"].removeprefix("http://")
        assert host_port == f"vllm:{_arg(vllm, '--port')}"


def test_vllm_exposes_what_the_hot_swap_needs(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["environment"]["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--dtype" in vllm["command"], "the precision must be stated (golden checks depend on it)"
    assert set(vllm["networks"]) == {"internal"}


def test_the_api_answers_the_names_it_is_reached_by(compose: dict[str, Any]) -> None:
    """Trusted hosts: the trainer deploys through http://api:8000, the healthcheck uses 127.0.0.1;
    the settings the api would run with (compose's default value) answer both."""
    import re
    from urllib.parse import urlparse

    from api.guards import TrustedHostMiddleware, host_name
    from api.settings import GatewaySettings

    api = compose["services"]["api"]["environment"]
    hosts = re.sub(r"\$\{MATHAGENT_TRUSTED_HOSTS:-(.*)\}", r"\1", api["MATHAGENT_TRUSTED_HOSTS"])
    settings = GatewaySettings(dev=True, host=api["MATHAGENT_HOST"], trusted_hosts=hosts)
    guard = TrustedHostMiddleware(lambda *a: None, settings.allowed_hosts)  # type: ignore[arg-type, return-value]
    trainer_url = compose["services"]["trainer"]["environment"]["MATHAGENT_GATEWAY_URL"]
    health_url = next(t for t in compose["services"]["api"]["healthcheck"]["test"] if t.startswith("http"))
    for url in (trainer_url, health_url):
        assert guard.allows(host_name(urlparse(url).netloc)), url
    assert not guard.allows(host_name("rebound.example:8000"))
