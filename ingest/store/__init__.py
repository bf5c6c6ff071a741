"""The store: one protocol, a SQLite and a PostgreSQL backend."""
