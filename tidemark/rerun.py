"""Re-run processors from the log and check that they publish the live run's events again: the determinism the design
promises (DESIGN.md §4), shown rather than claimed.

``rerun_processors`` copies the processors' input topics, byte for byte (key, value, timestamp and headers, each
record to its partition, in offset order, read_committed), from the live topic prefix into a fresh one
(``rerun-<8 hex>.`` + the live prefix), under a fresh app id, so transactional ids, consumer groups and the Faust app
are the re-run's own. A topic that a re-run processor writes too (``alerts``, ``strategies.commands``, ...) is copied
without that processor's records, which carry its name in ``source``: they are what the re-run must publish again.
Then it runs the processors as the live system runs them, as processes with the re-run's settings in their
environment, waits (bounded) until each has consumed every input and nothing is published any more, stops them with
SIGTERM, and compares, topic by topic, the live events of the re-run processors (by ``source``) with the re-run's
(``streams.audit.compare``: by event id, payload field by field, ``ts_ingest`` left out). Its topics and consumer
groups are deleted afterwards unless ``keep``.

The processors, by name (``PROCESSORS``):

- ``analytics``: the transactional analytics runner (``python -m streams.runner``), bars in, every analytics topic out.
- ``lifecycle``: the lifecycle agent (Faust) and the strategy runner (``tidemark strategy run``): they answer each
  other (the runner's promotions are commands the agent answers; its answers start and stop the runner's books), so
  they re-run together or not at all.
- ``portfolio`` and ``risk``: the Faust agents of those names, from their input logs (below).

The Faust agents run as one app, as in ``tidemark agents``, with only the chosen agents installed (``python -m
tidemark.rerun agents NAMES``): the execution desk never re-runs, since its orders and positions are copied inputs.

A re-run finds all its inputs at once, where the live run found them as they arrived; a processor whose output depends
on the interleaving of several input topics, or on the wall clock, would show it here as differing events. The
portfolio and risk agents take many topics in: forwarding agents (one per source topic) merge them, in arrival order,
into one internal topic of one partition (``<agents app id>-<name>-inputs``), which the agent folds. That topic is
their input log, the merge order a fact it records (the portfolio's refresh timer, too, only appends a refresh record
to it, carrying its wall-clock time as data). So they re-run from a byte-for-byte copy of the live log into the
re-run app's own (created first, with the one partition Faust gives it), without their forwarders and timer
(``install(..., forward=False)``), and no source topic is copied for them: their outputs are compared as the
others'. The copy ends at the live agents' committed offset: what the live agent consumed (a graceful stop commits
all it answered; a refresh appended as it stopped was never answered). Re-run from the source topics instead, they
would merge them in another order and measure other books at other times. On the demo's data every processor
re-runs identically."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from core.kafka import ReliableProducer, partition_lags, producer_config, range_reader, read_range, until_ready
from core.settings import PROJECT_ROOT, Context, Settings, get_settings
from schemas.codec import DecodeError, get_registry
from streams.audit.compare import TopicComparison, compare_topic
from tidemark.topics import create_topics, delete_prefixed_topics

Progress = Callable[[str], None]

AGENTS = "agents"
ANALYTICS = "analytics"
STRATEGY_RUNNER = "strategy-runner"
QUIET_S = 12.0
"""Nothing published into the re-run's topics for this long (more than two of librdkafka's 5 s statistics
intervals, which the strategy runner's lag comes from, and than Faust's 2.8 s commit interval), with every consumer
caught up: the re-run is done."""
POLL_S = 1.0
PROGRESS_EVERY_S = 10.0
STOP_TIMEOUT_S = 60.0
RUNNER_INPUTS = ("strategies.candidates", "strategies.lifecycle", "md.bars.1d")
"""What the strategy runner follows (``StrategyRunner.run``)."""
CAUGHT_UP_READ = 64
"""A group this close to a partition's end is read from its committed offset to tell records from the markers of
transactions (which take offsets and are never delivered)."""


class RerunError(RuntimeError):
    """The re-run could not be made: a prefix in use, a process that died, a topic that cannot be copied."""


@dataclass(frozen=True)
class Processor:
    """What the re-run runs for one processor name: its input and output topics (catalogue names), the ``source``
    its events carry, and the processes (``ANALYTICS``, ``STRATEGY_RUNNER``, or the Faust agents of ``agents``)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sources: frozenset[str]
    processes: tuple[str, ...]
    agents: tuple[str, ...] = ()
    agent_inputs: tuple[str, ...] = ()
    """The inputs its Faust agents read (their consumer group's topics)."""
    log: Callable[[Settings], str] | None = None
    """The full name, under given settings, of its agent's input log (an internal topic of one partition that the
    live forwarders filled): copied from the live run's into the re-run's as far as the live agents consumed it, and
    the agent re-run without forwarders, on that log alone."""


