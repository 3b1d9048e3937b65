"""Plain factory functions over the real store: users, teams and their keys."""

from __future__ import annotations

from dataclasses import dataclass

from taskmeter.identity import service
from taskmeter.store import Store


@dataclass(frozen=True)
class Person:
    id: int
    email: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


class Factory:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._n = 0

    def person(
        self, email: str | None = None, *, team: str | None = None, role: str = "member"
    ) -> Person:
        """A user with a fresh API key; `team` is created (with them as admin) if missing."""
        self._n += 1
        email = email or f"user{self._n}@example.com"
        with self.store.write() as db:
            user = service.create_user(db, email)
            if team is not None:
                try:
                    service.find_team(db, team)
                    service.add_member(db, team, email, role)
                except service.NoSuchThing:
                    assert role == "admin", "the first person of a team is its admin"
                    service.create_team(db, team, email)
            key = service.create_key(db, email=email)
            return Person(id=user.id, email=user.email, key=key.plaintext)

    def store_has_user(self, email: str) -> bool:
        with self.store.read() as db:
            try:
                service.find_user(db, email)
            except service.NoSuchThing:
                return False
            return True

    def service_key(self, name: str = "ingest") -> str:
        with self.store.write() as db:
            return service.create_key(db, service=name).plaintext
