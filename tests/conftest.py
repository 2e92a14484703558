"""Fixtures: real services (local stack or testcontainers) and per-test isolation on top of them."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from projections.migrations import apply_migrations
from tests.services import ensure_services
from tidemark.settings import Settings

REPO = Path(__file__).resolve().parent.parent
_redis_db = itertools.count(1)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (worker, CLI, connector) use exactly these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(f"TIDEMARK_{name.upper()}", None)
            continue
        secret = getattr(value, "get_secret_value", None)
        if secret is not None:
            value = secret()
        env[f"TIDEMARK_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return env


@pytest.fixture(scope="session")
def services() -> Settings:
    return ensure_services()


@pytest.fixture
def isolated(services: Settings) -> Iterator[Settings]:
    """Unique topics, consumer group and database, and a flushed Redis database, for one test."""
    tag = uuid.uuid4().hex[:10]
    database = f"tidemark_t_{tag}"
    admin_dsn = services.postgres_dsn

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    asyncio.run(create())
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    asyncio.run(apply_migrations(dsn))
    redis_db = next(_redis_db) % 16 or 1
    redis_url = services.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    yield services.model_copy(
        update={
            "topic_prefix": f"t{tag}.",
            "app_id": f"tidemark-{tag}",
            "postgres_dsn": dsn,
            "redis_url": redis_url,
            "store": "memory://",
            "state_dir": services.state_dir,
        }
    )

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def run_cli(isolated: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``tidemark ...`` as a user would, in a subprocess with the test's settings."""

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "tidemark.cli", *args],
            env=settings_env(isolated),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tidemark {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    return run


@pytest.fixture
def start_worker(isolated: Settings, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts ``tidemark worker`` subprocesses; any still running at the end are killed."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidemark.cli", "worker", "--loglevel", "info"],
            env=settings_env(isolated),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
