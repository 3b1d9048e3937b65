"""`GET /metrics` on both stores: known events in, exact figures out."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from taskmeter.app import create_app
from taskmeter.config import Settings
from taskmeter.observability import metrics as metrics_module
from taskmeter.store import Store
from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.processes import serve, stop

SAMPLE = re.compile(r"^([a-z_]+)(\{.*\})? (\S+)$")


def _samples(text: str) -> dict[str, str]:
    """Each sample line as 'name{labels}' → value, checked against the text format: every
    series once, every family's TYPE once and before its samples."""
    out: dict[str, str] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            assert family not in typed, line
            typed.add(family)
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        family = re.sub(r"_(bucket|sum|count)$", "", match[1])
        assert family in typed or match[1] in typed, line
        key = f"{match[1]}{match[2] or ''}"
        assert key not in out, f"series twice: {key}"
        out[key] = match[3]
    return out


def _post(client: TestClient, person: Person, *streams: StreamEvents) -> dict[str, int]:
    events = [e for s in streams for e in s.events]
    answer = client.post("/api/v1/usage/events", json={"events": events}, headers=person.headers)
    assert answer.status_code in (200, 207), answer.text
    body = answer.json()
    return {"accepted": body["accepted"], "duplicates": body["duplicates"]}


def _usage(client: TestClient, factory: Factory) -> None:
    red = factory.person("ana@example.com", team="red", role="admin")
    solo = factory.person("bo@example.com")
    paid = StreamEvents("t-1")
    paid.started(0, model="gpt-4o")
    paid.llm(1, model="gpt-4o", cost_usd="1.50", input_tokens=1000, output_tokens=100)
    paid.llm(2, model="gpt-4o", cost_usd="0.50", input_tokens=500, output_tokens=50)
    paid.finished(3)
    byok = StreamEvents("t-2")
    byok.started(0, model="gpt-4o", is_byok=True)
    byok.llm(1, model="gpt-4o", cost_usd="0.70", input_tokens=200, output_tokens=20)
    # Still running: recorded figures count at once.
    assert _post(client, red, paid, byok) == {"accepted": 6, "duplicates": 0}
    assert _post(client, red, paid) == {"accepted": 0, "duplicates": 4}
    mine = StreamEvents("t-3")
    mine.started(0, model="claude-sonnet-4")
    mine.llm(1, model="claude-sonnet-4", cost_usd="0.25", input_tokens=300, output_tokens=30)
    mine.finished(2)
    mine.events.append({"id": "bad", "type": "llm.call", "stream_id": mine.stream_id})
    assert _post(client, solo, mine) == {"accepted": 3, "duplicates": 0}


def test_store_counters_and_process_figures(client: TestClient, factory: Factory) -> None:
    _usage(client, factory)
    assert client.get("/api/v1/usage/tasks/t-1", headers={"X-Api-Key": "nope"}).status_code == 401
    assert client.get("/no/such/path/12345").status_code == 404
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = _samples(answer.text)
    pid = os.getpid()
    assert got["taskmeter_metrics_store_up"] == "1"

    # 1 credit = 10 USD; BYOK charges the base amount × the default rate 0.1.
    red = 'team="red",model="gpt-4o"'
    assert got[f'taskmeter_credits_total{{{red},byok="false"}}'] == "0.2"
    assert got[f'taskmeter_credits_total{{{red},byok="true"}}'] == "0.007"
    assert got[f'taskmeter_llm_cost_usd_total{{{red},byok="false"}}'] == "2"
    assert got[f'taskmeter_llm_cost_usd_total{{{red},byok="true"}}'] == "0.7"
    solo = 'team="",model="claude-sonnet-4"'
    assert got[f'taskmeter_credits_total{{{solo},byok="false"}}'] == "0.025"
    assert got[f'taskmeter_tokens_total{{{red},byok="false",direction="input"}}'] == "1500"
    assert got[f'taskmeter_tokens_total{{{red},byok="false",direction="output"}}'] == "150"
    assert got[f'taskmeter_tokens_total{{{red},byok="true",direction="input"}}'] == "200"
    assert got[f'taskmeter_tokens_total{{{solo},byok="false",direction="input"}}'] == "300"

    assert got[f'taskmeter_ingest_events_total{{pid="{pid}",outcome="accepted"}}'] == "9"
    assert got[f'taskmeter_ingest_events_total{{pid="{pid}",outcome="duplicate"}}'] == "4"
    assert got[f'taskmeter_ingest_rejected_total{{pid="{pid}",code="invalid_event"}}'] == "1"

    ingest = f'pid="{pid}",method="POST",route="/api/v1/usage/events",status="'
    assert got[f'taskmeter_http_request_duration_seconds_count{{{ingest}200"}}'] == "2"
    assert got[f'taskmeter_http_request_duration_seconds_count{{{ingest}207"}}'] == "1"
    assert got[f'taskmeter_http_request_duration_seconds_bucket{{{ingest}200",le="+Inf"}}'] == "2"
    task = f'pid="{pid}",method="GET",route="/api/v1/usage/tasks/{{task_id:path}}",status="401"'
    assert got[f"taskmeter_http_request_duration_seconds_count{{{task}}}"] == "1"
    lost = f'pid="{pid}",method="GET",route="unmatched",status="404"'
    assert got[f"taskmeter_http_request_duration_seconds_count{{{lost}}}"] == "1"
    # No raw path, task, stream or user in any label.
    for forbidden in ("12345", "t-1", "ana@example.com", "bo@example.com"):
        assert forbidden not in "\n".join(k for k in got), forbidden


