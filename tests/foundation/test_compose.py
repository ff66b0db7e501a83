"""The production compose file's structure (no Docker engine runs here, so structure is what we can check)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU_SERVICES = {"vllm", "trainer"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_expected_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "vllm", "sandbox", "api", "trainer"}


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
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
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"


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
