"""Property-based requests from OpenAI's own spec (schemathesis): whatever a client sends,
well-formed or not, the server answers without a 5xx."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

SPEC = Path(__file__).with_name("openapi") / "openai-openapi.yaml"
schema = schemathesis.openapi.from_path(SPEC)

EXAMPLES = 25  # per operation: ~50 operations, well inside the suite's time budget


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure here is a failure in CI too
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    response = case.call(base_url=f"{base_url}/v1", timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
