"""Admin: one bearer-token guard on every route; the token never reaches a log."""

from __future__ import annotations

import logging

import pytest
from support.gateway_stack import RunningApp

ROUTES = [
    ("POST", "/admin/retrain", {"idempotency_key": "nightly-1"}),
    ("GET", "/admin/jobs", None),
    ("GET", "/admin/jobs/job-1", None),
    ("GET", "/admin/versions", None),
    ("POST", "/admin/deploy", {"version": "v0002"}),
    ("POST", "/admin/rollback", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_admin_needs_the_right_token(tiny_app: RunningApp, method: str, path: str, body: dict | None) -> None:
    with tiny_app.client() as c:
        none = c.request(method, path, json=body)
        wrong = c.request(method, path, json=body, headers={"Authorization": "Bearer " + "0" * 48})
        not_bearer = c.request(method, path, json=body, headers={"Authorization": f"Basic {tiny_app.token}"})
        right = c.request(method, path, json=body, headers={"Authorization": f"Bearer {tiny_app.token}"})
    for r, code in ((none, "missing_token"), (wrong, "invalid_token"), (not_bearer, "missing_token")):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == code
        assert r.headers["www-authenticate"].startswith("Bearer")
    # past the guard: every route has its back end (the answers themselves: test_api_swap*.py)
    expected = {"/admin/retrain": 202, "/admin/jobs": 200, "/admin/jobs/job-1": 404, "/admin/versions": 200,
                "/admin/deploy": 404, "/admin/rollback": 409}
    assert right.status_code == expected[path], right.text
    if right.status_code >= 400:
        assert right.json()["error"]["code"] in ("job_not_found", "unknown_version", "no_previous_version")


def test_admin_bodies_are_validated_after_auth(tiny_app: RunningApp) -> None:
    with tiny_app.client(headers={"Authorization": f"Bearer {tiny_app.token}"}) as c:
        r = c.post("/admin/deploy", json={"version": "../../etc"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "version"


def test_token_never_appears_in_logs(tiny_app: RunningApp, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-" + tiny_app.token[::-1]
    with caplog.at_level(logging.DEBUG), tiny_app.client() as c:
        for method, path, body in ROUTES:
            c.request(method, path, json=body, headers={"Authorization": f"Bearer {tiny_app.token}"})
            c.request(method, path, json=body, headers={"Authorization": f"Bearer {wrong}"})
    assert caplog.records, "expected the requests to log something at DEBUG"
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert tiny_app.token not in text and wrong not in text
    assert tiny_app.token not in repr(tiny_app.state.settings)
