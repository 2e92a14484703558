"""The topic catalogue is consistent with the schemas and with DESIGN.md section 1."""

from __future__ import annotations

import pytest

from schemas.catalogue import (
    CATALOGUE,
    KEYED_PARTITIONS,
    TASK_PARTITIONS,
    TopicSpec,
    kafka_config,
    task_partition,
    task_partitions,
    topic_spec,
)
from schemas.codec import get_registry

DESIGN_TOPICS = (
    "md.bars.1s",
    "md.bars.1m",
    "md.bars.1d",
    "md.trades",
    "md.corporate_actions",
    "broker.order_updates",
    "broker.positions",
    "broker.account",
    "analytics.stats",
    "analytics.correlations",
    "analytics.currency_strength",
    "analytics.sector_rotation",
    "signals.patterns",
    "discovery.tasks",
    "discovery.progress",  # issue 12: progress of the worker group's tasks
    "strategies.candidates",
    "strategies.commands",
    "strategies.lifecycle",
    "strategies.performance",
    "portfolio.targets",
    "orders.intents",
    "orders.rebalances",  # issue 14: proposals waiting for approval, and the approvals
    "positions",  # issue 14: the position tracker's per-strategy positions
    "risk.controls",  # issue 15: the kill switch (halt and resume commands and the desk's answers)
    "risk.metrics",
    "alerts",
    "dlq",
)
# State, not events: no value schema, compacted.
INTERNAL_TOPICS = ("analytics.checkpoints",)


def test_covers_exactly_the_design_and_internal_topics() -> None:
    assert sorted(spec.name for spec in CATALOGUE) == sorted(DESIGN_TOPICS + INTERNAL_TOPICS)


@pytest.mark.parametrize("name", INTERNAL_TOPICS)
def test_internal_topics_are_compacted_state_outside_the_event_contract(name: str) -> None:
    spec = topic_spec(name)
    assert spec.value_schemas == ()
    config = kafka_config(spec)
    assert config["cleanup.policy"] == "compact"
    assert int(config["max.message.bytes"]) >= 64 * 1024 * 1024, "processor states are several MB"
    assert int(config["segment.bytes"]) <= 64 * 1024 * 1024, "the cleaner only compacts closed segments"


def test_names_are_unique() -> None:
    assert len({spec.name for spec in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda spec: spec.name)
def test_spec_is_complete(spec: TopicSpec) -> None:
    registry = get_registry()
    assert spec.value_schemas or spec.name in INTERNAL_TOPICS
    for name in spec.value_schemas:
        assert name in registry.names
        assert spec.name in registry.schema(name)["doc"], f"{name}'s doc should name its topic {spec.name}"
    assert spec.key.strip() and spec.doc.strip()
    assert spec.partitions >= 1
    assert spec.retention_ms == -1 or spec.retention_ms > 0
    assert spec.cleanup_policy in ("delete", "compact", "compact,delete")


def test_every_event_schema_has_a_topic() -> None:
    used = {name for spec in CATALOGUE for name in spec.value_schemas}
    assert sorted(set(get_registry().names) - used) == []


@pytest.mark.parametrize(
    ("names", "same_partitions"),
    [
        (("strategies.commands", "strategies.lifecycle"), True),  # the lifecycle state machine joins them
        (("md.bars.1m", "md.bars.1s", "md.corporate_actions", "analytics.stats"), True),
        (
            (
                "orders.intents",
                "broker.order_updates",
                "broker.positions",
                "broker.account",
                "portfolio.targets",
                "risk.metrics",
            ),
            True,
        ),
    ],
)
def test_joined_topics_are_co_partitioned(names: tuple[str, ...], same_partitions: bool) -> None:
    assert (len({topic_spec(name).partitions for name in names}) == 1) is same_partitions


def test_high_volume_market_data_uses_keyed_partitions() -> None:
    assert topic_spec("md.bars.1m").partitions == KEYED_PARTITIONS == 8


@pytest.mark.parametrize(
    ("name", "retention", "max_bytes"),
    [
        ("md.bars.1s", str(7 * 86_400_000), "1048588"),
        ("dlq", "-1", "2162712"),
        ("md.bars.1m", "-1", "1048588"),
    ],
)
def test_kafka_config(name: str, retention: str, max_bytes: str) -> None:
    config = kafka_config(topic_spec(name))
    assert config["retention.ms"] == retention
    assert config["cleanup.policy"] == "delete"
    assert config["max.message.bytes"] == max_bytes
    assert all(isinstance(value, str) for value in config.values())


def test_unknown_topic() -> None:
    with pytest.raises(KeyError, match="nope"):
        topic_spec("nope")


def test_each_asset_class_has_its_own_discovery_partitions_and_tasks_spread_over_them() -> None:
    spans = [set(task_partitions(name)) for name in TASK_PARTITIONS]
    assert set().union(*spans) == set(range(topic_spec("discovery.tasks").partitions))
    assert sum(len(span) for span in spans) == topic_spec("discovery.tasks").partitions
    for name, span in zip(TASK_PARTITIONS, spans, strict=True):
        used = {task_partition(name, f"task-{i}") for i in range(500)}
        assert used == span
    with pytest.raises(ValueError, match="no discovery partitions for asset class 'CRYPTO'"):
        task_partition("CRYPTO", "t")
