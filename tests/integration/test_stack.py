"""The services every other integration test relies on are up, answer, and `up` is safe to repeat."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import redis
from confluent_kafka.admin import AdminClient

from core.settings import Settings
from tests.services import eventually
from tidemark import stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(services: Settings) -> Settings:
    return services


def _local_stack(settings: Settings) -> bool:
    return all(row.managed for row in stack.status(settings))


def test_kafka_metadata_lists_the_broker(settings: Settings) -> None:
    metadata = AdminClient({"bootstrap.servers": settings.kafka.bootstrap}).list_topics(timeout=10)
    assert len(metadata.brokers) == 1


async def test_postgres_answers_select_1(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.postgres_dsn, timeout=10)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_redis_answers_ping(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


def test_status_reports_every_service_running(settings: Settings) -> None:
    rows = eventually(
        lambda: [row for row in stack.status(settings) if row.running], timeout=10, what="running services"
    )
    assert {row.name for row in rows} == set(stack.SERVICES)


def test_up_again_keeps_the_same_processes(settings: Settings) -> None:
    if not _local_stack(settings):
        pytest.skip("services run in containers, not in the local stack")
    before = {row.name: row.pid for row in stack.status(settings)}
    stack.up(settings)
    after = {row.name: row.pid for row in stack.status(settings)}
    assert after == before
    assert all(after.values())


def test_a_second_stack_on_taken_ports_fails_clearly(settings: Settings, tmp_path: Path) -> None:
    if not _local_stack(settings):
        pytest.skip("services run in containers, not in the local stack")
    other = settings.model_copy(update={"state_dir": tmp_path / "state"})
    with pytest.raises(stack.StackError, match="did not start"):
        stack.up(other, services=("redis",))
