"""Versioned SQL migrations, applied in file-name order, each once, recorded with its checksum."""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg

_LOCK_KEY = 0x7D3A_11E5  # advisory lock: concurrent `stack up` / workers must not migrate twice


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(__package__)
    return sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql"))


async def apply_migrations(dsn: str) -> list[str]:
    """Apply pending migrations; return the names applied. A changed, already applied file is an error."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        applied: list[str] = []
        for name, sql in migration_files():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if name in done:
                if done[name] != checksum:
                    raise RuntimeError(f"migration {name} was changed after it was applied; add a new migration")
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", name, checksum)
            applied.append(name)
        return applied
    finally:
        await conn.close()
