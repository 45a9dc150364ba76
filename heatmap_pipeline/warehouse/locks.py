"""One writer per partition at a time, even when two runs of the same partition start together.

PostgreSQL: a transaction-scoped advisory lock keyed by (table, partition), released at commit
or rollback. SQLite: every write transaction already holds the database's single write lock.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa


def lock_partition(conn: sa.Connection, table: str, *key: object) -> None:
    """Block until no other transaction writes this partition; call first inside the transaction."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b("|".join([table, *map(str, key)]).encode(), digest_size=8).digest()
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest, "big", signed=True)})


class DatabaseBusy(RuntimeError):
    """Other transactions kept what we need locked for too long. Transient: a retry later can succeed."""
