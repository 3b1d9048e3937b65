"""The floor for ingest over HTTP: uvicorn and one COPY a batch into one unindexed table.

    python bench/floor.py --url postgresql://postgres@127.0.0.1:5432/DB --port 8099 --workers 2

No authentication, validation, deduplication, projection or pricing: the least a service that
stores every event of a batch durably before answering can do on this machine. `bench/
ingest_http.py --floor` starts it and sends it the same bodies as taskmeter.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import psycopg
import uvicorn

TABLE = "floor_events"


def make_app(url: str) -> Any:
    pool: list[psycopg.Connection[Any]] = []

    def connection() -> psycopg.Connection[Any]:
        return pool.pop() if pool else psycopg.connect(url)

    def store(body: bytes) -> int:
        events = orjson.loads(body)["events"]
        conn = connection()
        try:
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {TABLE} (stream_id, event_id, payload) FROM STDIN") as copy,
            ):
                for event in events:
                    copy.write_row((event["stream_id"], event["id"], orjson.dumps(event).decode()))
            conn.commit()
        finally:
            pool.append(conn)
        return len(events)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        from starlette.concurrency import run_in_threadpool

        accepted = await run_in_threadpool(store, b"".join(chunks))
        body = orjson.dumps({"accepted": accepted, "duplicates": 0, "rejected": []})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return app


def prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (stream_id uuid, event_id text, payload jsonb)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    prepare(args.url)
    import os

    os.environ["FLOOR_URL"] = args.url
    uvicorn.run("floor:app_from_env", factory=True, host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning", access_log=False)  # fmt: skip


def app_from_env() -> Any:
    import os

    return make_app(os.environ["FLOOR_URL"])


if __name__ == "__main__":
    main()