def test_buckets_are_cumulative_and_sum_to_the_count(client: TestClient) -> None:
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    got = _samples(client.get("/metrics").text)
    prefix = f'taskmeter_http_request_duration_seconds_bucket{{pid="{os.getpid()}",method="GET",'
    counts = [
        int(value)
        for key, value in got.items()
        if key.startswith(prefix + 'route="/healthz",status="200"')
    ]
    assert counts == sorted(counts) and counts[-1] == 3


def test_every_worker_answers_the_same_store_totals(
    settings: Settings, store: Store, client: TestClient, factory: Factory
) -> None:
    """A second app on the same store (another worker of `serve --workers 2`) has served
    nothing itself, yet reports the same credits and tokens, and its own process figures."""
    _usage(client, factory)
    other = create_app(settings, store=store)
    other.state.metrics.pid = "other-worker"
    with TestClient(other) as second:
        theirs = _samples(second.get("/metrics").text)
    ours = _samples(client.get("/metrics").text)
    for name in (
        "taskmeter_credits_total",
        "taskmeter_llm_cost_usd_total",
        "taskmeter_tokens_total",
    ):
        mine = {k: v for k, v in ours.items() if k.startswith(name + "{")}
        assert mine and mine == {k: v for k, v in theirs.items() if k.startswith(name + "{")}
    assert theirs['taskmeter_ingest_events_total{pid="other-worker",outcome="accepted"}'] == "0"


def test_models_beyond_the_cap_are_other(
    client: TestClient, factory: Factory, store: Store
) -> None:
    person = factory.person()
    streams = []
    for index, usd in enumerate(("3", "2", "1")):
        s = StreamEvents(f"cap-{index}", str(uuid.uuid4()))
        s.started(0, model=f"m{index}")
        s.llm(1, model=f"m{index}", cost_usd=usd)
        streams.append(s)
    _post(client, person, *streams)
    with store.read() as db:
        figures = metrics_module.store_figures(db, max_models=1)
    assert {(f.model, f.credits_nano) for f in figures} == {
        ("m0", 300_000_000),
        ("other", 300_000_000),
    }


def test_collectors_hook(client: TestClient) -> None:
    def backlog(db: Session) -> list[str]:
        return ["# TYPE taskmeter_test_backlog gauge", "taskmeter_test_backlog 7"]

    metrics_module.COLLECTORS.append(backlog)
    try:
        assert _samples(client.get("/metrics").text)["taskmeter_test_backlog"] == "7"
    finally:
        metrics_module.COLLECTORS.remove(backlog)


def test_serve_with_two_workers_scrapes_agree(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    """`serve --workers 2` for real: every scrape, whichever worker answers it, gives the same
    store totals; each worker's own ingest count is its share, and the shares add up."""
    ada = factory.person("ada@example.com", team="red", role="admin")
    process, base = serve(database_url, tmp_path, {"TASKMETER_WORKERS": "2"})
    try:
        accepted = 0
        for index in range(12):  # a fresh connection each: the kernel spreads them by hash
            s = StreamEvents(f"w-{index}")
            s.started(0, model="gpt-4o")
            s.llm(1, model="gpt-4o", cost_usd="0.10", input_tokens=10, output_tokens=1)
            answer = httpx.post(
                f"{base}/api/v1/usage/events", json={"events": s.events}, headers=ada.headers
            )
            accepted += answer.json()["accepted"]
        assert accepted == 24
        totals = set()
        shares: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(shares) < 2 or len(totals) == 0:
            assert time.monotonic() < deadline, shares
            got = _samples(httpx.get(f"{base}/metrics").text)
            totals.add(
                (
                    got['taskmeter_credits_total{team="red",model="gpt-4o",byok="false"}'],
                    got[
                        'taskmeter_tokens_total{team="red",model="gpt-4o",byok="false",'
                        'direction="input"}'
                    ],
                )
            )
            for key, value in got.items():
                share = re.fullmatch(
                    r'taskmeter_ingest_events_total\{pid="(\d+)",outcome="accepted"\}', key
                )
                if share:
                    shares[share[1]] = int(value)
    finally:
        stop(process)
    assert totals == {("0.12", "120")}
    assert sum(shares.values()) == accepted


def test_an_unreachable_store_costs_its_series_not_the_scrape() -> None:
    app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    # No lifespan: the migration on start would fail first.
    client = TestClient(app, raise_server_exceptions=False)
    client.get("/healthz")
    answer = client.get("/metrics")
    client.close()
    assert answer.status_code == 200
    got = _samples(answer.text)
    assert got["taskmeter_metrics_store_up"] == "0"
    assert not any(k.startswith("taskmeter_credits_total") for k in got)
    assert any(k.startswith("taskmeter_http_request_duration_seconds_count") for k in got)
