"""``python -m bench.fuzz [--bad N] [--good M] [--seed S]``: bad input at volume, mixed with good bars.

Publishes a seeded mix of good bars and bad payloads of every class (random bytes, truncated Avro, wrong marker or
schema fingerprint, valid Avro of another schema, bytes after the record, empty values, tombstones, huge values,
and well-formed bars that are semantically invalid: NaN, infinite, zero or negative prices, high below low, open or
close outside the range, bad volume or vwap, bars from the future or before 1970, unknown intervals, unusable
symbols) into the topics the worker reads, under a fresh topic prefix and database. Then runs ``tidemark worker``,
waits (bounded) until both its processes have caught up, and checks that:

- neither worker process exited (the worker is alive and its children are the ones it started with);
- ``dlq`` holds exactly one dead letter per bad payload and per process that reads its topic (the analytics runner
  for md.bars.1m, the projection sink for every projected topic), matched by the source topic, partition and
  offset it carries, each with a reason and the original bytes; no good payload is dead-lettered;
- every good bar is in PostgreSQL exactly once, with its values, and nothing else is.

Prints the counts per class and the elapsed time, and exits 1 when a check fails (keeping the topics and database
for a look). ``tests/integration/test_dead_letters.py`` runs the same plan and checks at a few thousand payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from bench.pipeline import REPO, drop_database, fresh_database, market, spawn_worker
from connectors.publisher import BarIds
from core.consumed import Consumed
from core.deadletter import DEAD_LETTER_SCHEMA, dead_letter_record
from core.events import common_fields, now_ns
from core.kafka import consumer_lag, producer_config, range_reader, read_range
from core.settings import Settings, get_settings
from core.units import NS_PER_DAY
from projections.sink import PROJECTED_TOPICS
from schemas.bars import BAR_SCHEMA, BarBatch
from schemas.catalogue import topic_spec
from schemas.codec import get_registry
from schemas.fastbars import encode_bars
from streams.runner import HOST, INPUT_TOPIC
from tidemark.topics import create_topics, delete_prefixed_topics

GOOD = "good bar"
BARS_1M, BARS_1D = INPUT_TOPIC, "md.bars.1d"
OTHER_TOPICS = tuple(topic for topic in PROJECTED_TOPICS if not topic.startswith("md.bars."))
# Up to (nearly) the topic's limit: a dead letter carries the original bytes, so it is larger than the message.
HUGE_BYTES = (64 * 1024, topic_spec(BARS_1M).max_message_bytes - 8 * 1024)
HUGE_TOP = 64 * 1024  # half the huge payloads are this close to the limit, where a dead letter outgrows 1 MB
UNKNOWN_INTERVALS = ("5m", "1h", "", "1M", "60s", "1 m", "minute", "\u00b5s")
BAD_SYMBOLS = ("", "SP\x00Y", "SPY\n", " SPY", "S\tPY", "X" * 65, "\u200bSPY", "A\x7fB")
DEFAULT_REDIS_DB = 15  # the default context uses 0; the fuzz run's latest-value keys go elsewhere


@dataclass(frozen=True, slots=True)
class Payload:
    """One message to publish: its class (``GOOD`` for a good bar), catalogue topic, key and value."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None


@dataclass
class Plan:
    """The messages in publishing order, and the good bars as (symbol, interval, start_ns) -> (close, volume)."""

    payloads: list[Payload]
    good_bars: dict[tuple[str, str, int], tuple[float, float]]

    def count(self, kind: str | None = None) -> int:
        return sum(1 for p in self.payloads if kind is None or p.kind == kind)

    def topics(self) -> list[str]:
        return sorted({p.topic for p in self.payloads})


# ------------------------------------------------------------------------------------------------- the plan


