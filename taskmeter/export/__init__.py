"""Usage exports: `GET /api/v1/usage/export` and `taskmeter usage export` (docs/exports.md).

    request ─▶ principal ─▶ scope (403 members/viewers, 403 email filter from non-admins)
            ─▶ filters (the list endpoints' parser and conditions, usage/repository.py)
            ─▶ keyset query chunks (rows.py: CHUNK rows a query, each in its own read session)
            ─▶ records (one tuple a row, the level's columns: columns.py)
            │     └─ format=focus: folded per UTC day × user × model × BYOK (focus.py)
            ─▶ encoder (encoders.py: csv | jsonl | parquet row groups)
            ─▶ StreamingResponse body (bytes go out as each chunk is encoded)

Nothing holds more than a chunk of rows (a parquet row group, a FOCUS day's groups), so an
export's memory is flat in its row count (bench/export.py, bench/RESULTS.md "Exports").
"""

from taskmeter.export.endpoint import OPERATIONS, router

__all__ = ["OPERATIONS", "router"]
