"""The rules a first run leans on: which Kafka answers mean "ask again", what the preflight asks for, and the
demo context's names."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from core.kafka import KafkaNotReady, until_ready
from core.settings import Context, Settings
from tidemark import preflight


def _failing(codes: list[int], result: str = "done") -> tuple[list[int], Callable[[], str]]:
    """A call that raises KafkaException with each code in turn, then returns ``result``; calls are counted."""
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1]))
        return result

    return calls, call


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_CONTROLLER,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
    ],
)
def test_a_broker_still_loading_is_asked_again(code: int) -> None:
    calls, call = _failing([code, code])
    assert until_ready(call, "deleting consumer groups", timeout=5) == "done"
    assert len(calls) == 3


@pytest.mark.parametrize(
    "code", [KafkaError.GROUP_ID_NOT_FOUND, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED]
)
def test_an_answer_is_raised_at_once(code: int) -> None:
    calls, call = _failing([code])
    with pytest.raises(KafkaException) as raised:
        until_ready(call, "deleting consumer groups", timeout=5)
    assert raised.value.args[0].code() == code
    assert len(calls) == 1


def test_an_extra_code_can_be_declared_retriable() -> None:
    calls, call = _failing([KafkaError.UNKNOWN_TOPIC_OR_PART])
    assert until_ready(call, "offsets", timeout=5, also=(KafkaError.UNKNOWN_TOPIC_OR_PART,)) == "done"
    assert len(calls) == 2


def test_a_broker_never_ready_ends_in_a_message_naming_the_step_and_the_broker() -> None:
    calls, call = _failing([KafkaError.NOT_COORDINATOR] * 1000)
    with pytest.raises(KafkaNotReady) as raised:
        until_ready(call, "deleting consumer groups demo", "127.0.0.1:1", timeout=0.3)
    message = str(raised.value)
    assert "deleting consumer groups demo" in message and "127.0.0.1:1" in message and "NOT_COORDINATOR" in message
    assert "tidemark stack status" in message
    assert 2 <= len(calls) < 20, "bounded, with back-off"


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with nothing on it, for the checks that look for tools."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


@pytest.mark.parametrize(
    ("services", "jars_ready", "expected"),
    [
        ({"kafka": True, "postgres": False, "redis": False}, False, ["openjdk-17-jre-headless", "maven"]),
        ({"kafka": True, "postgres": False, "redis": False}, True, ["openjdk-17-jre-headless"]),
        ({"kafka": False, "postgres": False, "redis": False}, False, []),
    ],
)
def test_preflight_names_the_package_for_each_missing_tool(
    bare_path: Path, services: dict[str, bool], jars_ready: bool, expected: list[str]
) -> None:
    found = preflight.problems(**services, jars_ready=jars_ready)
    for package in expected:
        assert any(f"apt-get install -y {package}" in line for line in found), found
    assert ("maven" in " ".join(found)) == ("maven" in expected)
    if expected:
        assert "TIDEMARK_KAFKA_BOOTSTRAP" in found[-1], "an existing cluster is the other way out"
    else:
        assert found == []


def test_preflight_finds_the_tools_of_this_machine() -> None:
    """This machine runs the stack, so it has everything the checks ask for."""
    assert preflight.problems(kafka=True, postgres=True, redis=True, jars_ready=False) == []


def test_preflight_runs_as_a_plain_script_before_the_virtualenv_exists(bare_path: Path) -> None:
    import subprocess

    env = {**os.environ, "TIDEMARK_STATE_DIR": str(bare_path)}
    done = subprocess.run([sys.executable, preflight.__file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "apt-get install -y openjdk-17-jre-headless" in done.stderr


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("localhost", True), ("[::1]", True), ("broker1", False), ("10.0.0.5", False)],
)
def test_only_loopback_services_are_ours_to_start(host: str, local: bool) -> None:
    assert preflight.is_loopback(host) is local


def test_the_demo_context_names_the_demos_topics_group_and_database() -> None:
    base = Settings(postgres_dsn="postgresql://u:p@db.example:5432/tidemark?sslmode=require", topic_prefix="x.")
    demo = Settings(**{**base.model_dump(), "context": Context.demo})
    assert demo.topic_prefix == "demo." and demo.app_id == "tidemark-demo"
    assert demo.postgres_dsn == "postgresql://u:p@db.example:5432/tidemark_demo?sslmode=require"
    again = Settings(**{**demo.model_dump()})
    assert again.postgres_dsn == demo.postgres_dsn, "applying the context twice changes nothing"
    assert demo.environment()["TIDEMARK_CONTEXT"] == "demo"
