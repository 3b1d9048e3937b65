"""`taskmeter demo`: a realistic organisation with 90 days of usage, through the real ingest path.

A team (admin, members, a viewer) and a solo user; a few hundred security-agent tasks of one
to three streams, on several real models, calling security tools, with BYOK streams, errors
and aborts; a team project with two in five of the team's tasks; spending caps on the team
(a month) and on the project (in all). A stream's calls lie on its timeline
(taskmeter/timeline.py): steps one after another, now and then a parallel burst of tool
calls; a task's streams follow one another. Events go through the same `Ingestor` as
`POST /api/v1/usage/events` (validation, pricing, projections); their ids are derived from
the seed, so running the demo twice records nothing twice.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from taskmeter.config import Settings
from taskmeter.governance.caps import CapTarget, set_cap
from taskmeter.governance.projects import create_project, find_project, owner_scope
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.credits import NANO, grant_credits
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.timeline import lay_out
from taskmeter.timeutil import utc_now

__all__ = ["DemoResult", "run_demo"]

TEAM = "Acme Security"
PROJECT = "External pentest"  # the team's project: two in five of its tasks, and a cap
# Spending caps in credits: the team's a month (it spends about 4), the project's in all
# (a budget for the engagement; its 90 days spent about 5).
TEAM_CAP, PROJECT_CAP = 6, 8
PER = {"month": "a month", "total": "in total"}
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
    caps: list[str]


def _stream_events(
    rng: random.Random,
    *,
    seed: int,
    task_id: str,
    n: int,
    owner: str,
    start: datetime,
    title: str,
    project: str | None,
) -> tuple[list[dict[str, Any]], datetime]:
    """One stream's events, its calls laid out on its timeline; and when it finished."""
    stream_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    model, provider, _ = rng.choices(MODELS, weights=[m[2] for m in MODELS])[0]
    events: list[dict[str, Any]] = []
    start_ms = int(start.timestamp() * 1000)

    def add(kind: str, at_ms: int, **fields: Any) -> None:
        events.append(
            {
                "id": f"demo{seed}-{task_id}-{n}-{len(events)}",
                "type": kind,
                "time": (start + timedelta(milliseconds=at_ms - start_ms)).isoformat(),
                "stream_id": stream_id,
                "task_id": task_id,
                **fields,
            }
        )

    steps = [
        (rng.randint(400, 15_000), [rng.randint(50, 90_000) for _ in range(rng.randint(0, 5))])
        for _ in range(rng.randint(2, 14))
    ]
    layout = lay_out(rng.random, start_ms, steps, burst=0.15)
    started: dict[str, Any] = {"user": owner, "model": model, "task_title": title}
    if project is not None:
        started["project"] = project
    add("stream.started", start_ms, **started, is_byok=rng.random() < 0.12)
    tools = iter(layout.tool_at)
    for (think, took), model_at, step_end in zip(
        steps, layout.model_at, layout.step_end, strict=True
    ):
        prompt = rng.randint(2_000, 60_000)
        add(
            "llm.call",
            model_at,
            model=model,
            provider=provider,
            input_tokens=prompt,
            output_tokens=rng.randint(100, 3_000),
            cache_read_tokens=rng.randint(0, prompt // 2),
            duration_ms=think,
        )
        for duration in took:
            add("tool.call", next(tools), tool_name=rng.choice(TOOLS), duration_ms=duration)
        add("step.completed", step_end, latency_ms=step_end - model_at)
        if rng.random() < 0.2:
            agent = rng.choice(["recon", "exploit", "reporter"])
            add("agent.triggered", model_at, agent_name=agent)
    end = layout.end_ms
    outcome = rng.random()
    if outcome < 0.08:
        message = rng.choice(
            ["target unreachable", "tool crashed: exit 137", "rate limited by target"]
        )
        add("stream.finished", end, status="error", error_message=message)
    elif outcome < 0.11:
        add("stream.finished", end, status="aborted", error_message="stopped by user")
    elif outcome < 0.13:
        add("stream.finished", end, status="blocked", error_message="scope check refused target")
    else:
        add("stream.finished", end, status="completed")
    return events, start + timedelta(milliseconds=end - start_ms)


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
        if find_project(db, owner_scope(db, team_name=TEAM, user_email=None)[0], PROJECT) is None:
            create_project(db, PROJECT, team_name=TEAM)
    ingestor = Ingestor(
        store,
        PriceBook(settings.prices_file),
        credit_usd=settings.credit_usd,
        default_rate=settings.neo_cost_rate,
    )
    principal = Principal(via="api_key", key_id="demo", service_name="demo")
    runners = [email for email, role, _ in PEOPLE if role != "viewer"]
    in_team = {email for email, role, _ in PEOPLE if role is not None}
    end = utc_now().replace(microsecond=0)
    events: list[dict[str, Any]] = []
    streams = 0
    for t in range(tasks):
        start = end - timedelta(seconds=rng.randint(6 * 3600, 90 * 86_400))
        owner = rng.choices(runners, weights=[3, 4, 3, 2])[0]
        title = f"{rng.choice(JOBS)}: {rng.choice(TARGETS)}"
        project = PROJECT if owner in in_team and rng.random() < 0.4 else None
        task_id = f"task-{seed}-{t:04d}"
        for n in range(rng.choices([1, 2, 3], weights=[7, 2, 1])[0]):
            made, finished = _stream_events(
                rng,
                seed=seed,
                task_id=task_id,
                n=n,
                owner=owner,
                start=start,
                title=title,
                project=project,
            )
            events += made
            streams += 1
            # A retry or follow-up starts once the stream before it has finished.
            start = finished + timedelta(seconds=rng.randint(10, 600))
    for i in range(0, len(events), 1000):
        ingestor.ingest(principal, events[i : i + 1000])
    with store.write() as db:
        caps = _set_caps(db)
    return DemoResult(keys=keys, tasks=tasks, streams=streams, events=len(events), caps=caps)


def _set_caps(db: Session) -> list[str]:
    """The team's monthly cap and the project's budget: set (again) after the usage, so their
    spend is counted from the stored streams; what the dashboard's caps panel shows."""
    scope, team_id, _ = owner_scope(db, team_name=TEAM, user_email=None)
    project = find_project(db, scope, PROJECT)
    assert project is not None
    made = []
    for name, target, period, limit in (
        (TEAM, CapTarget("team", team_id=team_id), "month", TEAM_CAP),
        (PROJECT, CapTarget("project", project_id=project.id), "total", PROJECT_CAP),
    ):
        set_cap(db, target, period=period, limit_nano=limit * NANO)
        made.append(f"{target.kind} {name}: {limit} credits {PER[period]}")
    return made
