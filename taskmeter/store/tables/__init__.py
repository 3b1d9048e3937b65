"""The schema, one definition for SQLite and PostgreSQL.

Identity: users, teams, memberships (a user in at most one team), api_keys, credit_grants.
Usage: usage_events (raw, append-only, idempotent on (stream_id, event_id)), and the
projections built from them as they land: streams (one row per stream) and tasks (one row per
task and scope). A *scope* is the key a reader is entitled to, and the credit account that pays:
``t<team id>`` for a stream stamped with a team, ``u<user id>`` for a solo user's stream. A
stream gets its scope when it starts; readers see it once it has a status (finished).

One module a part of the domain; everything is imported from here
(`from taskmeter.store.tables import STREAMS`), so the metadata always holds every table.
"""

from taskmeter.store.tables.base import (
    STREAM_FIGURES,
    Base,
)
from taskmeter.store.tables.finance import (
    PRICE_SOURCES,
    REPRICE_RUNS,
    PriceSourceRecord,
    RepriceRun,
)
from taskmeter.store.tables.governance import (
    CAP_SPEND,
    CAPS,
    PROJECTS,
    RESERVATIONS,
    Cap,
    CapSpend,
    Project,
    Reservation,
)
from taskmeter.store.tables.identity import (
    API_KEYS,
    CREDIT_GRANTS,
    MEMBERSHIPS,
    TEAMS,
    USERS,
    ApiKey,
    CreditGrant,
    Membership,
    Team,
    User,
)
from taskmeter.store.tables.usage import (
    STREAM_COLUMNS,
    STREAMS,
    TASKS,
    USAGE_EVENTS,
    AnyStream,
    OwnerMonth,
    ScopeHour,
    ScopeTotal,
    Stream,
    StreamRollup,
    StreamRollupMonth,
    StreamRow,
    Task,
    TaskRollup,
    TaskRollupMonth,
    UsageEvent,
)
from taskmeter.store.tables.webhooks import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_ENDPOINTS,
    WEBHOOK_EVENTS,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "API_KEYS",
    "CAPS",
    "CAP_SPEND",
    "CREDIT_GRANTS",
    "MEMBERSHIPS",
    "PRICE_SOURCES",
    "PROJECTS",
    "REPRICE_RUNS",
    "RESERVATIONS",
    "STREAMS",
    "STREAM_COLUMNS",
    "STREAM_FIGURES",
    "TASKS",
    "TEAMS",
    "USAGE_EVENTS",
    "USERS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_ENDPOINTS",
    "WEBHOOK_EVENTS",
    "AnyStream",
    "ApiKey",
    "Base",
    "Cap",
    "CapSpend",
    "CreditGrant",
    "Membership",
    "OwnerMonth",
    "PriceSourceRecord",
    "Project",
    "RepriceRun",
    "Reservation",
    "ScopeHour",
    "ScopeTotal",
    "Stream",
    "StreamRollup",
    "StreamRollupMonth",
    "StreamRow",
    "Task",
    "TaskRollup",
    "TaskRollupMonth",
    "Team",
    "UsageEvent",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
