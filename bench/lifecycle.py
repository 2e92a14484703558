"""The lifecycle agent's transitions/s through Kafka (``tidemark agents``, Faust), beside its own code run in-process
and a raw confluent-kafka loop moving the same bytes, in one run.

N candidates are published to ``strategies.candidates`` before the agents' process starts; each asks for three
commands (Discovery, Validation, Paper; one in ten fails a gate and is refused), so 3N answers reach
``strategies.lifecycle`` through two hops: candidates -> commands -> answers. The agent's rate counts answers from
the first one on ``strategies.lifecycle`` to the last; the process's start-up (interpreter, Faust, the group's
rebalance, the table's recovery) is the time before the first answer, printed apart.

Baselines, on the same candidates:
- the agent's code without Kafka (decode the candidate, ``candidate_commands``, encode and decode each command,
  ``answer`` against a dict for a table): the ceiling of the per-message work;
- the state machine alone, ``decide`` + ``evolve`` over the same commands, already built;
- a raw confluent-kafka consume -> produce loop over both hops with the bytes the agent would write (computed
  beforehand): the transport's ceiling.

``python -m bench.lifecycle [--strategies N]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.pipeline import REPO, Figure, create_topic
from core.kafka import producer_config, watermarks
from core.settings import Settings, get_settings
from schemas.codec import get_registry
from streams.agents import agents_app_id
from streams.lifecycle.agent import (
    CANDIDATE_SCHEMA,
    COMMAND_SCHEMA,
    answer,
    candidate_commands,
    command_of,
    rules_of,
)
from streams.lifecycle.machine import Strategy, StrategyTransitioned, decide, evolve
from tests.integration.kafka_tools import read_all
from tests.integration.test_lifecycle_agent import candidate, publish
from tidemark.topics import create_topics, delete_prefixed_topics


def pure_runs(settings: Settings, candidates: list[bytes]) -> tuple[Figure, Figure, dict[bytes, bytes], set[str]]:
    """The agent's code in-process, then the machine alone; the command bytes -> answer bytes each hop would write
    (for the raw loop), and the answers' event ids (to check the agent's against)."""
    registry, rules = get_registry(), rules_of(settings)
    table: dict[str, dict[str, Any]] = {}
    answers: dict[bytes, bytes] = {}
    started = time.perf_counter()
    for value in candidates:
        record = registry.decode_as(CANDIDATE_SCHEMA, value)
        for command in candidate_commands(record, record["ts_event"]):
            encoded = registry.encode(COMMAND_SCHEMA, command)
            decoded = registry.decode_as(COMMAND_SCHEMA, encoded)
            entry, answers[encoded], _ = answer(table.get(decoded["strategy_id"]), decoded, rules)
            table[decoded["strategy_id"]] = entry
    code = Figure(
        "agent's code in-process (decode, commands, answer, encode)", len(answers), time.perf_counter() - started
    )

    commands = [command_of(registry.decode_as(COMMAND_SCHEMA, encoded)) for encoded in answers]
    states: dict[str, Strategy] = {}
    started = time.perf_counter()
    for move in commands:
        outcome = decide(states.get(move.strategy_id), move, rules)
        if isinstance(outcome, StrategyTransitioned):
            states[move.strategy_id] = evolve(states.get(move.strategy_id), outcome)
    machine = Figure("state machine alone (decide + evolve)", len(commands), time.perf_counter() - started)
    ids = {registry.decode(value).record["event_id"] for value in answers.values()}
    return code, machine, answers, ids


def _hop(
    settings: Settings,
    source: str,
    target: str,
    expected: int,
    outputs: Callable[[bytes | None, bytes | None], list[bytes]],
    group: str,
) -> int:
    """Consume ``expected`` messages of ``source`` from the start and produce ``outputs(key, value)`` to ``target``;
    the messages produced, delivered."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer(producer_config(settings.kafka.bootstrap))
    partitions = consumer.list_topics(source, timeout=30).topics[source].partitions
    consumer.assign([TopicPartition(source, p, 0) for p in partitions])
    consumed = produced = 0
    while consumed < expected:
        for message in consumer.consume(1000, timeout=0.05):
            if message.error() is not None:
                continue
            consumed += 1
            for value in outputs(message.key(), message.value()):
                while True:
                    try:
                        producer.produce(target, value, message.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                produced += 1
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"raw loop: messages to {target} undelivered")
    consumer.close()
    return produced