@cache
def catalogue() -> dict[str, Processor]:
    """Every processor that can re-run, from the code that runs it (imported here: these modules load numba and
    Faust, which a command that only prints a report need not)."""
    from streams.correlation.factory import ALERT_SOURCE
    from streams.correlation.factory import SOURCE as ROLLING
    from streams.lifecycle import agent as lifecycle_agent
    from streams.lifecycle import runner as strategy_runner
    from streams.patterns.processor import SOURCE as PATTERNS
    from streams.patterns.processor import TOPIC as PATTERNS_TOPIC
    from streams.portfolio import agent as portfolio_agent
    from streams.risk import agent as risk_agent
    from streams.risk.monitor import SOURCE as RISK
    from streams.rotation.processor import ROTATION_SOURCE, STRENGTH_SOURCE
    from streams.runner import INPUT_TOPIC

    analytics_out = (
        "analytics.stats",
        "analytics.correlations",
        "analytics.currency_strength",
        "analytics.sector_rotation",
        PATTERNS_TOPIC,
        "alerts",
    )
    found = [
        Processor(
            ANALYTICS,
            (INPUT_TOPIC,),
            analytics_out,
            frozenset({ROLLING, ALERT_SOURCE, STRENGTH_SOURCE, ROTATION_SOURCE, PATTERNS}),
            (ANALYTICS,),
        ),
        Processor(
            "lifecycle",
            tuple(dict.fromkeys(("strategies.candidates", "strategies.commands", *RUNNER_INPUTS))),
            ("strategies.commands", "strategies.lifecycle", "alerts", "strategies.performance"),
            frozenset({lifecycle_agent.SOURCE, strategy_runner.SOURCE}),
            (AGENTS, STRATEGY_RUNNER),
            ("lifecycle",),
            ("strategies.candidates", "strategies.commands"),
        ),
        Processor(
            "portfolio",
            (),
            ("portfolio.targets", "alerts", "analytics.correlations"),
            frozenset({portfolio_agent.SOURCE}),
            (AGENTS,),
            ("portfolio",),
            log=portfolio_agent.inputs_topic_name,
        ),
        Processor(
            "risk",
            (),
            ("risk.metrics", "risk.controls", "strategies.commands", "alerts"),
            frozenset({RISK}),
            (AGENTS,),
            ("risk",),
            log=risk_agent.inputs_topic_name,
        ),
    ]
    return {p.name: p for p in found}


PROCESSOR_NAMES = ("analytics", "lifecycle", "portfolio", "risk")
"""The names ``rerun_processors`` takes (``catalogue()`` has the details)."""

_LOG_CAVEAT = (
    "which decides its outputs. Events missing from the re-run may answer inputs the live agent had not committed when "
    "the log was copied (a live run still running, or killed); any other difference is a nondeterminism in the "
    "agent itself."
)
CAVEATS = {
    "portfolio": "the portfolio agent re-ran from a copy of its live input log (the forwarders' merge of candidates, "
    "transitions, performance and account reports, and the timer's refreshes), " + _LOG_CAVEAT,
    "risk": "the risk agent re-ran from a copy of its live input log (the forwarders' merge of positions, daily and "
    "minute bars, account reports, performance, transitions and the kill switch's answers), " + _LOG_CAVEAT,
}
"""What a difference in a processor's re-run can mean, when it differs."""


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopiedTopic:
    topic: str
    """A catalogue name, or an agent's input log by its live full name."""
    copied: int
    left_out: int
    """Records of the re-run processors (by ``source``), which the re-run publishes again."""
    unconsumed: int = 0
    """Records of an input log after the live agents' committed offset, not copied: the live agent had not consumed
    them (when it stopped, or yet)."""


@dataclass(frozen=True)
class ProcessRun:
    name: str
    command: tuple[str, ...]
    returncode: int | None
    log: str


@dataclass(frozen=True)
class ProcessorResult:
    name: str
    topics: tuple[TopicComparison, ...]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.topics)


@dataclass(frozen=True)
class RerunReport:
    live_prefix: str
    prefix: str
    app_id: str
    processors: tuple[ProcessorResult, ...]
    copied: tuple[CopiedTopic, ...]
    runs: tuple[ProcessRun, ...]
    finished: bool
    """Every process had consumed its inputs and the outputs were quiet before the timeout."""
    copy_s: float
    run_s: float
    compare_s: float
    kept: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.finished and all(p.ok for p in self.processors)


