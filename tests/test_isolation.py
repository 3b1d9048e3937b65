"""No one reads or writes outside their scope, over random organisations (both stores).

Hypothesis draws teams (an admin, members, viewers), solo users and their streams, with task
ids deliberately shared between scopes. Then every principal asks every read endpoint, with
filters and search strings aimed at other scopes' rows, and must get exactly the rows of its
own scope: a team admin the team's, a solo user their own, members and viewers nothing (403).
Writes aimed at another user's stream, natively or through an OTLP attribute, are refused.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.spec import validate_usage_response
from tests.test_otlp import record_agent_run

TASK_IDS = ["alpha", "beta", "gamma", "d' OR 1=1 --", "ünï%_"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]
ENDPOINTS = ["streams", "tasks", "summary"]
_orgs = itertools.count()


@dataclass
class Scope:
    """Who sees what: the admin or solo user who reads it, and the streams it holds."""

    reader: Person
    members: list[Person]
    idle: list[Person] = field(default_factory=list)  # members and viewers: 403
    streams: dict[str, str] = field(default_factory=dict)  # stream id -> task id


scope_shape = st.tuples(
    st.integers(0, 3),  # members and viewers besides the admin (0 for a solo user)
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(TASK_IDS)), max_size=5),
)
org_shape = st.tuples(
    st.lists(scope_shape, min_size=1, max_size=3),  # teams
    st.lists(scope_shape.map(lambda s: (0, s[1])), max_size=2),  # solo users
)


def build(client: TestClient, factory: Factory, shape: Any) -> list[Scope]:
    teams, solos = shape
    n = next(_orgs)
    scopes: list[Scope] = []
    events: list[dict[str, Any]] = []
    for t, (extra, streams) in enumerate([*teams, *solos]):
        is_team = t < len(teams)
        name = f"o{n}-t{t}"
        reader = factory.person(
            f"admin-{name}@example.com", team=name if is_team else None, role="admin"
        )
        idle = [
            factory.person(
                f"m{m}-{name}@example.com", team=name, role="member" if m % 2 else "viewer"
            )
            for m in range(extra)
        ]
        scope = Scope(reader, [reader, *idle], idle)
        for who, task_id in streams:
            owner = scope.members[who % len(scope.members)]
            s = StreamEvents(task_id)
            s.started(0, user=owner.email, model=MODELS[len(events) % 3])
            s.llm(1, model="gpt-4o", input_tokens=100, output_tokens=10)
            s.finished(2)
            events += s.events
            scope.streams[s.stream_id] = task_id
        scopes.append(scope)
    key = factory.service_key(f"ingest-{n}")
    if events:
        answer = client.post("/api/v1/usage/events", json={"events": events}, headers=_key(key))
        assert answer.status_code == 200, answer.text
    return scopes


def _key(key: str) -> dict[str, str]:
    return {"X-Api-Key": key}


def _get(client: TestClient, person: Person, path: str, **params: Any) -> Any:
    answer = client.get(f"/api/v1/usage/{path}", params=params, headers=person.headers)
    validate_usage_response(f"/api/v1/usage/{path}", answer.status_code, answer.json())
    return answer


def check_reads(client: TestClient, scope: Scope, others: list[Scope]) -> None:
    reader = scope.reader
    emails = {p.email for p in scope.members}
    streams = _get(client, reader, "streams", limit=200).json()
    assert {r["stream_id"] for r in streams["data"]} == set(scope.streams)
    assert {r.get("email", reader.email) for r in streams["data"]} <= emails
    tasks = _get(client, reader, "tasks", limit=200).json()
    assert {r["task_id"] for r in tasks["data"]} == set(scope.streams.values())
    summary = _get(client, reader, "summary").json()
    assert summary["total_tasks"] == len(set(scope.streams.values()))

    per_task: dict[str, int] = defaultdict(int)
    for task_id in scope.streams.values():
        per_task[task_id] += 1
    for task_id in TASK_IDS:
        answer = _get(client, reader, f"tasks/{quote(task_id, safe='')}")
        if task_id in per_task:
            assert answer.status_code == 200
            assert answer.json()["stream_count"] == per_task[task_id]
        else:
            assert answer.status_code == 404
    # Filters and search strings that name other scopes' rows find nothing of theirs.
    for other in others:
        for stream_id, task_id in other.streams.items():
            rows = _get(client, reader, "streams", stream_id=stream_id).json()["data"]
            assert rows == []
            for path in ("streams", "tasks"):
                found = _get(client, reader, path, search=task_id, limit=200).json()["data"]
                assert {r["task_id"] for r in found} <= set(scope.streams.values())
        for person in other.members:
            answer = _get(client, reader, "streams", email=person.email)
            assert answer.status_code in (200, 403)  # a solo user may not filter by email
            if answer.status_code == 200:
                assert answer.json()["data"] == []
            found = _get(client, reader, "tasks", search=person.email).json()["data"]
            assert {r.get("email", reader.email) for r in found} <= emails
    for person in scope.idle:
        for path in ENDPOINTS:
            assert _get(client, person, path).status_code == 403


def check_writes(client: TestClient, scope: Scope, others: list[Scope]) -> None:
    """A user's own key cannot add to, or start, another user's stream."""
    me = scope.reader
    for other in others:
        if not other.streams:
            continue
        stream_id, task_id = next(iter(other.streams.items()))
        intrusion = StreamEvents(task_id, stream_id).step(5, id="intrusion")
        answer = client.post(
            "/api/v1/usage/events", json={"events": [intrusion]}, headers=me.headers
        )
        assert answer.status_code == 207
        assert answer.json()["rejected"][0]["code"] == "forbidden_stream"
        victim = other.members[0].email
        export = encode_spans(record_agent_run(f"otlp-{task_id}", user=victim))
        answer = client.post(
            "/v1/traces",
            content=export.SerializeToString(),
            headers={**me.headers, "content-type": "application/x-protobuf"},
        )
        assert answer.status_code == 200
        assert (
            _get(client, other.reader, f"tasks/otlp-{quote(task_id, safe='')}").status_code == 404
        )


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=org_shape)
def test_scopes_never_leak(client: TestClient, factory: Factory, shape: Any) -> None:
    scopes = build(client, factory, shape)
    for scope in scopes:
        others = [o for o in scopes if o is not scope]
        check_reads(client, scope, others)
        check_writes(client, scope, others)
        check_reads(client, scope, others)  # the refused writes changed nothing
