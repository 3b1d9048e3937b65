"""A small organisation with usage whose every figure is known, for the read-API tests.

    acme (team 1): boss (admin), eve (member), vic (viewer)   other (team 2): olga (admin)
    sol: a solo user

Streams, UTC, around the Europe/Berlin DST change (01:00 UTC on 2026-03-29):
    acme  T-A  eve   s1  03-28 10:00  gpt-4o       $0.35   completed  2 tools, 1 step
    acme  T-A  boss  s2  03-28 12:00  gpt-4o-mini  $0.21   error      1 tool, 2 steps (latest)
    acme  T-B  eve   s3  03-28 23:30  gpt-4o       $3.50   BYOK       (03-29 00:30 in Berlin)
    other T-O  olga  s4  03-28 11:00  gpt-4o       $0.035
    solo  T-S  sol   s5  03-28 09:00  gpt-4o       $0.50 stated
    acme  T-C  eve   s6  03-29 22:30  gpt-4o-mini  $0.015             (03-30 00:30 in Berlin, CEST)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.spec import validate_usage_response

DAY = datetime(2026, 3, 28, tzinfo=UTC)


def hour(h: float) -> str:
    return datetime.fromtimestamp(DAY.timestamp() + h * 3600, tz=UTC).isoformat()


@dataclass
class Org:
    boss: Person
    eve: Person
    vic: Person
    olga: Person
    sol: Person
    streams: dict[str, StreamEvents]


def post(client: TestClient, person: Person, events: list[dict[str, Any]]) -> None:
    answer = client.post("/api/v1/usage/events", json={"events": events}, headers=person.headers)
    assert answer.status_code == 200, answer.text


def build_org(client: TestClient, factory: Factory) -> Org:
    boss = factory.person("boss@acme.io", team="acme", role="admin")
    eve = factory.person("eve@acme.io", team="acme", role="member")
    vic = factory.person("vic@acme.io", team="acme", role="viewer")
    olga = factory.person("olga@other.io", team="other", role="admin")
    sol = factory.person("sol@solo.io")
    streams: dict[str, StreamEvents] = {}

    def stream(name: str, task: str, start_h: float, **started: Any) -> StreamEvents:
        s = StreamEvents(task, f"00000000-0000-4000-8000-00000000000{name[-1]}")
        s.started(0, time=hour(start_h), **started)
        streams[name] = s
        return s

    s1 = stream("s1", "T-A", 10, model="gpt-4o", task_title="Scan A")
    s1.llm(
        0,
        time=hour(10.01),
        model="gpt-4o",
        provider="openai",
        input_tokens=100_000,
        output_tokens=10_000,
        duration_ms=4000,
    )  # $0.35
    s1.tool(0, "nuclei", 1000, time=hour(10.02))
    s1.tool(0, "httpx", 500, time=hour(10.03))
    s1.step(0, 100, time=hour(10.04))
    s1.agent(0, "recon", time=hour(10.05))
    s1.finished(0, time=hour(10.5))
    post(client, eve, s1.events)

    s2 = stream("s2", "T-A", 12, model="gpt-4o-mini", task_title="Scan A, retry")
    s2.llm(
        0,
        time=hour(12.01),
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=1_000_000,
        output_tokens=100_000,
        duration_ms=2000,
    )  # $0.21
    s2.tool(0, "nuclei", 2000, time=hour(12.02))
    s2.step(0, 200, time=hour(12.03))
    s2.step(0, 301, time=hour(12.04))
    s2.finished(0, "error", error_message="target unreachable", time=hour(13))
    post(client, boss, s2.events)

    s3 = stream("s3", "T-B", 23.5, model="gpt-4o", is_byok=True)
    s3.llm(
        0,
        time=hour(23.6),
        model="gpt-4o",
        provider="openai",
        input_tokens=1_000_000,
        output_tokens=100_000,
        duration_ms=1000,
    )  # $3.50 BYOK
    s3.finished(0, time=hour(24))
    post(client, eve, s3.events)

    s4 = stream("s4", "T-O", 11, model="gpt-4o")
    s4.llm(
        0,
        time=hour(11.1),
        model="gpt-4o",
        provider="openai",
        input_tokens=10_000,
        output_tokens=1_000,
        duration_ms=500,
    )  # $0.035
    s4.finished(0, time=hour(11.2))
    post(client, olga, s4.events)

    s5 = stream("s5", "T-S", 9, model="gpt-4o", task_title="Solo scan")
    s5.llm(
        0,
        time=hour(9.1),
        model="gpt-4o",
        input_tokens=5,
        output_tokens=5,
        duration_ms=5,
        cost_usd="0.5",
    )
    s5.finished(0, time=hour(9.2))
    post(client, sol, s5.events)

    s6 = stream("s6", "T-C", 46.5, model="gpt-4o-mini")
    s6.llm(
        0,
        time=hour(46.6),
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=100_000,
        output_tokens=0,
        duration_ms=100,
    )  # $0.015
    s6.finished(0, time=hour(47))
    post(client, eve, s6.events)
    return Org(boss, eve, vic, olga, sol, streams)


def get(client: TestClient, person: Person | None, path: str, **params: Any) -> Any:
    headers = person.headers if person else {}
    answer = client.get(path, params=params, headers=headers)
    validate_usage_response(path, answer.status_code, answer.json())
    return answer
