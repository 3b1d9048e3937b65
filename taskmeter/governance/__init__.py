"""Spend governance: projects, spending caps, and authorization with reservations.

    operator / team admin ─ caps.set_cap ─▶ caps (limit, period cut in an IANA zone)
    ingest batch ─ spend.plan_charges ─ CapCharges.apply ─▶ cap_spend += each stream's change
                   in credits (same transaction) ─▶ over_limit, threshold alerts
    platform ─ POST /api/v1/usage/authorize ─ authorize.authorize ─▶ lock the payers' rows
              ─ used + held + estimate ≤ limit for every cap, and ≤ the credit balance
              ─▶ reservation (held until its stream finishes, it is released or expires) | 402

Usage that happened is always recorded: caps never reject an event. A refusal happens before
work starts, in `authorize`, where the payers' rows are locked so that concurrent
authorizations are counted one after another and can never overspend a limit.
"""
