"""`taskmeter demo`: a realistic organisation with 90 days of usage, through the real ingest path.

A team (admin, members, a viewer) and a solo user; a few hundred security-agent tasks of one
to three streams, on several real models, calling security tools, with BYOK streams, errors
and aborts. Events go through the same `Ingestor` as `POST /api/v1/usage/events` (validation,
pricing, projections); their ids are derived from the seed, so running the demo twice records
nothing twice.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from taskmeter.config import Settings
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.credits import NANO, grant_credits
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.timeutil import utc_now

__all__ = ["DemoResult", "run_demo"]

TEAM = "Acme Security"
PEOPLE = [  # email, team role (None: solo), BYOK platform rate
    ("admin@acme.example", "admin", None),
    ("maria@acme.example", "member", None),
    ("kenji@acme.example", "member", Decimal("0.05")),
    ("viewer@acme.example", "viewer", None),
    ("solo@indie.example", None, None),
]
MODELS = [
    ("gpt-4o", "openai", 5),
    ("gpt-4o-mini", "openai", 4),
    ("claude-sonnet-4-5", "anthropic", 4),
    ("claude-3-5-haiku-20241022", "anthropic", 2),
    ("gemini-2.5-pro", "google", 2),
]
TOOLS = [
    "nuclei",
    "httpx",
    "subfinder",
    "nmap",
    "katana",
    "ffuf",
    "sqlmap",
    "dnsx",
    "naabu",
    "gau",
    "dalfox",
    "trufflehog",
    "semgrep",
    "tlsx",
    "wpscan",
    "nikto",
]
TARGETS = [
    "example.com",
    "shop.example.org",
    "api.example.net",
    "staging.acme.example",
    "intranet.acme.example",
    "payments.example.io",
    "blog.example.dev",
]
JOBS = [
    "Recon",
    "Vulnerability scan",
    "Subdomain takeover check",
    "API fuzzing",
    "Secrets scan",
    "TLS audit",
    "SQL injection triage",
    "XSS hunt",
]


@dataclass(frozen=True)
class DemoResult:
    keys: dict[str, str]
    tasks: int
    streams: int
    events: int


def _stream_events(
    rng: random.Random, *, seed: int, task_id: str, n: int, owner: str, start: datetime, title: str
) -> list[dict[str, Any]]:
    stream_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    model, provider, _ = rng.choices(MODELS, weights=[m[2] for m in MODELS])[0]
    events: list[dict[str, Any]] = []
    clock = start

    def add(kind: str, **fields: Any) -> None:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(200, 4000))
        events.append(
            {
                "id": f"demo{seed}-{task_id}-{n}-{len(events)}",
                "type": kind,
                "time": clock.isoformat(),
                "stream_id": stream_id,
                "task_id": task_id,
                **fields,
            }
        )

    add("stream.started", user=owner, model=model, task_title=title, is_byok=rng.random() < 0.12)
    for _ in range(rng.randint(2, 14)):
        prompt = rng.randint(2_000, 60_000)
        add(
            "llm.call",
            model=model,
            provider=provider,
            input_tokens=prompt,
            output_tokens=rng.randint(100, 3_000),
            cache_read_tokens=rng.randint(0, prompt // 2),
            duration_ms=rng.randint(400, 15_000),
        )
        add("step.completed", latency_ms=rng.randint(400, 15_000))
        for _ in range(rng.randint(0, 5)):
            add("tool.call", tool_name=rng.choice(TOOLS), duration_ms=rng.randint(50, 90_000))
        if rng.random() < 0.2:
            add("agent.triggered", agent_name=rng.choice(["recon", "exploit", "reporter"]))
    outcome = rng.random()
    if outcome < 0.08:
        add(
            "stream.finished",
            status="error",
            error_message=rng.choice(
                ["target unreachable", "tool crashed: exit 137", "rate limited by target"]
            ),
        )
    elif outcome < 0.11:
        add("stream.finished", status="aborted", error_message="stopped by user")
    elif outcome < 0.13:
        add("stream.finished", status="blocked", error_message="scope check refused target")
    else:
        add("stream.finished", status="completed")
    return events


def run_demo(store: Store, settings: Settings, *, tasks: int = 300, seed: int = 7) -> DemoResult:
    rng = random.Random(seed)
    keys: dict[str, str] = {}
    with store.write() as db:
        for email, role, rate in PEOPLE:
            try:
                service.find_user(db, email)
            except service.NoSuchThing:
                service.create_user(db, email, neo_cost_rate=rate)
                if role == "admin":
                    service.create_team(db, TEAM, email)
                    grant_credits(
                        db,
                        amount_nano=500 * NANO,
                        team_name=TEAM,
                        expires_at=utc_now() + timedelta(days=365),
                    )
                elif role is not None:
                    service.add_member(db, TEAM, email, role)
                else:
                    grant_credits(db, amount_nano=50 * NANO, user_email=email)
            keys[email] = service.create_key(db, email=email, name="demo").plaintext
    ingestor = Ingestor(
        store,
        PriceBook(settings.prices_file),
        credit_usd=settings.credit_usd,
        default_rate=settings.neo_cost_rate,
    )
    principal = Principal(via="api_key", key_id="demo", service_name="demo")
    runners = [email for email, role, _ in PEOPLE if role != "viewer"]
    end = utc_now().replace(microsecond=0)
    events: list[dict[str, Any]] = []
    streams = 0
    for t in range(tasks):
        start = end - timedelta(seconds=rng.randint(3600, 90 * 86_400))
        owner = rng.choices(runners, weights=[3, 4, 3, 2])[0]
        title = f"{rng.choice(JOBS)}: {rng.choice(TARGETS)}"
        task_id = f"task-{seed}-{t:04d}"
        for n in range(rng.choices([1, 2, 3], weights=[7, 2, 1])[0]):
            events += _stream_events(
                rng,
                seed=seed,
                task_id=task_id,
                n=n,
                owner=owner,
                start=start + timedelta(minutes=20 * n),
                title=title,
            )
            streams += 1
    for i in range(0, len(events), 1000):
        ingestor.ingest(principal, events[i : i + 1000])
    return DemoResult(keys=keys, tasks=tasks, streams=streams, events=len(events))