class _Maker:
    """Bad payloads of each class from a pool of valid bars (never published themselves) and a seeded rng."""

    def __init__(self, rng: np.random.Generator, template: BarBatch, published_ns: int) -> None:
        self.rng = rng
        self.template = template
        self.published_ns = published_ns
        self.registry = get_registry()

    def _ids(self, n: int) -> list[str]:
        return [str(uuid.UUID(bytes=self.rng.bytes(16), version=4)) for _ in range(n)]

    def bars(self, n: int, interval: str = "1m") -> BarBatch:
        """``n`` valid bars of ``interval`` drawn from the template (each a fresh copy, free to spoil)."""
        batch = self.template.take(self.rng.integers(0, len(self.template), n))
        if interval == "1m":
            return batch
        start = self.rng.integers(0, 365, n) * NS_PER_DAY + _NY_MIDNIGHT_NS
        return replace(batch, interval=interval, start_ns=start, end_ns=start + NS_PER_DAY)

    def encode(self, bars: BarBatch) -> list[bytes]:
        return encode_bars(bars, source="fuzz", ts_ingest=self.published_ns, event_ids=self._ids(len(bars)))

    def valid_bar(self, interval: str = "1m") -> bytes:
        return self.encode(self.bars(1, interval))[0]

    def other_event(self, topic: str) -> bytes:
        """A valid message of a schema ``topic`` does not carry: an alert, a dead letter or a bar."""
        accepted = topic_spec(topic).value_schemas
        choices = [
            schema for schema in ("tidemark.risk.AlertRaised", DEAD_LETTER_SCHEMA, BAR_SCHEMA) if schema not in accepted
        ]
        schema = choices[int(self.rng.integers(0, len(choices)))]
        if schema == BAR_SCHEMA:
            return self.valid_bar()
        if schema == "tidemark.risk.AlertRaised":
            record = {
                **common_fields("fuzz", self.published_ns, event_id=self._ids(1)[0]),
                "kind": "fuzz.alert",
                "severity": "INFO",
                "subject": "SPY",
                "message": "not a bar",
                "from_value": None,
                "to_value": None,
                "since_ns": None,
                "details": {},
            }
            return self.registry.encode("tidemark.risk.AlertRaised", record)
        letter = dead_letter_record(
            Consumed("elsewhere", 0, int(self.rng.integers(0, 10**9)), None, b"x"), "r", "E", "p"
        )
        return self.registry.encode(DEAD_LETTER_SCHEMA, letter)

    def random_bytes(self, low: int = 1, high: int = 300) -> bytes:
        data = self.rng.bytes(int(self.rng.integers(low, high)))
        return b"\x00" + data if data[:2] == b"\xc3\x01" else data


_NY_MIDNIGHT_NS = int(datetime(2024, 1, 2, 5, tzinfo=UTC).timestamp()) * 10**9
_PRICES = ("open", "high", "low", "close")


def _spoil(column: str, values: Callable[[np.random.Generator, int], np.ndarray]) -> Callable[[_Maker, str], bytes]:
    """A class of well-formed bars with ``column`` set to a bad value."""

    def make(m: _Maker, topic: str) -> bytes:
        bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
        getattr(bars, column)[:] = values(m.rng, 1)
        return m.encode(bars)[0]

    return make


def _bad_price(bad: Sequence[float]) -> Callable[[_Maker, str], bytes]:
    def make(m: _Maker, topic: str) -> bytes:
        bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
        getattr(bars, _PRICES[int(m.rng.integers(0, 4))])[:] = m.rng.choice(bad) * (1 + m.rng.random())
        return m.encode(bars)[0]

    return make


def _high_below_low(m: _Maker, topic: str) -> bytes:
    bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
    bars.high[:], bars.low[:] = bars.low - 0.01, bars.high + 0.01
    return m.encode(bars)[0]


def _outside_range(m: _Maker, topic: str) -> bytes:
    bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
    column = bars.open if m.rng.random() < 0.5 else bars.close
    column[:] = bars.high * 1.01 if m.rng.random() < 0.5 else bars.low * 0.99
    return m.encode(bars)[0]