# --- settings, topics, copying ------------------------------------------------------------------------------------


DEMO_SYMBOLS, DEMO_SEED, DEMO_HOURS = 1000, 7, 20.5
"""``tidemark demo``'s defaults: its configuration (universe, paper period) is made in its process, from these."""


def live_configuration(settings: Settings) -> tuple[Settings, list[str]]:
    """The settings the live run ran with, and notes on them. The demo's context names its topics but not its
    configuration, which ``tidemark demo`` sets in its process: rebuilt here as its defaults make it."""
    if settings.context is not Context.demo:
        return settings, []
    from connectors.synthetic.market import build_universe
    from core.settings import DEFAULT_UNIVERSE
    from tidemark.demo import demo_settings
    from tidemark.ingest import DEFAULT_START, parse_utc

    days = max(1, int(DEMO_HOURS / 24 + 0.999))
    universe = build_universe(n_symbols=DEMO_SYMBOLS, seed=DEMO_SEED, start=parse_utc(DEFAULT_START), days=days)
    symbols = list(dict.fromkeys([*DEFAULT_UNIVERSE, *(s for r in universe.regimes for s in r.symbols)]))
    live = demo_settings(settings, symbols)
    note = (
        f"demo context: the configuration `tidemark demo` runs with by default ({len(symbols)} symbols in the "
        f"correlation universe, a {live.lifecycle.min_paper_sessions}-session paper period)"
    )
    return live, [note]


def rerun_settings(live: Settings, prefix: str | None) -> Settings:
    """The re-run's settings: the live configuration under a fresh topic prefix and app id (so a fresh transactional
    id, consumer groups and Faust app), with metrics on ports the system picks (the live processes hold theirs)."""
    tag = uuid.uuid4().hex[:8]
    return live.changed(
        context=Context.default,
        topic_prefix=prefix if prefix is not None else f"rerun-{tag}.{live.topic_prefix}",
        app_id=f"{live.app_id}-rerun-{tag}",
        operations__metrics_port=0,
    )


