"""Property-based requests generated from the gateway's own OpenAPI schema (schemathesis):
whatever a client sends that the schema allows - or breaks - the gateway never answers 5xx.

Examples are bounded per operation and mode so the run stays short; derandomized so a failure
reproduces. (Driven through ``get_all_operations`` rather than schemathesis' pytest plugin,
whose lazy-fixture loader does not run under this pytest version.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from support.gateway_stack import RunningApp

EXAMPLES = 6


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_on_generated_input(tiny_app: RunningApp, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{tiny_app.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/solve", "/v1/chat/completions", "/admin/deploy", "/readyz"}
    tried = 0
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case: schemathesis.Case) -> None:
            nonlocal tried
            tried += 1
            case.call_and_validate(base_url=tiny_app.url, checks=[not_a_server_error], timeout=120)

        try:
            check()
        except Unsatisfiable:  # nothing invalid can be sent to an operation without inputs
            assert mode is GenerationMode.NEGATIVE
    assert tried >= (len(operations) if mode is GenerationMode.POSITIVE else 10)