def _times(kind: str) -> Callable[[_Maker, str], bytes]:
    def make(m: _Maker, topic: str) -> bytes:
        bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
        length = int(bars.end_ns[0] - bars.start_ns[0])
        if kind == "future":  # from a month to two centuries after publication
            start = m.published_ns + int(m.rng.integers(30, 200 * 365)) * NS_PER_DAY
            bars.start_ns[:], bars.end_ns[:] = start, start + length
        elif kind == "before 1970":
            start = -int(m.rng.integers(1, 80 * 365)) * NS_PER_DAY
            bars.start_ns[:], bars.end_ns[:] = start, start + length
        else:  # ends at or before its start
            bars.end_ns[:] = bars.start_ns - int(m.rng.integers(0, 2)) * length
        return m.encode(bars)[0]

    return make


def _unknown_interval(m: _Maker, topic: str) -> bytes:
    bars = replace(m.bars(1), interval=str(m.rng.choice(UNKNOWN_INTERVALS)))
    return m.encode(bars)[0]


def _bad_symbol(m: _Maker, topic: str) -> bytes:
    bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
    bars.symbol[:] = str(m.rng.choice(BAD_SYMBOLS))
    return m.encode(bars)[0]


def _huge(m: _Maker, topic: str) -> bytes:
    low, high = HUGE_BYTES
    size = int(m.rng.integers(high - HUGE_TOP if m.rng.random() < 0.5 else low, high))
    if topic.startswith("md.bars.") and m.rng.random() < 0.5:  # a well-formed bar with a huge symbol
        bars = m.bars(1, "1d" if topic == BARS_1D else "1m")
        bars.symbol[:] = "H" * size
        return m.encode(bars)[0]
    return m.random_bytes(size, size + 1)


def _truncated(m: _Maker, topic: str) -> bytes:
    valid = m.valid_bar("1d" if topic == BARS_1D else "1m") if topic.startswith("md.bars.") else m.other_event(topic)
    return valid[: int(m.rng.integers(1, len(valid)))]


def _fingerprint(m: _Maker, topic: str) -> bytes:
    valid = m.valid_bar()
    return valid[:2] + m.rng.bytes(8) + valid[10:]


def _marker(m: _Maker, topic: str) -> bytes:
    valid = m.valid_bar()
    first = int(m.rng.integers(0, 256))
    return bytes([first if first != 0xC3 else 0xC2]) + valid[1:] if m.rng.random() < 0.5 else b"\xc3\x00" + valid[2:]


def _wrong_schema(m: _Maker, topic: str) -> bytes:
    return m.other_event(topic)


def _trailing(m: _Maker, topic: str) -> bytes:
    return m.valid_bar("1d" if topic == BARS_1D else "1m") + m.random_bytes(1, 16)


