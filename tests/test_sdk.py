"""The Python SDK against a live server, on both stores: the read clients and the Recorder."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from taskmeter.app import create_app
from taskmeter.client import AsyncUsageClient, TaskmeterError, UsageClient
from taskmeter.config import Settings
from taskmeter.recorder import Recorder
from taskmeter.store import Store
from tests.factories import Factory
from tests.usage_org import build_org


def test_usage_client_reads_every_endpoint(
    live_server: str, factory: Factory, store: Store
) -> None:
    with httpx.Client(base_url=live_server) as http:
        org = build_org(http, factory)
    with UsageClient(live_server, api_key=org.boss.key) as usage:
        page = usage.streams(limit=2, sort="cost")
        assert (
            page.total,
            page.has_more,
            [r.stream_id[-2:] for r in page.data if r.stream_id],
        ) == (4, True, ["03", "01"])
        assert [t.task_id for t in usage.iter_tasks(limit=1)] == ["T-C", "T-B", "T-A"]
        assert len(list(usage.iter_streams(since="2026-03-28T11:00:00Z"))) == 3
        task = usage.task("T-A")
        assert (task.stream_count, task.status, task.neo_credits) == (2, "error", 0.056)
        assert task.tool_breakdown and task.tool_breakdown["nuclei"].calls == 2
        summary = usage.summary(
            group_by="day", tz="Europe/Berlin", since="2026-03-28", until="2026-03-30"
        )
        assert summary.total_tasks == 3 and summary.by_period is not None
        with pytest.raises(TaskmeterError) as missing:
            usage.task("nope/with/slashes")
        assert (missing.value.status, missing.value.code) == (404, "not_exists")
        with pytest.raises(TaskmeterError) as bad:
            usage.streams(status="running")
        assert bad.value.code == "invalid_request"
    with (
        UsageClient(live_server, api_key=org.eve.key) as member,
        pytest.raises(TaskmeterError) as forbidden,
    ):
        member.tasks()
    assert forbidden.value.code == "forbidden"
    with (
        UsageClient("http://127.0.0.1:1", api_key="x") as nowhere,
        pytest.raises(TaskmeterError) as down,
    ):
        nowhere.tasks()
    assert down.value.code == "unreachable"


def test_async_usage_client(live_server: str, factory: Factory) -> None:
    with httpx.Client(base_url=live_server) as http:
        org = build_org(http, factory)

    async def read() -> tuple[list[str], float, str]:
        async with AsyncUsageClient(live_server, api_key=org.boss.key) as usage:
            ids = [t.task_id async for t in usage.iter_tasks(limit=2)]
            summary = await usage.summary()
            task = await usage.task("T-B")
            return ids, summary.total_neo_credits, task.model

    assert asyncio.run(read()) == (["T-C", "T-B", "T-A"], 0.0925, "gpt-4o")


def test_recorder_records_streams(live_server: str, factory: Factory) -> None:
    ada = factory.person("ada@example.com")
    recorder = Recorder(live_server, api_key=ada.key, flush_interval=0.05)
    with recorder.stream(task_id="sdk-1", model="gpt-4o", title="SDK run") as s:
        s.agent_triggered("recon")
        s.llm_call(
            model="gpt-4o",
            provider="openai",
            input_tokens=10_000,
            output_tokens=1_000,
            duration_ms=700,
        )
        s.step(700)
        s.tool_call("nmap", duration_ms=1500)
        with s.tool_call("nuclei"):
            time.sleep(0.02)

        @s.tool_call("httpx")
        def probe() -> str:
            return "200 OK"

        assert probe() == "200 OK"
    with pytest.raises(RuntimeError), recorder.stream(task_id="sdk-2") as failing:
        failing.step(5)
        raise RuntimeError("target refused the connection")
    assert recorder.flush(timeout=30)
    recorder.close()
    with UsageClient(live_server, api_key=ada.key) as usage:
        ok, broken = usage.task("sdk-1"), usage.task("sdk-2")
    assert (ok.status, ok.task_title, ok.llm_calls, ok.step_count, ok.agent_triggers) == (
        "completed",
        "SDK run",
        1,
        1,
        1,
    )
    assert ok.tool_breakdown is not None and set(ok.tool_breakdown) == {"nmap", "nuclei", "httpx"}
    assert ok.tool_breakdown["nuclei"].total_duration_ms >= 20
    assert ok.neo_credits == 0.0035  # gpt-4o: 10k × $2.5 + 1k × $10 per MTok = $0.035
    assert (broken.status, broken.error_message) == ("error", "target refused the connection")
    assert recorder.sent == 11 and recorder.dropped == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def late_server(settings: Settings, store: Store) -> Iterator[tuple[str, threading.Event]]:
    """A server that comes up only when the test sets the event."""
    port = _free_port()
    up = threading.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store=store), host="127.0.0.1", port=port, log_level="warning"
        )
    )

    def run() -> None:
        up.wait()
        server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", up
    up.set()
    server.should_exit = True
    thread.join(timeout=10)


def test_recorder_rides_out_a_server_that_is_down(
    late_server: tuple[str, threading.Event], factory: Factory
) -> None:
    url, up = late_server
    ada = factory.person("ada@example.com")
    recorder = Recorder(url, api_key=ada.key, flush_interval=0.05, max_backoff=0.5)
    with recorder.stream(task_id="outage") as s:
        for _ in range(20):
            s.step(10)
    assert not recorder.flush(timeout=1.5)  # nothing can be delivered yet
    up.set()
    assert recorder.flush(timeout=30)
    recorder.close()
    with UsageClient(url, api_key=ada.key) as usage:
        assert usage.task("outage").step_count == 20
    assert recorder.dropped == 0


class LoseFirstAnswers(httpx.HTTPTransport):
    """Delivers each request, but loses the first two answers on the way back."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self.lost < 2:
            self.lost += 1
            response.read()
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response


def test_retries_after_a_lost_answer_are_duplicates_not_doubles(
    live_server: str, factory: Factory
) -> None:
    ada = factory.person("ada@example.com")
    transport = LoseFirstAnswers()
    recorder = Recorder(
        live_server, api_key=ada.key, flush_interval=0.05, max_backoff=0.2, transport=transport
    )
    with recorder.stream(task_id="lost-answer") as s:
        for _ in range(7):
            s.step(3)
    assert recorder.flush(timeout=30)
    recorder.close()
    assert transport.lost == 2
    with UsageClient(live_server, api_key=ada.key) as usage:
        assert usage.task("lost-answer").step_count == 7
