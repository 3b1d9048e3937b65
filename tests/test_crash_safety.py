"""No acknowledged event is lost, and none is counted twice, when `serve` is killed with SIGKILL
under sustained ingestion (events and OTLP) and restarted, on both stores.

Each round starts `taskmeter serve`, sends batches, and kills it -9 once a random number of
them are acknowledged, while the rest are being sent.
After the last round every batch is sent again (clients re-send what they are not sure of):
every event must then be stored exactly once, and the projections must count each once.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from sqlalchemy import func, select

from taskmeter.store import Store
from taskmeter.store.tables import Task, UsageEvent
from tests.events import StreamEvents
from tests.factories import Factory
from tests.processes import serve
from tests.test_otlp import record_agent_run

ROUNDS = 3
BATCHES = 60
PER_BATCH = 100


def test_sigkill_loses_no_acknowledged_event(
    database_url: str, factory: Factory, store: Store, tmp_path: Path
) -> None:
    factory.person("ada@example.com")
    key = factory.service_key()
    headers = {"X-Api-Key": key}
    rng = random.Random(1234)
    streams = [StreamEvents(f"crash-{i}") for i in range(5)]
    starts = [s.started(0, user="ada@example.com", model="gpt-4o") for s in streams]
    # Each round has batches of its own, so every kill lands during sustained ingestion.
    rounds: list[list[list[dict[str, Any]]]] = [
        [
            [
                streams[n % 5].step(1 + b, latency_ms=7, id=f"r{r}-b{b}-{n}")
                for n in range(PER_BATCH)
            ]
            for b in range(BATCHES)
        ]
        for r in range(ROUNDS)
    ]
    rounds[0].insert(0, starts)
    finishes = [s.finished(9999) for s in streams]
    batches = [batch for round_batches in rounds for batch in round_batches] + [finishes]
    otlp = [
        encode_spans(
            record_agent_run(f"crash-otlp-{r}", user="ada@example.com")
        ).SerializeToString()
        for r in range(ROUNDS)
    ]

    acknowledged: set[tuple[str, str]] = set()  # (stream, id): the idempotency key
    interrupted = 0
    for round_ in range(ROUNDS):
        process, base = serve(database_url, tmp_path)
        stop = threading.Event()
        todo = rounds[round_]
        done = [0]

        def send(
            base: str = base,
            stop: threading.Event = stop,
            todo: list[list[dict[str, Any]]] = todo,
            done: list[int] = done,
        ) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
                for batch in todo:
                    if stop.is_set():
                        return
                    try:
                        answer = client.post("/api/v1/usage/events", json={"events": batch})
                    except httpx.HTTPError:
                        return
                    if answer.status_code == 200:
                        acknowledged.update((e["stream_id"], e["id"]) for e in batch)
                        done[0] += 1

        with httpx.Client(
            base_url=base, headers={**headers, "content-type": "application/x-protobuf"}
        ) as client:
            assert client.post("/v1/traces", content=otlp[round_]).status_code == 200
        sender = threading.Thread(target=send)
        sender.start()
        # Killed by progress, not by the clock: once a random number of the round's batches
        # are acknowledged, while the rest are still being sent. (A kill timed 0.3-1 s in
        # came after the round's last batch on a fast machine, and proved nothing.)
        enough = rng.randint(1, BATCHES // 2)
        deadline = time.monotonic() + 60
        while done[0] < enough and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.005))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        sender.join(timeout=30)
        interrupted += done[0] < len(todo)

    process, base = serve(database_url, tmp_path)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for batch in batches:  # re-send everything: duplicates, never doubles
                answer = client.post("/api/v1/usage/events", json={"events": batch})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["accepted"] + body["duplicates"] == len(batch)
            for export in otlp:
                answer = client.post(
                    "/v1/traces", content=export, headers={"content-type": "application/x-protobuf"}
                )
                assert answer.status_code == 200
    finally:
        process.kill()
        process.wait(timeout=10)

    total = sum(len(b) for b in batches)
    with store.read() as db:
        stored = {
            (str(stream), event)
            for stream, event in db.execute(
                select(UsageEvent.stream_id, UsageEvent.event_id).where(
                    UsageEvent.task_id.like("crash-%"), UsageEvent.task_id.not_like("crash-otlp-%")
                )
            )
        }
        otlp_events = db.scalar(
            select(func.count())
            .select_from(UsageEvent)
            .where(UsageEvent.task_id.like("crash-otlp-%"))
        )
        tasks = {t.task_id: t for t in db.scalars(select(Task))}
    assert len(stored) == total, "every event sent is stored once"
    assert acknowledged <= stored, "an acknowledged event was lost"
    assert acknowledged, "the kills came too early to acknowledge anything"
    steps = sum(json.loads(tasks[f"crash-{i}"].usage)["step_count"] for i in range(5))
    assert steps == ROUNDS * BATCHES * PER_BATCH
    assert interrupted >= 1, "no kill interrupted ingestion: the test proved nothing"
    assert otlp_events == ROUNDS * 10  # per run: start, finish, 2 × (llm, step), 3 tools, 1 agent
    assert all(json.loads(tasks[f"crash-otlp-{r}"].usage)["llm_calls"] == 2 for r in range(ROUNDS))
    print(
        f"\ncrash safety: {total} events in {len(batches)} batches and {ROUNDS} OTLP exports, "
        f"{ROUNDS} SIGKILLs ({interrupted} mid-ingestion); {len(acknowledged)} acknowledged "
        "before the kills; "
        f"{len(stored)} stored once each after re-sending; {otlp_events} OTLP events"
    )
