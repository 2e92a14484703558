"""Every Kafka topic of Tidemark: what its key is, how it is partitioned and retained, what it carries.

Partition counts follow one rule: topics read together by a stateful processor must be co-partitioned.
Symbol- and strategy-keyed topics use ``KEYED_PARTITIONS`` (8 unless ``TIDEMARK_TOPIC_PARTITIONS`` says
otherwise; it is also Faust's default ``topic_partitions``, which will size the changelogs of the domain agents
that read them). Account-keyed topics share ``ACCOUNT_PARTITIONS`` so the rebalancer and
risk can join them. Topics with only a handful of keys (universes, the DLQ, alerts) get one partition, which
keeps them totally ordered. Topics without a value schema are internal (state, not events) and outside the
event contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

KEYED_PARTITIONS = 8
ACCOUNT_PARTITIONS = 3
# discovery.tasks: a range of partitions per asset class, sized by how many tasks each usually has.
TASK_PARTITIONS = {"EQUITY": 12, "FX": 6, "FUTURE": 6}
DAY_MS = 24 * 60 * 60 * 1000
INFINITE = -1
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's default


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    value_schemas: tuple[str, ...]
    doc: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    extra_config: tuple[tuple[str, str], ...] = ()


_MD = "tidemark.marketdata."
_BROKER = "tidemark.broker."
_ANALYTICS = "tidemark.analytics."
_STRATEGIES = "tidemark.strategies."
SYMBOL = "symbol (UTF-8)"
ACCOUNT = "account_id (UTF-8)"
STRATEGY = "strategy_id (UTF-8)"

CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        "md.bars.1s",
        SYMBOL,
        KEYED_PARTITIONS,
        7 * DAY_MS,
        "delete",
        (_MD + "BarClosed",),
        "Per-second bars; short retention, 1m bars are the durable history.",
    ),
    TopicSpec(
        "md.bars.1m",
        SYMBOL,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_MD + "BarClosed",),
        "Per-minute bars: the market history discovery and replay read.",
    ),
    TopicSpec(
        "md.bars.1d",
        SYMBOL,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_MD + "BarClosed",),
        "Daily bars from historical backfills: long history at one bar per session.",
    ),
    TopicSpec(
        "md.trades",
        SYMBOL,
        KEYED_PARTITIONS,
        3 * DAY_MS,
        "delete",
        (_MD + "TradePrinted",),
        "Trade prints; the highest volume, so the shortest retention.",
    ),
    TopicSpec(
        "md.corporate_actions",
        SYMBOL,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_MD + "CorporateActionAnnounced",),
        "Splits and dividends; kept forever because history adjustment needs all of them.",
    ),
    TopicSpec(
        "broker.order_updates",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        (_BROKER + "OrderUpdated",),
        "Every order state change at the broker: the audit trail of fills.",
    ),
    TopicSpec(
        "broker.positions",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        (_BROKER + "PositionReported", _BROKER + "PositionCorrected"),
        "Position snapshots as the broker reports them, and the audited corrections reconciliation makes.",
    ),
    TopicSpec(
        "broker.account",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        (_BROKER + "AccountReported",),
        "Cash, buying power and equity snapshots.",
    ),
    TopicSpec(
        "analytics.stats",
        SYMBOL,
        KEYED_PARTITIONS,
        30 * DAY_MS,
        "delete",
        (_ANALYTICS + "SymbolStatsComputed",),
        "Rolling per-symbol statistics; derived, so rebuildable from bars.",
    ),
    TopicSpec(
        "analytics.correlations",
        "universe name (UTF-8)",
        1,
        INFINITE,
        "delete",
        (_ANALYTICS + "CorrelationSnapshotTaken",),
        "Rolling correlation matrices, at least every 15 minutes of market time.",
        max_message_bytes=8 * 1024 * 1024,
    ),
    TopicSpec(
        "analytics.currency_strength",
        "basket name (UTF-8)",
        1,
        INFINITE,
        "delete",
        (_ANALYTICS + "CurrencyStrengthComputed",),
        "Currency-strength indices from FX pairs.",
    ),
    TopicSpec(
        "analytics.sector_rotation",
        "universe name (UTF-8)",
        1,
        INFINITE,
        "delete",
        (_ANALYTICS + "SectorRotationComputed",),
        "Sector ETF relative strength and momentum.",
    ),
    TopicSpec(
        "signals.patterns",
        "the pattern's symbols joined by ',' (UTF-8)",
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.signals.PatternSignalDetected",),
        "Statistically significant patterns after multiple-testing correction.",
    ),
    TopicSpec(
        "discovery.tasks",
        "asset class (UTF-8); the partition is chosen in the asset class's range (task_partition)",
        sum(TASK_PARTITIONS.values()),
        INFINITE,
        "delete",
        ("tidemark.discovery.DiscoverStrategy",),
        "Discovery tasks for the worker group; each asset class has its own partitions, so a worker specialises by"
        " the partitions it is assigned.",
    ),
    TopicSpec(
        "discovery.progress",
        "task id (UTF-8)",
        KEYED_PARTITIONS,
        30 * DAY_MS,
        "delete",
        ("tidemark.discovery.DiscoveryProgressed",),
        "Discovery tasks started, progressing, finished or failed (with the reason).",
    ),
    TopicSpec(
        "strategies.candidates",
        STRATEGY,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_STRATEGIES + "StrategyCandidateDiscovered",),
        "Strategies that passed discovery.",
    ),
    TopicSpec(
        "strategies.commands",
        STRATEGY,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_STRATEGIES + "TransitionStrategy",),
        "Lifecycle commands; co-partitioned with strategies.lifecycle for the state machine's table.",
    ),
    TopicSpec(
        "strategies.lifecycle",
        STRATEGY,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_STRATEGIES + "StrategyTransitioned", _STRATEGIES + "TransitionRejected"),
        "Accepted and rejected transitions: the lifecycle's event log.",
    ),
    TopicSpec(
        "strategies.performance",
        STRATEGY,
        KEYED_PARTITIONS,
        INFINITE,
        "delete",
        (_STRATEGIES + "StrategyPerformanceRecorded",),
        "Realised paper and live performance per period.",
    ),
    TopicSpec(
        "portfolio.targets",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.portfolio.PortfolioTargetsSet",),
        "Target strategy weights per account.",
    ),
    TopicSpec(
        "orders.intents",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.orders.PlaceOrder", "tidemark.orders.OrderRejected"),
        "Orders to send (client_order_id makes them idempotent at the broker), and those refused before sending.",
    ),
    TopicSpec(
        "orders.rebalances",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.orders.RebalanceProposed", "tidemark.orders.ApproveRebalance"),
        "Rebalance proposals (the orders that reach the portfolio targets) and their approvals.",
    ),
    TopicSpec(
        "positions",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.orders.PositionChanged",),
        "Positions per strategy and symbol after every fill or correction: the position tracker's output.",
    ),
    TopicSpec(
        "risk.metrics",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        ("tidemark.risk.RiskMeasured",),
        "VaR, CVaR, drawdown and limit state per account.",
    ),
    TopicSpec(
        "risk.controls",
        ACCOUNT,
        ACCOUNT_PARTITIONS,
        INFINITE,
        "delete",
        (
            "tidemark.risk.HaltTrading",
            "tidemark.risk.ResumeTrading",
            "tidemark.risk.TradingHalted",
            "tidemark.risk.TradingResumed",
        ),
        "The kill switch: halt and resume commands (by a person or by a breach) and the execution desk's answers.",
    ),
    TopicSpec(
        "alerts",
        "the alert's subject (UTF-8)",
        1,
        INFINITE,
        "delete",
        ("tidemark.risk.AlertRaised",),
        "Alerts for people, in one total order.",
    ),
    TopicSpec(
        "dlq",
        "source topic name (UTF-8)",
        1,
        INFINITE,
        "delete",
        ("tidemark.ops.MessageDeadLettered",),
        "Messages that could not be decoded or validated, with their original bytes.",
        max_message_bytes=2 * DEFAULT_MAX_MESSAGE_BYTES + 65536,
    ),
    TopicSpec(
        "analytics.checkpoints",
        "app id/processor name (UTF-8)",
        1,
        INFINITE,
        "compact",
        (),
        "Internal, not an event: the analytics runner's processor states (raw bytes), committed in the same"
        " transaction as its outputs and input offsets. Compacted to the last state per processor; small segments"
        " so that the cleaner keeps up with a checkpoint every second.",
        max_message_bytes=64 * 1024 * 1024,
        extra_config=(("segment.bytes", str(64 * 1024 * 1024)), ("min.cleanable.dirty.ratio", "0.1")),
    ),
)

_BY_NAME = {spec.name: spec for spec in CATALOGUE}


def topic_spec(name: str) -> TopicSpec:
    """The spec of an unprefixed topic name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no topic {name!r} in the catalogue") from None


def task_partition(asset_class: str, task_id: str) -> int:
    """The discovery.tasks partition of a task: the asset class picks the range, the task id spreads within it."""
    span = task_partitions(asset_class)
    return span.start + int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % len(span)


def task_partitions(asset_class: str) -> range:
    """The discovery.tasks partitions of one asset class."""
    first = 0
    for name, count in TASK_PARTITIONS.items():
        if name == asset_class:
            return range(first, first + count)
        first += count
    raise ValueError(f"no discovery partitions for asset class {asset_class!r} (known: {', '.join(TASK_PARTITIONS)})")


def kafka_config(spec: TopicSpec) -> dict[str, str]:
    """Topic-level Kafka configuration for creating the topic."""
    return {
        "retention.ms": str(spec.retention_ms),
        "retention.bytes": "-1",
        "cleanup.policy": spec.cleanup_policy,
        "max.message.bytes": str(spec.max_message_bytes),
        # Producers stamp ts_event-based times; the broker keeps them so time-based replay works.
        "message.timestamp.type": "CreateTime",
        # Keep whatever compression the producer chose instead of recompressing on the broker.
        "compression.type": "producer",
        **dict(spec.extra_config),
    }
