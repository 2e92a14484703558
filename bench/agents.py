"""The analytics worker's sustained bars/s (every registered processor, through Kafka) against a raw consumer.

Reuses the foundation benchmark's pieces (``bench.pipeline``): the same synthetic market published by the connector,
the raw confluent-kafka consumer loop as the baseline, and the worker run whose analytics figure is the transactional
runner (``streams/runner.py``: decode, every processor, Avro-encoded events, checkpoints) committing the whole topic,
with the projection sink running beside it as in production. Target: >= 20,000 bars/s per worker.
"""

from __future__ import annotations

import uuid

from bench.pipeline import connector_run, market, raw_consumer_run, worker_run
from core.settings import get_settings
from tidemark.topics import create_topics, delete_prefixed_topics

TARGET = 20_000


def main(symbols: int = 1000, minutes: int = 240) -> None:
    tag = uuid.uuid4().hex[:8]
    batches = market(symbols, minutes)
    # Every symbol of the market is in the correlation universe: a 1,000 x 1,000 matrix per window and snapshot.
    universe = list(dict.fromkeys(symbol for batch in batches for symbol in batch.symbol.tolist()))
    settings = get_settings().model_copy(update={"topic_prefix": f"bench{tag}.", "universe": universe})
    total = sum(map(len, batches))
    create_topics(settings)
    connector_run(settings, settings.topic("md.bars.1m"), batches)
    raw = raw_consumer_run(settings, settings.topic("md.bars.1m"), total)
    _, analytics = worker_run(settings, total, tag)
    verdict = "meets" if analytics.rate >= TARGET else "MISSES"
    print(f"analytics worker, {symbols} symbols x {minutes} minutes = {total:,} bars, {len(universe)}-symbol universe:")
    print(
        f"  {'analytics runner (all registered processors)':<52} {analytics.rate:>12,.0f} bars/s ({verdict} {TARGET:,})"
    )
    print(f"  {raw.name:<52} {raw.rate:>12,.0f} bars/s")
    print(f"  ratio {analytics.rate / raw.rate:.1%} of the raw consumer")
    delete_prefixed_topics(settings)


if __name__ == "__main__":
    main()
