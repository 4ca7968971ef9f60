"""Tiled's embedded table storage (DuckDB), made safe for writers working at the same time.

Tiled 0.2.20 gives every request thread of a server the same DuckDB
connection (an SQLAlchemy ``StaticPool``). When two clients append rows at
once, a raw scan's writer and a reconstruction's, one thread commits the
other's transaction: the second append fails ("No active transaction, cannot
commit", HTTP 500) after its rows went in, bluesky-tiled-plugins retries it,
and the scan's table holds those rows twice. Under more load the process
dies of heap corruption. :func:`serialize_duckdb_connections` hands the one
connection to one thread at a time instead. PostgreSQL (a production
catalog) has a real connection pool and is left as it is.
"""

from __future__ import annotations

import functools

import sqlalchemy.pool
from tiled.storage import SQLStorage

CHECKOUT_TIMEOUT_S = 60.0  # a request waits this long for the connection before its server answers 500


def serialize_duckdb_connections() -> None:
    """Make every DuckDB table storage of this process lend its connection to one thread at a time.

    Call it before the process serves a catalog; calling it again changes nothing.
    """
    if getattr(SQLStorage._connection_pool, "serialized", False):
        return
    tiled_pool = SQLStorage.__dict__["_connection_pool"].func

    def connection_pool(storage: SQLStorage) -> sqlalchemy.pool.Pool:
        if storage.dialect != "duckdb" or ":memory:" in storage.uri:
            return tiled_pool(storage)
        return sqlalchemy.pool.QueuePool(
            storage._adbc_connection.adbc_clone, pool_size=1, max_overflow=0, timeout=CHECKOUT_TIMEOUT_S
        )

    pool = functools.cached_property(connection_pool)
    pool.__set_name__(SQLStorage, "_connection_pool")
    pool.serialized = True
    SQLStorage._connection_pool = pool
