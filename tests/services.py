"""Real services for the integration tests: containers when a Docker engine answers, else the local stack
(`tidemark.stack`), so the same tests run on a laptop with Docker and on a CI machine without it. Plus the
bounded polling helpers every asynchronous assertion uses instead of sleeps."""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar, cast

from core.settings import Settings
from tidemark import stack

T = TypeVar("T")

KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9; testcontainers' KafkaContainer drives Confluent images
TIMESCALE_IMAGE = "timescale/timescaledb:latest-pg15"
REDIS_IMAGE = "redis:7"


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, no daemon: all mean "use the local stack"
        return False


def _start_containers() -> Settings:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer

    kafka = KafkaContainer(KAFKA_IMAGE).with_kraft()
    postgres = PostgresContainer(
        TIMESCALE_IMAGE, username="tidemark", password="tidemark", dbname="tidemark", driver=None
    )
    redis = RedisContainer(REDIS_IMAGE)
    for container in (kafka, postgres, redis):
        container.start()
        atexit.register(container.stop)
    settings = Settings().changed(
        kafka__bootstrap=kafka.get_bootstrap_server(),
        postgres_dsn=postgres.get_connection_url(),
        redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
    )
    stack.migrate(settings)
    return settings


@lru_cache(maxsize=1)
def ensure_services() -> Settings:
    """Settings pointing at running, migrated services; started once per test process."""
    if _docker_reachable():
        return _start_containers()
    settings = Settings()
    stack.up(settings)
    return settings


def eventually(
    predicate: Callable[[], T | bool | None], timeout: float = 30, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy (an AssertionError inside counts as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        last: str = "returned a falsy value"
        try:
            result = predicate()
            if result:
                return cast(T, result)
        except AssertionError as exc:
            last = f"AssertionError: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout:g}s: {what or predicate!r} (last: {last})")
        time.sleep(interval)
