"""What the generator's usage looks like: the organisation (teams, users, rates) and one stream
with its calls laid out on its timeline, as the projection code's input.

`bench/generate.py` builds chunks of these and loads them; tests draw single streams.
"""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from common import AGENTS, TOOLS
from sqlalchemy import insert
from sqlalchemy.orm import Session

from taskmeter.ingest.projection import refresh_derived
from taskmeter.pricing.prices import CallTokens, PriceBook, usd_to_nano_credits
from taskmeter.store.tables import (
    STREAM_COLUMNS,
    Membership,
    StreamRow,
    Team,
    User,
)
from taskmeter.timeline import lay_out

STATUSES = (["completed", "error", "failed", "aborted", "blocked"], [85, 6, 3, 4, 2])
ERRORS = {
    "error": "tool crashed",
    "failed": "target unreachable",
    "aborted": "stopped by user",
    "blocked": "scope check refused target",
}
CREDIT_USD = Decimal("10")
DEFAULT_RATE = Decimal("0.1")
YEAR_S = 365 * 24 * 3600
EVENT_IDS = [f"t{k}" for k in range(200)]
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)


class Organisation:
    """Who owns the streams: users with their scope, and the weights they are drawn with."""

    def __init__(self, db: Session, rng: random.Random, users: int, now: datetime) -> None:
        self.owners: list[tuple[int, int | None, str]] = []  # (user id, team id, scope)
        weights: list[float] = []
        emails = [f"user{n}@bench.example" for n in range(users)]
        emails[0], emails[1] = "admin@bench.example", "solo@bench.example"
        db.execute(
            insert(User),
            [{"email": e, "role": "user", "created_at": now} for e in emails],
        )
        ids = {u.email: u.id for u in db.query(User)}
        # The large team: 50 users, a tenth of all streams between them.
        sizes = [50]
        remaining = int(users * 0.8) - 50
        while remaining > 0:
            sizes.append(min(remaining, rng.randint(1, 50)))
            remaining -= sizes[-1]
        db.execute(
            insert(Team),
            [{"name": f"team-{t}", "created_at": now} for t in range(len(sizes))],
        )
        teams = {t.name: t.id for t in db.query(Team)}
        memberships = []
        order = [e for e in emails if e != "solo@bench.example"]
        cursor = 0
        for t, size in enumerate(sizes):
            team_id = teams[f"team-{t}"]
            for m in range(size):
                email = order[cursor]
                cursor += 1
                role = "admin" if m == 0 else "member"
                memberships.append(
                    {"user_id": ids[email], "team_id": team_id, "role": role, "created_at": now}
                )
                self.owners.append((ids[email], team_id, f"t{team_id}"))
                weights.append((users * 0.1 / 50) if t == 0 else 1.0)
        db.execute(insert(Membership), memberships)
        for email in [*order[cursor:], "solo@bench.example"]:
            self.owners.append((ids[email], None, f"u{ids[email]}"))
            weights.append(1.0)
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))
        self.teams = len(sizes)
        self.large_team_scope = f"t{teams['team-0']}"
        self.solo_scope = f"u{ids['solo@bench.example']}"

    def draw(self, rng: random.Random) -> tuple[int, int | None, str]:
        return rng.choices(self.owners, cum_weights=self.cumulative)[0]


def make_stream(
    rng: random.Random,
    prices: PriceBook,
    owner: tuple[int, int | None, str],
    task_id: str,
    created: datetime,
    model: tuple[str, str],
    byok: bool,
) -> StreamRow:
    user_id, team_id, scope = owner
    rnd = rng.random  # random() and int() are several times faster than randint()
    status = rng.choices(*STATUSES)[0]
    start_ms = int(created.timestamp() * 1000)
    # Column by column: a stream's hundred-odd calls are most of the generator's own time.
    count = 5 + int(rnd() * 196)
    calls = 1 + int(rnd() * 20)
    names = [TOOLS[int(rnd() * len(TOOLS))] for _ in range(count)]
    took = [20 + int(rnd() * 60_000) for _ in range(count)]
    thinking = [200 + int(rnd() * 19_800) for _ in range(calls)]
    # The calls on the stream's timeline (a step a model call): the stream lasts as long as
    # they take, and its tool starts come out in history order (no sort).
    per = -(-count // calls)  # tool calls a step, the last steps fewer
    steps = [(think, took[i * per : (i + 1) * per]) for i, think in enumerate(thinking)]
    layout = lay_out(rnd, start_ms, steps)
    finished = created + timedelta(milliseconds=layout.end_ms - start_ms)
    history = list(map(list, zip(layout.tool_at, EVENT_IDS[:count], names, took, strict=True)))
    breakdown: dict[str, dict[str, int]] = {}
    for name, duration in zip(names, took, strict=True):
        entry = breakdown.get(name)
        if entry is None:
            breakdown[name] = {"calls": 1, "total_duration_ms": duration}
        else:
            entry["calls"] += 1
            entry["total_duration_ms"] += duration
    tool_time = sum(took)
    agents: dict[str, int] = {}
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(AGENTS)
        agents[name] = agents.get(name, 0) + 1
    tokens = [0, 0, 0, 0]
    base_nano = 0
    for _ in range(calls):
        inp = 500 + int(rnd() * 59_500)
        call = CallTokens(
            input_tokens=inp,
            output_tokens=50 + int(rnd() * 3950),
            cache_read_tokens=int(rnd() * inp // 2),
            cache_write_tokens=0,
        )
        usd = prices.price_usd(model[0], model[1], call, created)
        base_nano += usd_to_nano_credits(usd, CREDIT_USD) if usd is not None else 0
        tokens[0] += call.input_tokens
        tokens[1] += call.output_tokens
        tokens[2] += call.cache_read_tokens
    step_latency = sum(layout.step_end) - sum(layout.model_at)
    values = dict(
        stream_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        task_id=task_id,
        owner_user_id=user_id,
        team_id=team_id,
        scope=scope,
        started=True,
        started_event_id="start",
        created_at=created,
        finished_at=finished,
        finish_event_id="finish",
        status=status,
        error_message=ERRORS.get(status),
        stated_execution_ms=None,
        declared_model=model[0],
        model_calls={model[0]: calls},
        task_title=f"Scan {task_id}",
        is_byok=byok,
        neo_cost_rate=None,
        step_count=calls,
        step_latency_ms=step_latency,
        tool_calls=len(history),
        tool_time_ms=tool_time,
        tool_breakdown=dict(sorted(breakdown.items())),
        tool_history=history,
        agent_triggers=sum(agents.values()),
        agent_breakdown=dict(sorted(agents.items())),
        llm_calls=calls,
        llm_time_ms=sum(thinking),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_read_tokens=tokens[2],
        cache_write_tokens=0,
        reasoning_tokens=0,
        unpriced_calls=0,
        base_nano=base_nano,
        first_event_at=created,
        last_event_at=finished,
        last_received_at=finished,
        swept=False,
    )
    # Plain slots, not an ORM instance: tracking every set had been a sixth of a stream.
    stream = StreamRow(values.get(name) for name in STREAM_COLUMNS)
    refresh_derived(stream, DEFAULT_RATE)
    return stream
