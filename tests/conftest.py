"""Fixtures: real services (local stack or testcontainers) and per-test isolation on top of them."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest
import redis

from core.settings import Settings
from projections.migrations import apply_migrations
from projections.replay import DEFAULT_REDIS_DB as REPLAY_REDIS_DB
from tests.services import ensure_services
from tidemark.topics import delete_prefixed_topics

REPO = Path(__file__).resolve().parent.parent
_redis_db = itertools.count(1)


@pytest.fixture(scope="session")
def services() -> Settings:
    return ensure_services()


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def new_database(services: Settings) -> Iterator[Callable[[], str]]:
    """Creates migrated databases on the test server (returning their DSNs); drops them afterwards."""
    created: list[str] = []

    def create() -> str:
        database = f"tidemark_t_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(services.postgres_dsn, f'CREATE DATABASE "{database}"'))
        created.append(database)
        dsn = services.postgres_dsn.rsplit("/", 1)[0] + f"/{database}"
        asyncio.run(apply_migrations(dsn))
        return dsn

    yield create
    for database in created:
        asyncio.run(_admin(services.postgres_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture
def isolated(services: Settings, new_database: Callable[[], str]) -> Iterator[Settings]:
    """Unique topics, consumer group and database, and a flushed Redis database, for one test; its topics are
    deleted afterwards (a broker that keeps every test's partitions runs out of file descriptors)."""
    tag = uuid.uuid4().hex[:10]
    dsn = new_database()
    redis_db = next(_redis_db) % REPLAY_REDIS_DB or 1  # 1..14: the last database is the rebuilds' (`replay`)
    redis_url = services.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    settings = services.model_copy(
        update={
            "topic_prefix": f"t{tag}.",
            "app_id": f"tidemark-{tag}",
            "postgres_dsn": dsn,
            "redis_url": redis_url,
            # Tests run several workers at once: each process's metrics on a port the system picks.
            "operations": services.operations.model_copy(update={"metrics_port": 0}),
        }
    )
    yield settings
    try:
        delete_prefixed_topics(settings)
    except Exception as exc:
        warnings.warn(f"could not delete the topics {settings.topic_prefix}*: {exc}", stacklevel=1)


@pytest.fixture
def run_cli(isolated: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``tidemark ...`` as a user would, in a subprocess with the test's settings (unless given others)."""

    def run(
        *args: str, check: bool = True, timeout: float = 300, settings: Settings | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "tidemark.cli", *args],
            env=(settings or isolated).environment(),
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
def start_worker(isolated: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts ``tidemark worker`` subprocesses (with the test's settings unless given others; another long-running
    command with ``command``), each logging to ``worker-N.log``; kills leftovers."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        settings: Settings | None = None, command: Sequence[str] = ("worker", "--loglevel", "info")
    ) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidemark.cli", *command],
            env=(settings or isolated).environment(),
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