def raw_run(settings: Settings, candidates: int, answers: dict[bytes, bytes], tag: str) -> Figure:
    """Both hops with confluent-kafka and the bytes precomputed: candidates -> three commands each -> answers."""
    raw_commands, raw_answers = settings.topic("bench.raw-commands"), settings.topic("bench.raw-lifecycle")
    create_topic(settings, raw_commands)
    create_topic(settings, raw_answers)
    by_strategy: dict[bytes, list[bytes]] = {}
    registry = get_registry()
    for command in answers:
        by_strategy.setdefault(registry.decode(command).record["strategy_id"].encode(), []).append(command)
    started = time.perf_counter()
    _hop(
        settings,
        settings.topic("strategies.candidates"),
        raw_commands,
        candidates,
        lambda key, _: by_strategy[key or b""],
        f"bench-raw-{tag}-1",
    )
    count = _hop(
        settings, raw_commands, raw_answers, len(answers), lambda _, v: [answers[v or b""]], f"bench-raw-{tag}-2"
    )
    return Figure("raw confluent-kafka consume -> produce, both hops", count, time.perf_counter() - started)


def agent_run(settings: Settings, expected: int, tag: str) -> tuple[float, Figure]:
    """``tidemark agents`` started on the published candidates: the seconds to its first answer, then the answers
    from the first to the last on ``strategies.lifecycle``."""
    topic = settings.topic("strategies.lifecycle")
    log = open(REPO / ".tidemark" / f"bench-lifecycle-{tag}.log", "wb")  # noqa: SIM115 - owned by the process
    spawned = time.perf_counter()
    agents = subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", "agents"],
        env=settings.environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    watcher = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"bench-watch-{tag}"})
    partitions = [TopicPartition(topic, p) for p in watcher.list_topics(topic, timeout=30).topics[topic].partitions]
    try:
        first_count, first_at = 0, 0.0
        deadline = time.monotonic() + 300
        while True:
            if agents.poll() is not None:
                raise RuntimeError(f"the agents' process exited with {agents.returncode}; see {log.name}")
            count = sum(high - low for low, high in (watermarks(watcher, p) for p in partitions))
            now = time.perf_counter()
            if count and not first_count:
                first_count, first_at = count, now
            if count >= expected:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent answered {count} of {expected} commands in 300 s; see {log.name}")
            time.sleep(0.02)
        name = "lifecycle agent (tidemark agents, Faust, both hops)"
        return first_at - spawned, Figure(name, count - first_count, now - first_at)
    finally:
        agents.terminate()
        agents.wait(timeout=60)
        watcher.close()
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", type=int, default=2000, help="candidates published, one strategy each")
    args = parser.parse_args(argv)
    tag = uuid.uuid4().hex[:8]
    settings = get_settings().model_copy(update={"topic_prefix": f"bench{tag}."})
    registry = get_registry()
    records = [candidate(n, passed=n % 10 != 9) for n in range(args.strategies)]
    encoded = [registry.encode(CANDIDATE_SCHEMA, record) for record in records]
    code, machine, answers, ids = pure_runs(settings, encoded)
    expected = len(answers)
    create_topics(settings)
    try:
        publish(settings, "strategies.candidates", [(CANDIDATE_SCHEMA, record) for record in records])
        raw = raw_run(settings, len(records), answers, tag)
        startup, agent = agent_run(settings, expected, tag)
        lifecycle = read_all(settings.kafka.bootstrap, settings.topic("strategies.lifecycle"))
        written = {registry.decode(value).record["event_id"] for *_, value in lifecycle}
        print(
            f"lifecycle agent, {args.strategies:,} candidates -> {expected:,} commands and answers "
            f"({sum(1 for n in range(args.strategies) if n % 10 == 9):,} refused at the Paper gate); "
            f"broker {settings.kafka.bootstrap}:"
        )
        print(f"  {agent.name:<60} {agent.rate:>10,.0f} transitions/s ({startup:.1f} s start-up before the first)")
        for baseline in (code, machine, raw):
            print(f"  {baseline.name:<60} {baseline.rate:>10,.0f} transitions/s")
        print(
            f"  ratio agent / in-process code {agent.rate / code.rate:.1%}, agent / machine alone "
            f"{agent.rate / machine.rate:.2%}, agent / raw Kafka loop {agent.rate / raw.rate:.1%}"
        )
        same = "the same" if written == ids else f"NOT the same ({len(written ^ ids)} differ)"
        print(f"  the agent's {len(written):,} answers are {same} events as the in-process run's (event ids)")
    finally:
        delete_prefixed_topics(settings, [agents_app_id(settings), f"bench-raw-{tag}-1", f"bench-raw-{tag}-2"])
        shutil.rmtree(settings.state_dir / "agents" / agents_app_id(settings), ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
