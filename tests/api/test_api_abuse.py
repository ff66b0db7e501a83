"""The gateway under attack (issue 19's findings), each reproduced against a running gateway
(real Redis, real sandbox, real HTTP) and checked by what the service holds afterwards:
non-finite numbers, corrupt job records, minted rate-limit identities, forwarded-address
spoofing, feedback floods and label poisoning, foreign Host headers, /readyz internals.

Each gateway here has its own Redis key prefix, so its rate-limit counters start at zero.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support.gateway_stack import RunningApp, Stack

KEY_A = "mk-test-key-a-" + secrets.token_hex(8)
KEY_B = "mk-test-key-b-" + secrets.token_hex(8)
LIMIT = 5


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _serve(stack: Stack, tokenizer: Any, **overrides: Any) -> RunningApp:
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import tiny_random_model

    engine = TransformersEngine(tiny_random_model(tokenizer), tokenizer, "tiny-guard-v1")
    settings = dict(max_new_tokens=8, max_total_tokens=1024, rate_limit_per_minute=LIMIT, redis_prefix=f"abuse-{uuid.uuid4().hex[:8]}")
    return stack.serve(engine, **{**settings, **overrides})


@pytest.fixture(scope="module")
def open_app(stack: Stack, tokenizer: Any) -> RunningApp:
    """No API keys, no trusted proxies: callers are their TCP peer address."""
    return _serve(stack, tokenizer, feedback_rate_limit_per_minute=4)


@pytest.fixture(scope="module")
def keyed_app(stack: Stack, tokenizer: Any) -> RunningApp:
    """Two API keys configured (their sha256 digests, never the keys)."""
    return _serve(stack, tokenizer, api_keys=f"{digest(KEY_A)},{digest(KEY_B)}")


@pytest.fixture(scope="module")
def proxied_app(stack: Stack, tokenizer: Any) -> RunningApp:
    """Behind a reverse proxy on loopback: X-Forwarded-For from 127.0.0.1 names the client."""
    return _serve(stack, tokenizer, trusted_proxies="127.0.0.1", rate_limit_per_minute=1000,
                  feedback_rate_limit_per_minute=LIMIT, feedback_per_trajectory=3)


def _burst(send: Callable[[int], httpx.Response], n: int) -> tuple[list[int], int]:
    """Status codes of ``n`` requests, and how many one-minute windows they spanned (the limiter's
    windows are fixed minutes: a burst across a boundary may pass twice the limit, never more)."""
    start = time.time()
    codes = [send(i).status_code for i in range(n)]
    return codes, int(time.time() // 60) - int(start // 60) + 1


def _assert_limited(codes: list[int], windows: int, limit: int = LIMIT) -> None:
    passed = [c for c in codes if c != 429]
    assert len(passed) <= limit * windows, codes
    assert codes.count(429) >= len(codes) - limit * windows, codes


def fresh(app: RunningApp) -> None:
    """Forget ``app``'s rate-limit counters: each test starts with full budgets."""
    client = redis.Redis.from_url(app.redis_url)
    keys = list(client.scan_iter(f"{app.state.settings.redis_prefix}:ratelimit:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _admin(app: RunningApp) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.token}"}


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


# ---- 1. non-finite numbers; job reads that survive any stored record


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_and_store_nothing(open_app: RunningApp, literal: str) -> None:
    fresh(open_app)
    r_client = redis.Redis.from_url(open_app.redis_url)
    jobs_key = f"{open_app.state.settings.job_prefix}:jobs"
    before = r_client.zcard(jobs_key)
    bodies = {
        "/admin/retrain": f'{{"temperatures": [{literal}]}}',
        "/v1/solve": f'{{"problem": "1+1", "temperature": {literal}}}',
        "/v1/chat/completions": f'{{"model": "mathagent", "messages": [{{"role": "user", "content": "1+1"}}], '
                                f'"temperature": {literal}}}',
    }
    with open_app.client(headers={**_admin(open_app), "content-type": "application/json"}) as c:
        for path, raw in bodies.items():  # the OpenAI route answers 400, as OpenAI does
            err = _error(c.post(path, content=raw.encode()), 400 if path == "/v1/chat/completions" else 422)
            assert err["code"] == "invalid_value" and err["param"] in ("temperatures.0", "temperature"), err
        retrain_tolerance = c.post("/admin/retrain", content=f'{{"tolerance": {literal}}}'.encode())
        _error(retrain_tolerance, 422)
        listing = c.get("/admin/jobs")
    assert r_client.zcard(jobs_key) == before  # nothing was enqueued
    assert listing.status_code == 200, listing.text
    r_client.close()


def test_job_listing_and_reads_survive_corrupt_records(open_app: RunningApp) -> None:
    fresh(open_app)
    from trainer.jobs import JobRecord, index_key, job_key
    from trainer.recipe import RetrainRequest

    prefix = open_app.state.settings.job_prefix
    client = redis.Redis.from_url(open_app.redis_url)
    good = JobRecord(id="retrain-good", request=RetrainRequest())
    # what the old gateway stored for {"temperatures": [NaN]}: pydantic writes NaN as null
    nan_record = json.loads(JobRecord(id="retrain-nan", request=RetrainRequest()).model_dump_json())
    nan_record["request"]["temperatures"] = [None]
    stored = {"retrain-good": good.model_dump_json(), "retrain-nan": json.dumps(nan_record),
              "retrain-garbage": "\x00{not json", "retrain-other": json.dumps({"id": 7, "state": "bogus"})}
    for i, (job_id, raw) in enumerate(stored.items()):
        client.set(job_key(prefix, job_id), raw)
        client.zadd(index_key(prefix), {job_id: time.time() + i})
    try:
        with open_app.client(headers=_admin(open_app)) as c:
            listing = c.get("/admin/jobs")
            one = {job_id: c.get(f"/admin/jobs/{job_id}") for job_id in stored}
            # the idempotency key whose job record is corrupt: a clear conflict, not a loop or a 500
            from trainer.jobs import job_id_for

            key = f"corrupt-{uuid.uuid4().hex[:6]}"
            client.set(job_key(prefix, job_id_for(key)), "{broken")
            again = c.post("/admin/retrain", json={"idempotency_key": key})
        assert listing.status_code == 200, listing.text
        jobs = {j["id"]: j for j in listing.json()["jobs"]}
        assert jobs["retrain-good"]["state"] == "queued"
        for bad in ("retrain-nan", "retrain-garbage", "retrain-other"):
            assert jobs[bad]["state"] == "unreadable" and jobs[bad]["error"], jobs[bad]
        assert "temperatures" in jobs["retrain-nan"]["error"]
        assert {k: r.status_code for k, r in one.items()} == dict.fromkeys(stored, 200)
        assert one["retrain-nan"].json()["state"] == "unreadable"
        assert _error(again, 409)["code"] == "job_unreadable"
    finally:
        client.delete(*[job_key(prefix, j) for j in stored], index_key(prefix))
        client.close()


# ---- 2. rate limits keyed on what a client cannot mint


def test_random_bearer_strings_share_their_address_budget(open_app: RunningApp) -> None:
    fresh(open_app)
    with open_app.client() as c:
        codes, windows = _burst(lambda i: c.post("/v1/solve", json={"problem": ""}, headers={
            "Authorization": f"Bearer {secrets.token_hex(16)}"}), 70)
    _assert_limited(codes, windows)
    assert set(codes) <= {422, 429}


def test_rotating_x_forwarded_for_is_ignored_without_a_trusted_proxy(open_app: RunningApp) -> None:
    fresh(open_app)
    with open_app.client() as c:
        codes, windows = _burst(lambda i: c.post("/v1/chat/completions", json={"model": "mathagent", "messages": []},
                                                 headers={"X-Forwarded-For": f"198.51.100.{i}"}), 30)
    _assert_limited(codes, windows)


def test_api_keys_are_verified_and_each_has_its_own_budget(keyed_app: RunningApp) -> None:
    fresh(keyed_app)
    with keyed_app.client() as c:
        # random bearers are refused, and the refusals count against the sender's address
        codes, windows = _burst(lambda i: c.post("/v1/solve", json={"problem": ""}, headers={
            "Authorization": f"Bearer {secrets.token_hex(16)}"}), 70)
        key_a, key_b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
        a, a_windows = _burst(lambda i: c.post("/v1/solve", json={"problem": ""}, headers=key_a), 3 * LIMIT)
        b = c.post("/v1/solve", json={"problem": ""}, headers=key_b)
    _assert_limited(codes, windows)
    assert set(codes) <= {401, 429} and codes[0] == 401
    _assert_limited(a, a_windows)
    assert a[0] == 422  # the key is accepted: the request reaches validation
    assert b.status_code == 422  # another key, its own budget
    # nothing in Redis holds a key in clear
    client = redis.Redis.from_url(keyed_app.redis_url)
    names = b" ".join(client.scan_iter(f"{keyed_app.state.settings.redis_prefix}:*"))
    client.close()
    assert b"ratelimit:requests:key:" in names
    assert KEY_A.encode() not in names and KEY_B.encode() not in names


def test_forwarded_for_from_a_trusted_proxy_names_the_client_and_spoofed_hops_do_not(proxied_app: RunningApp) -> None:
    fresh(proxied_app)
    def feedback(c: httpx.Client, forwarded: str) -> httpx.Response:
        return c.post("/v1/trajectories/nonexistent/feedback", json={"rating": "up"},
                      headers={"X-Forwarded-For": forwarded})

    with proxied_app.client() as c:
        # a client prepends random hops; the proxy appends the real one: one client, one budget
        codes, windows = _burst(lambda i: feedback(c, f"10.9.{i}.1, 203.0.113.7"), 20)
        other = feedback(c, "203.0.113.8")
    _assert_limited(codes, windows)
    assert other.status_code == 404  # another client behind the proxy: its own budget


# ---- 3. feedback bound to the solver; floods limited; gold only from trusted feedback


def _logged_gold(app: RunningApp, problem: str, tmp: Path) -> tuple[str | None, dict[str, int]]:
    """What retraining would take from the log for ``problem``: (gold, votes)."""
    from trainer.collect import logged_prompts

    s = app.state.settings
    prompts = asyncio.run(logged_prompts(s.redis_url, tmp, s.redis_prefix, limit=100, exclude=set()))
    found = [p for p in prompts if p.problem == problem]
    assert len(found) == 1, prompts
    return found[0].gold, found[0].votes


def test_feedback_flood_is_limited_and_cannot_change_the_training_label(open_app: RunningApp, tmp_path: Path) -> None:
    fresh(open_app)
    problem = f"What is 20 + 22? ({uuid.uuid4().hex[:6]})"
    with open_app.client() as c:
        solved = c.post("/v1/solve", json={"problem": problem}).json()
        tid, token = solved["trajectory_id"], solved["feedback_token"]
        assert token and len(token) >= 32
        # the solving caller, with its token: trusted, its answer is the label
        owner = c.post(f"/v1/trajectories/{tid}/feedback", json={"rating": "down", "answer": "42",
                                                                  "feedback_token": token})
    assert owner.status_code == 201 and owner.json()["trusted"] is True, owner.text
    assert _logged_gold(open_app, problem, tmp_path)[0] == "42"

    # an attacker who knows only the trajectory id: a forged token, then a flood of "corrected" answers
    with open_app.client() as attacker:
        forged = attacker.post(f"/v1/trajectories/{tid}/feedback",
                               json={"rating": "down", "answer": "666", "feedback_token": "0" * 32})
        codes, windows = _burst(lambda i: attacker.post(f"/v1/trajectories/{tid}/feedback",
                                                        json={"rating": "up", "answer": f"6{i}"}), 40)
    assert _error(forged, 403)["code"] == "invalid_feedback_token"
    _assert_limited(codes, windows, limit=4)
    assert codes[0] == 201
    gold, votes = _logged_gold(open_app, problem, tmp_path)
    assert gold == "42"  # the flood changed nothing a retrain would learn from
    assert sum(votes.values()) == 1  # one caller, one vote: its latest
    with open_app.client() as c:
        shown = c.get(f"/v1/trajectories/{tid}")
    feedback = shown.json()["feedback"]
    assert shown.status_code == 200 and len(feedback) == 2 and len(shown.content) < 100_000
    assert sorted((f["trusted"], f["corrected_answer"]) for f in feedback)[1] == (True, "42")


def test_feedback_cap_per_trajectory_and_latest_rating_per_caller(proxied_app: RunningApp) -> None:
    fresh(proxied_app)
    with proxied_app.client() as c:
        solved = c.post("/v1/solve", json={"problem": "What is 5 + 5?"}, headers={"X-Forwarded-For": "192.0.2.1"})
        tid = solved.json()["trajectory_id"]

        def post(client_ip: str, rating: str) -> httpx.Response:
            return c.post(f"/v1/trajectories/{tid}/feedback", json={"rating": rating},
                          headers={"X-Forwarded-For": client_ip})

        first = [post(f"192.0.2.{i}", "up").status_code for i in (10, 11, 12)]
        changed = post("192.0.2.10", "down")  # an existing caller may change its rating
        fourth = post("192.0.2.13", "up")  # a fourth caller: over the cap
        admin = c.post(f"/v1/trajectories/{tid}/feedback", json={"rating": "up", "answer": "10"},
                       headers={**_admin(proxied_app), "X-Forwarded-For": "192.0.2.14"})
        shown = c.get(f"/v1/trajectories/{tid}").json()["feedback"]
    assert first == [201, 201, 201] and changed.status_code == 201
    assert _error(fourth, 409)["code"] == "feedback_limit_reached"
    assert _error(admin, 409)["code"] == "feedback_limit_reached"  # the cap holds for everyone new
    assert sorted(f["rating"] for f in shown) == ["down", "up", "up"]  # 3 callers, the changed one's latest


# ---- 6. foreign Host, /readyz internals


def test_foreign_host_is_refused(open_app: RunningApp) -> None:
    fresh(open_app)
    port = open_app.url.rsplit(":", 1)[1]
    with open_app.client() as c:
        foreign = [c.get("/healthz", headers={"Host": h}) for h in
                   ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]:80", "", "a:b:c")]
        own = [c.get("/healthz", headers={"Host": h}) for h in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}")]
    for r in foreign:
        assert _error(r, 400)["code"] == "untrusted_host"
    assert [r.status_code for r in own] == [200, 200, 200]


def test_readyz_and_healthz_details_only_for_the_admin(open_app: RunningApp) -> None:
    fresh(open_app)
    with open_app.client() as c:
        public = c.get("/readyz").json()
        health = c.get("/healthz").json()
        detailed = c.get("/readyz", headers=_admin(open_app)).json()
    assert public["ready"] is True
    assert public["checks"]["sandbox"] == {"status": "up"} and public["checks"]["redis"] == {"status": "up"}
    assert set(public["checks"]["model"]) == {"status", "version"}
    text = json.dumps(public) + json.dumps(health)
    assert "pid" not in text and "uid" not in text and "redis://" not in text
    assert "detail" in detailed["checks"]["sandbox"] and detailed["checks"]["redis"]["url"].startswith("redis://")


def test_a_required_api_key_refuses_keyless_callers(keyed_app: RunningApp) -> None:
    fresh(keyed_app)
    callers = keyed_app.state.callers
    callers.require_key = True  # MATHAGENT_REQUIRE_API_KEY=1 on this gateway, for this test
    try:
        with keyed_app.client() as c:
            keyless = c.post("/v1/solve", json={"problem": ""})
            keyed = c.post("/v1/solve", json={"problem": ""}, headers={"Authorization": f"Bearer {KEY_A}"})
            feedback = c.post("/v1/trajectories/x/feedback", json={"rating": "up"})
    finally:
        callers.require_key = False
    assert _error(keyless, 401)["code"] == "missing_api_key" and keyless.headers["www-authenticate"].startswith("Bearer")
    assert keyed.status_code == 422
    assert _error(feedback, 401)["code"] == "missing_api_key"
