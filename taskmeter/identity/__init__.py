"""Identity: users, teams, keys, JWTs, and the principal/scope every request resolves to."""