# class -> (topics it is published to, weight, maker). Bars topics get every class; the event topics the ones
# that make sense for a message that is not a bar.
_BARS = (BARS_1M, BARS_1M, BARS_1M, BARS_1M, BARS_1D)  # four in five bar payloads on the runner's topic
_ANY = (*_BARS, *OTHER_TOPICS)
CLASSES: dict[str, tuple[tuple[str, ...], float, Callable[[_Maker, str], bytes | None]]] = {
    "random bytes": (_ANY, 8, lambda m, t: m.random_bytes()),
    "random after the marker": (_ANY, 4, lambda m, t: b"\xc3\x01" + m.random_bytes(0, 200)),
    "truncated Avro": (_ANY, 8, _truncated),
    "wrong fingerprint": (_ANY, 5, _fingerprint),
    "wrong marker": (_ANY, 4, _marker),
    "another schema": (_ANY, 6, _wrong_schema),
    "bytes after the record": (_BARS, 3, _trailing),
    "empty value": (_ANY, 3, lambda m, t: b""),
    "tombstone": (_ANY, 3, lambda m, t: None),
    "huge value": (_ANY, 0.1, _huge),
    "NaN price": (_BARS, 4, _bad_price([math.nan])),
    "infinite price": (_BARS, 2, _bad_price([math.inf, -math.inf])),
    "negative or zero price": (_BARS, 5, _bad_price([-1.0, -0.0, 0.0, -1e9])),
    "high below low": (_BARS, 5, _high_below_low),
    "open/close outside [low, high]": (_BARS, 4, _outside_range),
    "bad volume": (_BARS, 3, _spoil("volume", lambda r, n: r.choice([-1.0, -1e12, math.nan, math.inf], n))),
    "bad vwap": (_BARS, 2, _spoil("vwap", lambda r, n: r.choice([-5.0, 0.0, math.inf], n))),
    "negative trade count": (_BARS, 1, _spoil("trade_count", lambda r, n: -r.integers(2, 10**6, n))),
    "bar from the future": (_BARS, 5, _times("future")),
    "bar before 1970": (_BARS, 2, _times("before 1970")),
    "end not after start": (_BARS, 2, _times("end")),
    "unknown interval": ((BARS_1M, BARS_1D), 3, _unknown_interval),
    "unusable symbol": (_BARS, 3, _bad_symbol),
}


def good_market(count: int, seed: int) -> BarBatch:
    """``count`` good bars: minute bars of the synthetic market (so every processor has real work), one in twenty
    relabelled as daily bars of distinct sessions."""
    symbols = min(1000, max(100, math.ceil(count / 300)))  # the synthetic market needs 80 at least
    batches = market(symbols, min(390, math.ceil(count / symbols) + 1))
    bars = BarBatch.concat(batches)
    while len(bars) < count:  # a longer day: start where the last one ended
        more = BarBatch.concat(market(symbols, 390))
        shift = (bars.start_ns.max() - more.start_ns.min()) // NS_PER_DAY * NS_PER_DAY + NS_PER_DAY
        bars = BarBatch.concat([bars, replace(more, start_ns=more.start_ns + shift, end_ns=more.end_ns + shift)])
    bars = bars.take(np.random.default_rng(seed).permutation(len(bars))[:count])
    return bars


