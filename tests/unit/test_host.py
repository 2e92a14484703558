"""The analytics host: one frame to every processor in order, state kept by name, bad state set aside."""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import Settings
from schemas.bars import BarBatch
from streams.host import ProcessorHost, bar_frame
from streams.processors import BarFrame, Emitted


class Counter:
    """Counts the bars it has seen; emits one event per batch carrying the running total."""

    def __init__(self, name: str, seen: int = 0) -> None:
        self.name = name
        self.seen = seen
        self.frames: list[BarFrame] = []

    def process(self, bars: BarFrame) -> list[Emitted]:
        self.frames.append(bars)
        self.seen += len(bars)
        return [Emitted("alerts", self.name.encode(), "schema", {"seen": self.seen})]

    def to_bytes(self) -> bytes:
        return str(self.seen).encode()


class CounterFactory:
    def __init__(self, name: str) -> None:
        self.name = name
        self.made: list[Counter] = []

    def create(self, settings: Settings) -> Counter:
        self.made.append(Counter(self.name))
        return self.made[-1]

    def restore(self, data: bytes, settings: Settings) -> Counter:
        if not data.isdigit():
            raise ValueError("not a counter state")
        self.made.append(Counter(self.name, int(data)))
        return self.made[-1]


def frame(n: int) -> BarFrame:
    return BarFrame(np.zeros(n, np.int32), np.array(["S"] * n, dtype=object), np.arange(n, dtype=np.int64), np.ones(n))


SETTINGS = Settings()


def test_every_processor_gets_the_same_frame_in_registry_order() -> None:
    factories = [CounterFactory("a"), CounterFactory("b")]
    host = ProcessorHost(factories, SETTINGS, lambda name: None)
    bars = frame(3)
    emitted = host.process(bars) + host.process(frame(2))
    assert [(e.key, e.event["seen"]) for e in emitted] == [(b"a", 3), (b"b", 3), (b"a", 5), (b"b", 5)]
    assert factories[0].made[0].frames[0] is bars and factories[1].made[0].frames[0] is bars
    assert host.states() == {"a": b"5", "b": b"5"}


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param({"a": b"40"}, {"a": b"41", "b": b"1"}, id="restored-by-name"),
        pytest.param({"a": b"junk", "b": b"7"}, {"a": b"1", "b": b"8"}, id="unusable-state-starts-over"),
        pytest.param({"a": b""}, {"a": b"1", "b": b"1"}, id="empty-state-is-fresh"),
    ],
)
def test_state_is_restored_by_name_or_started_over(stored: dict[str, bytes], expected: dict[str, bytes]) -> None:
    host = ProcessorHost([CounterFactory("a"), CounterFactory("b")], SETTINGS, stored.get)
    host.process(frame(1))
    assert host.states() == expected


def test_forget_reloads_from_the_stored_state() -> None:
    stored = {"a": b"10"}
    host = ProcessorHost([CounterFactory("a")], SETTINGS, stored.get)
    host.process(frame(5))
    host.forget()
    assert host.states() == {}
    host.process(frame(1))
    assert host.states() == {"a": b"11"}, "the in-memory 15 was dropped for the stored 10"


def test_processor_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        ProcessorHost([CounterFactory("a"), CounterFactory("a")], SETTINGS, lambda name: None)


def test_bar_frame_takes_each_bar_s_partition_from_its_record() -> None:
    partitions = np.array([3, 1, 2], np.int32)  # of records 0, 1, 2
    n = 2
    bars = BarBatch(
        symbol=np.array(["X", "Y"], dtype=object),
        asset_class=np.array([1, 2], np.int8),
        interval="1m",
        start_ns=np.array([10, 20], np.int64),
        end_ns=np.array([70, 80], np.int64),
        open=np.ones(n),
        high=np.ones(n),
        low=np.ones(n),
        close=np.array([1.5, 2.5]),
        volume=np.ones(n),
        vwap=np.ones(n),
        trade_count=np.ones(n, np.int64),
        regular_session=np.ones(n, bool),
    )
    got = bar_frame(partitions, bars, [0, 2])  # record 1 failed to decode
    assert got.partition.tolist() == [3, 2]
    assert got.symbol.tolist() == ["X", "Y"] and got.close.tolist() == [1.5, 2.5]
    assert got.asset_class is not None and got.asset_class.tolist() == [1, 2]
