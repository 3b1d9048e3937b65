"""Order and repetition never matter: any arrival of the same events gives identical rows.

Hypothesis draws a task of 1-3 streams with random events (ties in time included, some
streams never started or never finished, competing start and finish events), then ingests it
twice: once in order in one batch, once shuffled, split into random batches and partly
re-sent. The stream and task rows must come out byte-identical.
"""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.tables import Stream, Task
from taskmeter.usage.figures import stream_figures, to_task_usage
from tests.events import at
from tests.factories import Factory

SERVICE = Principal(via="api_key", key_id="key_test", service_name="property-test")
EXAMPLES = itertools.count()
TOOLS = ["nuclei", "httpx", "nmap", "sqlmap"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "acme-unpriced"]


@st.composite
def stream_events(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    second = st.integers(0, 40)
    events: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 2))):  # 0: never started; 2: competing starts
        events.append(
            {
                "type": "stream.started",
                "time": draw(second),
                "user": "ada@example.com",
                "model": draw(st.none() | st.sampled_from(MODELS)),
                "task_title": draw(
                    st.none()
                    | st.text(
                        # Valid Unicode only: a lone surrogate is its own rejection
                        # (test_ingest.py), not an arrival order.
                        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                        max_size=8,
                    )
                ),
                "is_byok": draw(st.booleans()),
                "n": f"s{n}",
            }
        )
    for n in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["llm.call", "tool.call", "agent.triggered", "step.completed"]))
        event: dict[str, Any] = {"type": kind, "time": draw(second), "n": f"x{n}"}
        if kind == "llm.call":
            input_tokens = draw(st.integers(0, 50_000))
            event.update(
                model=draw(st.sampled_from(MODELS)),
                input_tokens=input_tokens,
                output_tokens=draw(st.integers(0, 5_000)),
                cache_read_tokens=draw(st.integers(0, input_tokens)),
                duration_ms=draw(st.integers(0, 9_000)),
            )
        elif kind == "tool.call":
            event.update(
                tool_name=draw(st.sampled_from(TOOLS)), duration_ms=draw(st.integers(0, 9_000))
            )
        elif kind == "agent.triggered":
            event.update(agent_name=draw(st.sampled_from(["recon", "exploit"])))
        else:
            event.update(latency_ms=draw(st.integers(0, 5_000)))
        events.append(event)
    for n in range(draw(st.integers(0, 2))):
        events.append(
            {
                "type": "stream.finished",
                "time": draw(st.integers(40, 60)),
                "status": draw(st.sampled_from(["completed", "error", "aborted"])),
                "error_message": draw(st.none() | st.just("boom")),
                "n": f"f{n}",
            }
        )
    for event in events:
        event["stream"] = index
    return events


@st.composite
def task_and_arrival(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[int]]]:
    streams = draw(st.integers(1, 3))
    events = [e for i in range(streams) for e in draw(stream_events(i))]
    order = draw(st.permutations(range(len(events))))
    resent = draw(st.lists(st.sampled_from(range(len(events))), max_size=5)) if events else []
    arrival = list(order) + resent
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=4)))
    batches = [arrival[a:b] for a, b in itertools.pairwise([0, *cuts, len(arrival)])]
    return events, [b for b in batches if b]


def materialise(events: list[dict[str, Any]], example: int, run: str) -> list[dict[str, Any]]:
    """Concrete events: stream ids keep their relative order between runs (ties break on it)."""
    out = []
    for e in events:
        body = {k: v for k, v in e.items() if k not in ("n", "stream", "time")}
        out.append(
            {
                **body,
                "id": e["n"],
                "time": at(e["time"]),
                "stream_id": f"{e['stream']:08x}-{run}000-4000-8000-{example:012x}",
                "task_id": f"task-{example}-{run}",
            }
        )
    return out


def snapshot(store: Store, example: int, run: str) -> str:
    task_id = f"task-{example}-{run}"
    with store.read() as db:
        streams = db.scalars(
            select(Stream).where(Stream.task_id == task_id).order_by(Stream.stream_id)
        ).all()
        task = db.scalars(select(Task).where(Task.task_id == task_id)).one_or_none()
        rows = [
            to_task_usage(stream_figures(s), as_task=False)
            for s in streams
            if s.started and s.status is not None
        ]
        hidden = [
            (s.started, s.status, s.llm_calls, s.tool_history, s.base_nano)
            for s in streams
            if not (s.started and s.status is not None)
        ]
        task_usage = json.loads(task.usage) if task else None
    text = json.dumps({"streams": rows, "hidden": hidden, "task": task_usage})
    return text.replace(task_id, "TASK").replace(f"{run}000-4000", "R000-4000")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=task_and_arrival())
def test_any_arrival_gives_byte_identical_rows(
    store: Store, factory: Factory, case: tuple[list[dict[str, Any]], list[list[int]]]
) -> None:
    if not factory.store_has_user("ada@example.com"):
        factory.person("ada@example.com")
    ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
    events, batches = case
    example = next(EXAMPLES)
    in_order = materialise(events, example, "1")
    result = ingestor.ingest(SERVICE, in_order)
    assert result.accepted == len(events) and not result.rejected
    scattered = materialise(events, example, "2")
    accepted = duplicates = 0
    for batch in batches:
        result = ingestor.ingest(SERVICE, [scattered[i] for i in batch])
        assert not result.rejected
        accepted += result.accepted
        duplicates += result.duplicates
    assert (accepted, duplicates) == (len(events), sum(map(len, batches)) - len(events))
    assert snapshot(store, example, "1") == snapshot(store, example, "2")
