"""Hostile event payloads: whatever a batch holds, the answer is a clear 200/207 (or 4xx for
a body that is not a batch), never a 5xx, and every valid event in it still lands."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.events import StreamEvents
from tests.factories import Factory
from tests.spec import assert_error_response

FIELDS = [
    "id",
    "type",
    "time",
    "stream_id",
    "task_id",
    "user",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "duration_ms",
    "cost_usd",
    "tool_name",
    "agent_name",
    "latency_ms",
    "status",
    "error_message",
    "total_execution_ms",
    "is_byok",
    "task_title",
]
TYPES = [
    "stream.started",
    "llm.call",
    "tool.call",
    "agent.triggered",
    "step.completed",
    "stream.finished",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            *TYPES,
            "2026-05-01T08:00:00Z",
            "9999-99-99",
            "' OR 1=1 --",
            "\x00",
            "ü" * 300,
            str(uuid.uuid4()),
        ]
    )
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
events = st.dictionaries(st.sampled_from(FIELDS), values, max_size=12)
COUNTER = itertools.count()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    junk=st.lists(events | values, max_size=8),
    mutate=st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=3),
)
def test_no_payload_breaks_a_batch(
    client: TestClient, factory: Factory, junk: list[Any], mutate: list[tuple[str, Any]]
) -> None:
    n = next(COUNTER)
    if not factory.store_has_user("fuzz@example.com"):
        factory.person("fuzz@example.com")
    key = factory.service_key(f"fuzz-{n}")
    good = StreamEvents(f"fuzz-task-{n}")
    valid = [good.started(0, user="fuzz@example.com", model="gpt-4o"), good.step(1)]
    # A valid event with a few fields replaced by hostile values.
    broken = dict(good.step(2, id=f"broken-{n}"))
    for name, value in mutate:
        broken[name] = value
    batch = [*valid, broken, *junk]
    # Raw bytes, NaN and Infinity included: a hostile client is not bound by strict JSON.
    answer = client.post(
        "/api/v1/usage/events",
        content=json.dumps({"events": batch}),
        headers={"X-Api-Key": key, "content-type": "application/json"},
    )
    assert answer.status_code in (200, 207), answer.text
    body = answer.json()
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(batch)
    assert body["accepted"] >= 2, "the valid events of a batch always land"
    for rejection in body["rejected"]:
        assert (
            rejection["code"]
            in (
                "invalid_event",
                "unknown_type",
                "negative_count",
                "task_mismatch",
                "forbidden_stream",
                "user_required",
                "unknown_user",
            )
            and rejection["message"]
        )


def test_bodies_that_are_not_batches(client: TestClient, factory: Factory) -> None:
    key = factory.service_key()
    nested = b'{"events": [' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"]}"
    for body in (
        nested,
        b'{"events": "' + b"x" * 4_000_000 + b'"}',
        b"\xef\xbb\xbf{}",
        b'{"events": [1, 2, 3]' + b" " * 100,
    ):
        answer = client.post(
            "/api/v1/usage/events",
            content=body,
            headers={"X-Api-Key": key, "content-type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, (body[:40], answer.status_code)
        assert_error_response(answer.json())