def _existing_topics(bootstrap: str) -> dict[str, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tidemark-rerun-metadata"})
    try:
        return {name: len(t.partitions) for name, t in consumer.list_topics(timeout=30).topics.items()}
    finally:
        consumer.close()


def _check_prefix(live: Settings, rerun: Settings, existing: Mapping[str, int]) -> None:
    """A re-run's prefix must be new (its topics are deleted by prefix afterwards) and not the live one's."""
    prefix = rerun.topic_prefix
    if not prefix or prefix == live.topic_prefix:
        raise RerunError(f"the re-run needs a topic prefix of its own, not {prefix!r}")
    taken = sorted(name for name in existing if name.startswith(prefix))
    if taken:
        raise RerunError(f"topic prefix {prefix!r} is in use ({len(taken)} topics, e.g. {taken[0]}): choose a new one")


def copy_topic(
    reader: Consumer,
    live: Settings,
    rerun: Settings,
    name: str,
    leave_out: frozenset[str],
    producer: ReliableProducer,
    timeout: float,
) -> CopiedTopic:
    """Every committed record of the live ``name`` into the re-run's, each to its partition, in offset order
    (``reader``: a ``range_reader``); records whose ``source`` is in ``leave_out`` are left out (only decoded when
    ``leave_out`` is not empty)."""
    copied, left_out = copy_records(reader, live.topic(name), rerun.topic(name), leave_out, producer, timeout)
    return CopiedTopic(name, copied, left_out)


def copy_records(
    reader: Consumer,
    source: str,
    target: str,
    leave_out: frozenset[str],
    producer: ReliableProducer,
    timeout: float,
    until: int | None = None,
) -> tuple[int, int]:
    """``copy_topic`` between full topic names: the records copied and left out; with ``until``, of a topic of one
    partition, only those before that offset."""
    registry = get_registry()
    copied = left_out = 0
    for message in read_range(reader, source, timeout=timeout):
        if until is not None and (message.offset() or 0) >= until:
            break
        value = message.value()
        if leave_out:
            try:
                if registry.decode(value).record.get("source") in leave_out:
                    left_out += 1
                    continue
            except DecodeError:
                pass  # an input the processor dead-letters: copied as it is
        kind, ts = message.timestamp()
        options: dict[str, Any] = {"partition": message.partition()}
        if kind != TIMESTAMP_NOT_AVAILABLE:
            options["timestamp"] = ts
        if message.headers():
            options["headers"] = message.headers()
        _produce(producer, target, value, message.key(), options)
        copied += 1
    return copied, left_out


def _produce(
    producer: ReliableProducer, topic: str, value: bytes | None, key: bytes | None, options: dict[str, Any]
) -> None:
    deadline = time.monotonic() + 120.0
    while True:
        try:
            producer.kafka.produce(topic, value, key, **options)
            return
        except BufferError:
            if time.monotonic() > deadline:
                raise RerunError(f"copying into {topic}: the producer's queue stayed full for 120 s") from None
            producer.kafka.poll(0.05)


# --- the processes ------------------------------------------------------------------------------------------------


class _Process:
    def __init__(self, name: str, command: list[str], settings: Settings, log_path: Path) -> None:
        self.name = name
        self.command = tuple(command)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - owned by the process, closed in stop()
        self.popen = subprocess.Popen(
            command, env=settings.environment(), stdout=self._log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT
        )

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
        self._log.close()
        return self.popen.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def run(self) -> ProcessRun:
        return ProcessRun(self.name, self.command, self.popen.returncode, str(self.log_path))


def _commands(chosen: Sequence[Processor]) -> dict[str, list[str]]:
    python = sys.executable
    commands: dict[str, list[str]] = {}
    agents = [a for p in chosen for a in p.agents]
    for process in dict.fromkeys(p for proc in chosen for p in proc.processes):
        if process == ANALYTICS:
            commands[process] = [python, "-m", "streams.runner"]
        elif process == STRATEGY_RUNNER:
            commands[process] = [python, "-m", "tidemark.cli", "strategy", "run"]
        elif process == AGENTS:
            commands[process] = [python, "-m", "tidemark.rerun", AGENTS, ",".join(agents)]
    return commands


def _group_caught_up(bootstrap: str, group: str, topics: list[str]) -> tuple[bool, int]:
    """Whether ``group`` has committed every committed record of ``topics``, and how many offsets it lags by. A
    partition that ends within ``CAUGHT_UP_READ`` offsets of its committed one is read from there: the offsets after
    it may all be transaction markers."""
    lags = partition_lags(bootstrap, group, topics)
    behind = [p for p in lags if p.lag > 0]
    total = sum(p.lag for p in behind)
    if not behind:
        return True, 0
    if any(p.committed is None or p.lag > CAUGHT_UP_READ for p in behind):
        return False, total
    reader = range_reader(bootstrap, f"{group}-caught-up")
    try:
        for p in behind:
            assert p.committed is not None
            if any(True for _ in read_range(reader, p.topic, {p.partition: p.committed}, timeout=30)):
                return False, total
    finally:
        reader.close()
    return True, 0


_METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")
_LAG_LINE = re.compile(r"^tidemark_consumer_lag\{([^}]*)\}\s+(\S+)$")


def _scraped_lag(process: _Process, partitions: int) -> tuple[bool, int]:
    """The strategy runner commits no offsets (it reads from the start on every start): its lag is the one librdkafka
    reports every 5 s, on its metrics endpoint (its port is in its log)."""
    found = _METRICS_URL.search(process.log_path.read_text(errors="replace"))
    if found is None:
        return False, -1
    try:
        with urllib.request.urlopen(found.group(1), timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return False, -1
    lags = [float(m.group(2)) for line in text.splitlines() if (m := _LAG_LINE.match(line))]
    total = int(sum(lags))
    return len(lags) >= partitions and total == 0, total


def _watermarks(consumer: Consumer, prefix: str) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of every topic under ``prefix`` (the Faust app's own topics too)."""
    marks: dict[tuple[str, int], int] = {}
    for name, topic in consumer.list_topics(timeout=30).topics.items():
        if not name.startswith(prefix):
            continue
        for partition in topic.partitions:
            try:
                marks[(name, partition)] = consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=10, cached=False
                )[1]
            except KafkaException:
                marks[(name, partition)] = -1  # leadership settling: counts as a change
    return marks


def _catch_up_checks(
    rerun: Settings, chosen: Sequence[Processor], running: Mapping[str, _Process]
) -> dict[str, Callable[[], tuple[bool, int]]]:
    """Per process, a check of whether it has consumed everything: (done, lag; -1 when not known yet)."""
    from streams.agents import agents_app_id
    from streams.portfolio.agent import inputs_topic_name as portfolio_inputs
    from streams.risk.agent import inputs_topic_name as risk_inputs

    bootstrap = rerun.kafka.bootstrap
    agents = {a for p in chosen for a in p.agents}
    agent_inputs = sorted({rerun.topic(t) for p in chosen for t in p.agent_inputs})
    internal = [portfolio_inputs(rerun)] * ("portfolio" in agents) + [risk_inputs(rerun)] * ("risk" in agents)
    runner_topics = [rerun.topic(t) for t in RUNNER_INPUTS]

    def analytics() -> tuple[bool, int]:
        return _group_caught_up(bootstrap, rerun.app_id, [rerun.topic(t) for t in catalogue()[ANALYTICS].inputs])

    def faust_agents() -> tuple[bool, int]:
        existing = _existing_topics(bootstrap)
        if any(t not in existing for t in internal):
            return False, -1  # the app has not made its own topics yet
        return _group_caught_up(bootstrap, agents_app_id(rerun), [*agent_inputs, *internal])

    def strategy_runner() -> tuple[bool, int]:
        existing = _existing_topics(bootstrap)
        return _scraped_lag(running[STRATEGY_RUNNER], sum(existing.get(t, 0) for t in runner_topics))

    checks = {ANALYTICS: analytics, AGENTS: faust_agents, STRATEGY_RUNNER: strategy_runner}
    return {name: checks[name] for name in running}


def _wait(
    rerun: Settings,
    chosen: Sequence[Processor],
    running: Mapping[str, _Process],
    timeout_s: float,
    quiet_s: float,
    progress: Progress,
) -> bool:
    """Until every process has consumed its inputs and nothing new was published for ``quiet_s``; False at the
    timeout. A process that exits is an error."""
    checks = _catch_up_checks(rerun, chosen, running)
    consumer = Consumer({"bootstrap.servers": rerun.kafka.bootstrap, "group.id": f"{rerun.app_id}-watermarks"})
    started = time.monotonic()
    deadline = started + timeout_s
    marks: dict[tuple[str, int], int] = {}
    changed_at = started
    said_at = started
    try:
        while True:
            for process in running.values():
                if process.popen.poll() is not None:
                    raise RerunError(
                        f"{process.name} exited with code {process.popen.returncode} during the re-run; the end of "
                        f"its log ({process.log_path}):\n{process.tail()}"
                    )
            now_marks = _watermarks(consumer, rerun.topic_prefix)
            now = time.monotonic()
            if now_marks != marks:
                published = sum(now_marks.values()) - sum(marks.values())
                marks, changed_at = now_marks, now
                if now - said_at >= PROGRESS_EVERY_S:
                    progress(f"running for {now - started:.0f}s: {published:,} more offsets in the re-run's topics")
                    said_at = now
            if now - changed_at >= quiet_s:
                states = {name: check() for name, check in checks.items()}
                if all(done for done, _ in states.values()) and _watermarks(consumer, rerun.topic_prefix) == marks:
                    progress(f"every process consumed its inputs; nothing published for {now - changed_at:.0f}s")
                    return True
                if now - said_at >= PROGRESS_EVERY_S:
                    lagging = ", ".join(
                        f"{n} lag {lag if lag >= 0 else '?'}" for n, (d, lag) in states.items() if not d
                    )
                    progress(f"running for {now - started:.0f}s, quiet for {now - changed_at:.0f}s; {lagging}")
                    said_at = now
            if now > deadline:
                progress(f"not done after {timeout_s:.0f}s: comparing what was published")
                return False
            time.sleep(POLL_S)
    finally:
        consumer.close()


# --- comparison ---------------------------------------------------------------------------------------------------


def read_events(reader: Consumer, topic: str, sources: frozenset[str], timeout: float) -> list[dict[str, Any]]:
    """The decoded events of ``topic`` (a full name) whose ``source`` is in ``sources``, in each partition's order
    (partitions one after the other); undecodable records are not events of ours and are skipped, and a topic that
    does not exist has none."""
    registry = get_registry()
    by_partition: dict[int, list[dict[str, Any]]] = {}
    if topic not in reader.list_topics(timeout=30).topics:
        return []
    for message in read_range(reader, topic, timeout=timeout):
        try:
            record = registry.decode(message.value()).record
        except DecodeError:
            continue
        if record.get("source") in sources:
            by_partition.setdefault(message.partition() or 0, []).append(record)
    return [event for partition in sorted(by_partition) for event in by_partition[partition]]


def _compare(
    live: Settings, rerun: Settings, chosen: Sequence[Processor], timeout: float, progress: Progress
) -> tuple[ProcessorResult, ...]:
    sources = frozenset(s for p in chosen for s in p.sources)
    topics = list(dict.fromkeys(t for p in chosen for t in p.outputs))
    live_events: dict[str, list[dict[str, Any]]] = {}
    rerun_events: dict[str, list[dict[str, Any]]] = {}
    reader = range_reader(rerun.kafka.bootstrap, f"{rerun.app_id}-compare")
    try:
        for name in topics:
            live_events[name] = read_events(reader, live.topic(name), sources, timeout)
            rerun_events[name] = read_events(reader, rerun.topic(name), sources, timeout)
            progress(f"read {name}: {len(live_events[name]):,} live events, {len(rerun_events[name]):,} re-run events")
    finally:
        reader.close()
    results = []
    for processor in chosen:
        mine = processor.sources
        results.append(
            ProcessorResult(
                processor.name,
                tuple(
                    compare_topic(
                        name,
                        [e for e in live_events[name] if e["source"] in mine],
                        [e for e in rerun_events[name] if e["source"] in mine],
                    )
                    for name in processor.outputs
                ),
            )
        )
    return tuple(results)


# --- the whole re-run ---------------------------------------------------------------------------------------------


def rerun_processors(
    settings: Settings,
    processors: Sequence[str],
    prefix: str | None,
    timeout_s: float,
    progress: Progress,
    *,
    keep: bool = False,
    quiet_s: float = QUIET_S,
    log_dir: Path | None = None,
) -> RerunReport:
    """Re-run ``processors`` (names of ``PROCESSOR_NAMES``) from the live topics of ``settings`` into ``prefix``
    (default ``rerun-<8 hex>.`` + the live prefix), and compare their events with the live run's. ``timeout_s``
    bounds the wait for the processes; ``progress`` is told each step. The re-run's topics, consumer groups and
    Faust state are deleted afterwards unless ``keep``; the processes' logs stay in ``log_dir`` (default: the state
    directory's ``logs``).

    The live run is read as it is at the start: a live system still running publishes events the re-run, which saw
    only the inputs copied then, cannot have (``missing``)."""
    known = catalogue()
    unknown = [name for name in processors if name not in known]
    if unknown or not processors:
        raise ValueError(f"unknown processor(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}")
    chosen = [known[name] for name in dict.fromkeys(processors)]
    live, notes = live_configuration(settings)
    for note in notes:
        progress(note)
    rerun = rerun_settings(live, prefix)
    bootstrap = live.kafka.bootstrap
    existing = _existing_topics(bootstrap)
    _check_prefix(live, rerun, existing)
    logs = log_dir or live.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = rerun.app_id.rsplit("-", 1)[-1]
    running: dict[str, _Process] = {}
    created = False
    finished = False
    copy_s = run_s = compare_s = 0.0
    copied: tuple[CopiedTopic, ...] = ()
    results: tuple[ProcessorResult, ...] = ()
    try:
        progress(f"re-running {', '.join(p.name for p in chosen)} into {rerun.topic_prefix}* as {rerun.app_id}")
        create_topics(rerun)
        created = True
        started = time.monotonic()
        copied = _copy_inputs(live, rerun, chosen, existing, max(timeout_s, 60.0), progress)
        copy_s = time.monotonic() - started
        started = time.monotonic()
        for name, command in _commands(chosen).items():
            running[name] = _Process(name, command, rerun, logs / f"rerun-{tag}-{name}.log")
            progress(f"started {name}: {' '.join(command[1:])} (log {running[name].log_path})")
        finished = _wait(rerun, chosen, running, timeout_s, quiet_s, progress)
        for process in running.values():
            process.stop()
        run_s = time.monotonic() - started
        progress(f"stopped {', '.join(running)} after {run_s:.0f}s")
        started = time.monotonic()
        results = _compare(live, rerun, chosen, max(timeout_s, 60.0), progress)
        compare_s = time.monotonic() - started
        notes += [f"{p.name}: {CAVEATS[p.name]}" for p in chosen if p.name in CAVEATS and not _ok(results, p.name)]
    finally:
        for process in running.values():
            process.stop()
        if created and not keep:
            _delete(rerun, chosen)
    return RerunReport(
        live_prefix=live.topic_prefix,
        prefix=rerun.topic_prefix,
        app_id=rerun.app_id,
        processors=results,
        copied=copied,
        runs=tuple(p.run() for p in running.values()),
        finished=finished,
        copy_s=copy_s,
        run_s=run_s,
        compare_s=compare_s,
        kept=keep,
        notes=tuple(notes),
    )


def _copy_inputs(
    live: Settings,
    rerun: Settings,
    chosen: Sequence[Processor],
    existing: Mapping[str, int],
    timeout: float,
    progress: Progress,
) -> tuple[CopiedTopic, ...]:
    """Every input of the chosen processors, less the records they publish themselves; and the input logs of those
    that re-run from one, as far as the live agents had consumed them, into topics of one partition made here."""
    from streams.agents import agents_app_id

    sources = frozenset(s for p in chosen for s in p.sources)
    written = {t for p in chosen for t in p.outputs}
    targets = _existing_topics(rerun.kafka.bootstrap)
    producer = ReliableProducer(producer_config(rerun.kafka.bootstrap), "copying the re-run's inputs")
    reader = range_reader(live.kafka.bootstrap, f"{rerun.app_id}-copy")
    copied = []
    try:
        for name in dict.fromkeys(t for p in chosen for t in p.inputs):
            source, target = live.topic(name), rerun.topic(name)
            if source not in existing:
                progress(f"{source} does not exist: nothing to copy")
                continue
            if existing[source] > targets.get(target, 0):
                raise RerunError(
                    f"{source} has {existing[source]} partitions, the re-run's {target} {targets.get(target, 0)}: "
                    "set TIDEMARK_KAFKA_TOPIC_PARTITIONS as the live run did"
                )
            leave_out = sources if name in written else frozenset()
            done = copy_topic(reader, live, rerun, name, leave_out, producer, timeout)
            producer.flush(timeout)
            left = f", {done.left_out:,} of the re-run processors' own left out" if done.left_out else ""
            progress(f"copied {source} → {target}: {done.copied:,} records{left}")
            copied.append(done)
        for processor in chosen:
            if processor.log is None:
                continue
            source, target = processor.log(live), processor.log(rerun)
            if existing.get(source, 1) != 1:
                raise RerunError(f"{source} has {existing[source]} partitions: an input log has one")
            _create_log(rerun, target)
            if source not in existing:
                progress(f"{source} does not exist: the {processor.name} agent had no input")
                continue
            # What the live agent consumed: a graceful stop commits every record it answered, and a refresh the timer
            # appended as it stopped was never answered (a running one's last few may not be committed yet).
            (where,) = partition_lags(live.kafka.bootstrap, agents_app_id(live), [source])
            count, _ = copy_records(reader, source, target, frozenset(), producer, timeout, where.committed)
            producer.flush(timeout)
            unconsumed = where.end - where.committed if where.committed is not None else 0
            more = f"; {unconsumed:,} after the live agents' committed offset left out" if unconsumed else ""
            progress(f"copied {processor.name}'s input log {source} → {target}: {count:,} records{more}")
            copied.append(CopiedTopic(source, count, 0, unconsumed))
    finally:
        reader.close()
    return tuple(copied)


def _create_log(rerun: Settings, name: str) -> None:
    """An agent's input log as Faust makes it (``streams.agents.input_log``: one partition, replication 1, kept
    forever), made before the agent starts, so the agent finds it whole; Faust leaves a topic that exists
    alone. It is new: nothing under the re-run's prefix existed (``_check_prefix``)."""
    from streams.agents import INPUT_LOG_CONFIG

    admin = AdminClient({"bootstrap.servers": rerun.kafka.bootstrap})
    log = NewTopic(name, num_partitions=1, replication_factor=1, config=INPUT_LOG_CONFIG)

    def create() -> None:
        try:
            admin.create_topics([log])[name].result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # made by an attempt that seemed to fail
                raise

    until_ready(create, f"creating {name}", rerun.kafka.bootstrap)
    deadline = time.monotonic() + 30.0
    while any(p.leader < 0 for p in admin.list_topics(name, timeout=30).topics[name].partitions.values()):
        if time.monotonic() > deadline:
            raise RerunError(f"{name} has no partition leader after 30 s")
        time.sleep(0.05)


def _ok(results: Sequence[ProcessorResult], name: str) -> bool:
    return all(r.ok for r in results if r.name == name)


def _delete(rerun: Settings, chosen: Sequence[Processor]) -> None:
    from streams.agents import agents_app_id
    from streams.lifecycle.runner import runner_id

    groups = [rerun.app_id]
    if any(AGENTS in p.processes for p in chosen):
        groups.append(agents_app_id(rerun))
        shutil.rmtree(rerun.state_dir / "agents" / agents_app_id(rerun), ignore_errors=True)
    if any(STRATEGY_RUNNER in p.processes for p in chosen):
        groups += [runner_id(rerun), f"{runner_id(rerun)}-outputs"]
    delete_prefixed_topics(rerun, groups=groups)


# --- printing -----------------------------------------------------------------------------------------------------


def report_dict(report: RerunReport) -> dict[str, Any]:
    """The report as JSON-ready data, with each topic's ``ok`` and the verdict."""
    data = asdict(report)
    for processor, result in zip(data["processors"], report.processors, strict=True):
        processor["ok"] = result.ok
        for topic, comparison in zip(processor["topics"], result.topics, strict=True):
            topic["ok"] = comparison.ok
    data["ok"] = report.ok
    return data


def print_report(report: RerunReport, console: Console, as_json: bool) -> None:
    """Per processor and output topic: the live run's events, the re-run's, how many are identical, and the first
    mismatches with the fields that differ."""
    if as_json:
        console.print(json.dumps(report_dict(report), indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=f"re-run {report.prefix}* against the live run {report.live_prefix or '(no prefix)'}*")
    for column in ("processor", "topic", "live", "re-run", "identical", "missing", "extra", "differing", ""):
        table.add_column(column, justify="left" if column in ("processor", "topic", "") else "right")
    for result in report.processors:
        for t in result.topics:
            mark = "[green]identical[/green]" if t.ok else "[red]differs[/red]"
            row = (t.live, t.rerun, t.identical, t.missing, t.extra, t.differing)
            table.add_row(result.name, t.topic, *(f"{n:,}" for n in row), mark)
    console.print(table)
    for result in report.processors:
        for t in result.topics:
            if t.ok:
                continue
            console.print(f"[bold]{result.name} · {t.topic}[/bold]")
            if t.missing_ids:
                console.print(f"  missing from the re-run ({t.missing:,}): {', '.join(t.missing_ids)}")
            if t.extra_ids:
                console.print(f"  extra in the re-run ({t.extra:,}): {', '.join(t.extra_ids)}")
            for d in t.differences:
                console.print(f"  {d.event_id} differs:", highlight=False)
                for f in d.fields:
                    console.print(f"    {f.path}: live {f.live} · re-run {f.rerun}", highlight=False, markup=False)
                if d.more_fields:
                    console.print(f"    … and {d.more_fields} more field(s)")
            if t.inconsistent:
                console.print(f"  published twice with different payloads: {', '.join(t.inconsistent)}")
    copied = ", ".join(
        f"{c.topic} {c.copied:,}"
        + (f" (-{c.left_out:,})" if c.left_out else "")
        + (f" ({c.unconsumed:,} not consumed live)" if c.unconsumed else "")
        for c in report.copied
    )
    console.print(f"inputs copied: {copied or 'none'}", highlight=False)
    console.print(
        f"copy {report.copy_s:.1f}s, run {report.run_s:.1f}s, compare {report.compare_s:.1f}s; "
        + ("topics kept" if report.kept else "the re-run's topics were deleted"),
        highlight=False,
    )
    for run in report.runs:
        console.print(f"  {run.name}: exit {run.returncode}, log {run.log}", highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if not report.finished:
        console.print("[red]the processes had not finished before the timeout: the comparison is of a partial re-run")
    verdict = "[green]identical: every event id and payload[/green]" if report.ok else "[red]the re-run differs[/red]"
    console.print(verdict)


# --- the Faust agents of a re-run ---------------------------------------------------------------------------------


def run_agents(names: Sequence[str]) -> None:
    """``tidemark agents`` with only the named agents installed (lifecycle, portfolio, execution, risk), in that
    command's order; the portfolio and risk agents without their forwarders (and the portfolio's timer): they fold
    the copy of their live input log."""
    import faust

    from streams.agents import create_app
    from streams.execution.agent import install as install_execution
    from streams.lifecycle.agent import install as install_lifecycle
    from streams.portfolio.agent import install as install_portfolio
    from streams.risk.agent import install as install_risk

    installers: dict[str, Callable[[faust.App, Settings], None]] = {
        "lifecycle": install_lifecycle,
        "portfolio": lambda app, settings: install_portfolio(app, settings, forward=False),
        "execution": install_execution,
        "risk": lambda app, settings: install_risk(app, settings, forward=False),
    }
    unknown = set(names) - set(installers)
    if unknown:
        raise SystemExit(f"unknown agent(s): {', '.join(sorted(unknown))}")
    settings = get_settings()
    app = create_app(settings)
    for name, install in installers.items():
        if name in names:
            install(app, settings)
    faust.Worker(app, loglevel=settings.operations.log_level).execute_from_commandline()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != AGENTS:
        raise SystemExit("usage: python -m tidemark.rerun agents NAME[,NAME...]")
    run_agents(sys.argv[2].split(","))
