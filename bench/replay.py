"""Rebuild benchmark: ``tidemark replay`` beside the live projection sink, on the same million events, in one run.

The sink runs alone (``python -m projections.sink``, no analytics runner beside it) into a fresh database and is
timed from its first projected bar to its last; the rebuild then replays the same topic into a schema of that
database and is timed by itself. Targets: the rebuild at 50% of the sink's rate or better, a million events in
under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import uuid

from bench.pipeline import REPO, Figure, drop_database, fresh_database, market, projection_run
from connectors.publisher import BarPublisher
from core.settings import get_settings
from projections.replay import DEFAULT_REDIS_DB, Rebuild, Target, prepare_target, redis_database, schema_dsn
from tidemark.topics import create_topics, delete_prefixed_topics


def sink_run(dsn: str, settings_env: dict[str, str], expected: int, tag: str) -> Figure:
    log = open(REPO / ".tidemark" / f"bench-replay-sink-{tag}.log", "wb")  # noqa: SIM115
    sink = subprocess.Popen(
        [sys.executable, "-m", "projections.sink"], env=settings_env, stdout=log, stderr=log, cwd=REPO
    )
    try:
        return projection_run(sink, log.name, dsn, expected, "live projection sink (alone)")[0]
    finally:
        sink.terminate()
        sink.wait(timeout=60)
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=2510)
    parser.add_argument("--minutes", type=int, default=1000)
    args = parser.parse_args(argv)
    base = get_settings()
    tag = uuid.uuid4().hex[:8]
    batches = market(args.symbols, args.minutes)
    total = sum(map(len, batches))
    database = f"bench_replay_{tag}"
    dsn = fresh_database(base, database)
    settings = base.model_copy(update={"topic_prefix": f"bench{tag}.", "app_id": f"bench-{tag}", "postgres_dsn": dsn})
    print(
        f"replay: {total:,} bars ({args.symbols} symbols x {args.minutes} minutes); broker {settings.kafka.bootstrap}"
    )
    create_topics(settings)
    try:
        publisher = BarPublisher(settings.kafka.bootstrap, settings.topic("md.bars.1m"), source="synthetic")
        for batch in batches:
            publisher.publish(batch)
        publisher.flush()
        sink = sink_run(dsn, settings.environment(), total, tag)
        target = Target(schema_dsn(dsn, "replay"), "replay", "schema replay")
        asyncio.run(prepare_target(target, dsn, replace=False))
        rebuild = Rebuild(settings, target, redis_database(settings.redis_url, DEFAULT_REDIS_DB))
        outcome = asyncio.run(rebuild.run())
        replayed = Figure("tidemark replay (rebuild into a schema)", outcome.read, outcome.seconds)
        ratio = replayed.rate / sink.rate
        print(f"  {replayed.name:<52} {replayed.rate:>12,.0f} events/s")
        print(f"  {sink.name:<52} {sink.rate:>12,.0f} events/s")
        print(f"  ratio {ratio:.1%} ({'meets' if ratio >= 0.5 else 'MISSES'} the 50% target)")
        per_million = 1_000_000 / replayed.rate
        print(
            f"  {outcome.read:,} events rebuilt in {outcome.seconds:.1f} s: {per_million:.1f} s per million "
            f"({'meets' if per_million < 60 else 'MISSES'} the 60 s target)"
        )
    finally:
        delete_prefixed_topics(settings)
        drop_database(base, database)


if __name__ == "__main__":
    main()