def _as_daily(bars: BarBatch) -> BarBatch:
    """Minute bars as daily bars, each (symbol, session) once: the k-th bar of a symbol takes the k-th session."""
    symbols = bars.symbol.astype(str)
    order = np.lexsort((bars.start_ns, symbols))
    rank = np.empty(len(bars), np.int64)
    first = np.r_[True, symbols[order][1:] != symbols[order][:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank[order] = np.arange(len(order)) - starts
    start = _NY_MIDNIGHT_NS + rank * NS_PER_DAY
    return replace(bars, interval="1d", start_ns=start, end_ns=start + NS_PER_DAY)


def make_plan(bad: int, good: int, seed: int = 7) -> Plan:
    """The seeded mix: ``good`` good bars and ``bad`` bad payloads, every class at least once on each of its topics
    (so ``bad`` must be at least the number of (class, topic) pairs), shuffled together."""
    rng = np.random.default_rng(seed)
    published_ns = now_ns()
    pairs = sorted({(kind, topic) for kind, (topics, _, _) in CLASSES.items() for topic in topics})
    if bad < len(pairs):
        raise ValueError(f"--bad must be at least {len(pairs)}: one payload per class and topic")
    bars = good_market(good + 2000, seed)
    template, bars = bars.take(slice(good, None)), bars.take(slice(0, good))
    daily = rng.random(len(bars)) < 0.05
    maker = _Maker(rng, template, published_ns)
    payloads: list[Payload] = []
    good_bars: dict[tuple[str, str, int], tuple[float, float]] = {}
    for topic, part in ((BARS_1M, bars.take(~daily)), (BARS_1D, _as_daily(bars.take(daily)))):
        values = encode_bars(part, source="fuzz", ts_ingest=published_ns, event_ids=BarIds("fuzz")(part))
        for i, (symbol, value) in enumerate(zip(part.symbol.tolist(), values, strict=True)):
            payloads.append(Payload(GOOD, topic, symbol.encode(), value))
            good_bars[(symbol, part.interval, int(part.start_ns[i]))] = (float(part.close[i]), float(part.volume[i]))
    names = list(CLASSES)
    weights = np.array([CLASSES[name][1] for name in names])
    drawn = rng.choice(len(names), bad - len(pairs), p=weights / weights.sum())
    chosen = pairs + [(names[k], str(rng.choice(CLASSES[names[k]][0]))) for k in drawn.tolist()]
    keys = [s.encode() for s in sorted(set(bars.symbol.tolist()))]
    for kind, topic in chosen:
        key = keys[int(rng.integers(0, len(keys)))] if rng.random() < 0.9 else None
        payloads.append(Payload(kind, topic, key, CLASSES[kind][2](maker, topic)))
    order = rng.permutation(len(payloads))
    return Plan([payloads[i] for i in order.tolist()], good_bars)


# ------------------------------------------------------------------------------------------- publish and check


def publish(settings: Settings, plan: Plan) -> list[tuple[int, int]]:
    """Every payload, in order; returns the (partition, offset) Kafka gave each one."""
    producer = Producer(
        producer_config(settings.kafka.bootstrap, **{"message.max.bytes": topic_spec(BARS_1M).max_message_bytes})
    )
    where: list[tuple[int, int]] = [(-1, -1)] * len(plan.payloads)
    errors: list[str] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(f"payload {index}: {error}")
            else:
                where[index] = (message.partition(), message.offset())

        return report

    for index, payload in enumerate(plan.payloads):
        while True:
            try:
                producer.produce(
                    settings.topic(payload.topic), payload.value, payload.key, on_delivery=delivered(index)
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(f"{remaining} payload(s) undelivered; {len(errors)} failed: {errors[:3]}")
    return where


def worker_children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (Linux /proc): a worker's children must stay the same ones, since
    the worker restarts a child that dies and a restart is a crash that happened."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def caught_up(settings: Settings, plan: Plan) -> bool:
    """Both worker processes have committed past everything published: the analytics runner's group on md.bars.1m
    (its dead letters commit in the same transaction as its offsets) and the projection sink's group on every topic
    (it commits only after its dead letters are acknowledged and its rows are written)."""
    bootstrap = settings.kafka.bootstrap
    if consumer_lag(bootstrap, settings.app_id, [settings.topic(INPUT_TOPIC)]):
        return False
    topics = [settings.topic(topic) for topic in plan.topics()]
    return consumer_lag(bootstrap, f"{settings.app_id}-projections", topics) == 0


@dataclass
class Report:
    """What the checks found, per class: published, expected letters, letters found, and what went wrong."""

    published: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    letters: Counter[str] = field(default_factory=Counter)
    by_processor: Counter[tuple[str, str]] = field(default_factory=Counter)
    example: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    good_in_postgres: int = 0
    rows_in_postgres: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)
        elif len(self.problems) == 50:
            self.problems.append("... (more problems left out)")

    def table(self) -> str:
        """Per class: payloads published, dead letters expected (one per reader) and found, from the analytics
        runner and from the projection sink."""
        head = f"{'class':<32} {'published':>10} {'expected':>10} {'found':>10} {'runner':>10} {'sink':>10}"
        lines = [head, "-" * len(head)]

        def row(name: str, published: int, expected: int, found: int, runner: int) -> str:
            return f"{name:<32} {published:>10,} {expected:>10,} {found:>10,} {runner:>10,} {found - runner:>10,}"

        kinds = sorted(kind for kind in self.published if kind != GOOD)
        for kind in kinds:
            runner = self.by_processor[(kind, HOST)]
            lines.append(row(kind, self.published[kind], self.expected[kind], self.letters[kind], runner))
        lines.append("-" * len(head))
        runner = sum(n for (_, processor), n in self.by_processor.items() if processor == HOST)
        bad = sum(self.published[kind] for kind in kinds)
        lines.append(row("all bad payloads", bad, sum(self.expected.values()), sum(self.letters.values()), runner))
        lines.append(
            f"{GOOD + 's':<32} {self.published[GOOD]:>10,}   in PostgreSQL: {self.good_in_postgres:,} of them,"
            f" {self.rows_in_postgres:,} rows in all"
        )
        return "\n".join(lines)

    def reasons(self) -> str:
        return "\n".join(f"  {kind:<32} {self.example[kind]}" for kind in sorted(self.example))


def check(settings: Settings, plan: Plan, where: Sequence[tuple[int, int]]) -> Report:
    """Everything the module docstring promises, against what the topics and the database hold now."""
    report = Report()
    report.published.update(p.kind for p in plan.payloads)
    at: dict[tuple[str, int, int], int] = {}
    for index, (payload, (partition, offset)) in enumerate(zip(plan.payloads, where, strict=True)):
        at[(settings.topic(payload.topic), partition, offset)] = index
        if payload.kind != GOOD:
            report.expected[payload.kind] += 1 + (payload.topic == INPUT_TOPIC)
    seen: dict[int, list[str]] = defaultdict(list)
    sink_name: dict[str, set[str]] = defaultdict(set)
    registry = get_registry()
    reader = range_reader(settings.kafka.bootstrap, f"{settings.app_id}-fuzz-check")
    try:
        for message in read_range(reader, settings.topic("dlq"), timeout=300):
            letter = registry.decode_as(DEAD_LETTER_SCHEMA, message.value())
            index = at.get((letter["source_topic"], letter["partition"], letter["offset"]))
            where_ = f"{letter['source_topic']}[{letter['partition']}]@{letter['offset']}"
            if index is None:
                report.problem(f"a dead letter for {where_}, which the fuzz did not publish: {letter['reason']}")
                continue
            payload = plan.payloads[index]
            if payload.kind == GOOD:
                report.problem(f"good bar {where_} dead-lettered by {letter['processor']}: {letter['reason']}")
                continue
            processor = letter["processor"]
            seen[index].append(processor)
            report.letters[payload.kind] += 1
            report.by_processor[(payload.kind, processor)] += 1
            report.example.setdefault(payload.kind, letter["reason"])
            if processor != HOST:
                sink_name[payload.topic].add(processor)
            if not letter["reason"].strip():
                report.problem(f"{payload.kind} {where_}: dead letter without a reason")
            if letter["original_value"] != (payload.value or b""):
                report.problem(f"{payload.kind} {where_}: the dead letter's bytes differ from what was published")
    finally:
        reader.close()
    for topic, names in sink_name.items():
        if len(names) != 1:
            report.problem(f"{topic}: dead letters from several sink processors {sorted(names)}")
    for index, payload in enumerate(plan.payloads):
        if payload.kind == GOOD:
            continue
        processors = Counter(seen.get(index, []))
        runner = processors.pop(HOST, 0)
        sink = sum(processors.values())
        wanted_runner = int(payload.topic == INPUT_TOPIC)
        if runner != wanted_runner or sink != 1:
            report.problem(
                f"{payload.kind} in {payload.topic} at {where[index]}: {runner} runner and {sink} sink dead letter(s),"
                f" expected {wanted_runner} and 1"
            )
    rows = asyncio.run(_bars(settings.postgres_dsn))
    report.rows_in_postgres = len(rows)
    for coordinates, values in plan.good_bars.items():
        stored = rows.get(coordinates)
        if stored is None:
            report.problem(f"good bar {coordinates} is not in PostgreSQL")
        elif stored != values:
            report.problem(f"good bar {coordinates} is stored as {stored}, published as {values}")
        else:
            report.good_in_postgres += 1
    for coordinates in rows.keys() - plan.good_bars.keys():
        report.problem(f"bar {coordinates} in PostgreSQL is not a good bar of the plan")
    return report


async def _bars(dsn: str) -> dict[tuple[str, str, int], tuple[float, float]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT symbol, interval, (extract(epoch FROM start_ts) * 1000000)::bigint AS us, close, volume FROM bars"
        )
    finally:
        await conn.close()
    return {(r["symbol"], r["interval"], r["us"] * 1000): (r["close"], r["volume"]) for r in rows}


# ------------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--bad", type=int, default=100_000, help="bad payloads (default 100,000)")
    parser.add_argument("--good", type=int, default=20_000, help="good bars (default 20,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800, help="longest wait for the worker to catch up (s)")
    parser.add_argument("--keep", action="store_true", help="keep the topics and database after a passing run")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tag = uuid.uuid4().hex[:8]
    base = get_settings()
    database = f"fuzz_{tag}"
    settings = base.model_copy(
        update={
            "topic_prefix": f"fuzz{tag}.",
            "app_id": f"fuzz-{tag}",
            "postgres_dsn": fresh_database(base, database),
            "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{DEFAULT_REDIS_DB}",
        }
    )
    create_topics(settings)
    plan = make_plan(args.bad, args.good, args.seed)
    planned = time.perf_counter()
    print(
        f"fuzz: {plan.count() - plan.count(GOOD):,} bad payloads in {len(CLASSES)} classes and"
        f" {plan.count(GOOD):,} good bars (seed {args.seed}) into {', '.join(plan.topics())}"
        f" under prefix {settings.topic_prefix}"
    )
    where = publish(settings, plan)
    published = time.perf_counter()
    log_path = REPO / ".tidemark" / f"fuzz-worker-{tag}.log"
    with open(log_path, "wb") as log:
        worker = spawn_worker(settings, log)
        try:
            children = _wait_for_children(worker)
            deadline = time.monotonic() + args.timeout
            while not caught_up(settings, plan):
                if worker.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    print(f"fuzz: the worker did not catch up within {args.timeout:.0f}s", file=sys.stderr)
                    break
                time.sleep(1.0)
            caught = time.perf_counter()
            report = check(settings, plan, where)
            if worker.poll() is not None:
                report.problem(f"the worker exited with {worker.returncode}")
            elif worker_children(worker.pid) != children:
                report.problem(f"the worker's processes changed from {children} to {worker_children(worker.pid)}")
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    checked = time.perf_counter()
    restarts = log_path.read_text(errors="replace").count(" exited ")
    if restarts:
        report.problem(f"the worker log reports {restarts} child exit(s): see {log_path}")
    print(report.table())
    print("a reason per class (the first dead letter's):")
    print(report.reasons())
    print(
        f"elapsed {checked - started:.1f}s: plan {planned - started:.1f}s, publish {published - planned:.1f}s, worker"
        f" catch-up {caught - published:.1f}s, checks {checked - caught:.1f}s; worker log {log_path}"
    )
    if not report.ok:
        print("FAILED:\n  " + "\n  ".join(report.problems), file=sys.stderr)
        print(f"kept topics {settings.topic_prefix}* and database {database} for a look", file=sys.stderr)
        return 1
    print("passed: no worker process exited, one dead letter per bad payload and reader, every good bar stored once")
    if not args.keep:
        delete_prefixed_topics(settings, groups=[settings.app_id, f"{settings.app_id}-projections"])
        drop_database(base, database)
    return 0


def _wait_for_children(worker: subprocess.Popen[bytes], timeout: float = 60.0) -> set[int]:
    """The worker's two processes once both are started."""
    deadline = time.monotonic() + timeout
    while len(children := worker_children(worker.pid)) < 2:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start its processes (exit code {worker.poll()})")
        time.sleep(0.1)
    return children


if __name__ == "__main__":
    sys.exit(main())
