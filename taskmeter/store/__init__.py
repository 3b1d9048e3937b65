"""Storage: engines for SQLite and PostgreSQL, the schema, and its migrations."""

from taskmeter.store.engine import Store

__all__ = ["Store"]
