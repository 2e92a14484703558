"""Strategy discovery: backtest speed, one candidate's validation time, false discoveries on random walks, recall
of the synthetic market's injected regimes, and a worker's peak memory.

- ``backtest``: one family (momentum, all five parameters free) over a year of regular-session minute bars for 100
  parameter sets: vectorbt ``Portfolio.from_orders`` (the 100 sets as columns of one call) and the search's numpy
  kernel, against a plain-Python bar-by-bar loop that does the same trades (target weights of equity, fees on the
  value traded), checked to agree.
- ``validation``: one candidate's whole validation (walk-forward CV over every variant, DSR, PBO) on a year of
  minute bars, with Optuna's studies in memory and, when the local PostgreSQL answers, in PostgreSQL with the
  worker's batched saves beside Optuna asking PostgreSQL for every trial (the baseline). Target: 30 s.
- ``false``: tasks on pure random walks (five years of daily bars), the four families in turn, at least 100 seeds:
  the share that yields a passing candidate. Must be at most 5%.
- ``recall``: the synthetic market's injected trends and pairs (minute bars, ``--days``), one task per regime with
  the family that trades it: the share that passes, per seed.
- ``recall-daily``: the demo's daily market (a trend with t = 10 over five years, a pair with a five-session
  half-life), seeds 1-10.
- ``throughput``: ``tidemark discover worker`` processes on the local stack (topics and a database of the bench's
  own): 40 daily momentum tasks with one worker, 40 others with two; tasks per hour and the scaling ratio.
- ``memory``: peak RSS of one process running a rotation task over a 1,000-symbol daily universe and minute-bar
  tasks after it. Target: 2 GiB.

``python -m bench.discovery [parts]``.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import optuna

from connectors.synthetic.market import build_universe, generate_bars
from core.costs import DEFAULT_COSTS
from core.sessions import Market, regular_session_mask
from core.units import NS_PER_DAY, NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES
from streams.discovery.backtest import net_returns
from streams.discovery.histories import Table
from streams.discovery.task import Budget, run
from streams.strategies import FAMILIES, Bars

if TYPE_CHECKING:
    from core.settings import Settings

EQUITY_COST = DEFAULT_COSTS["EQUITY"].per_unit


def year_of_minutes(seed: int, legs: int = 1) -> Table:
    """A year of NYSE regular-session minutes (about 98,000 bars) of t(4) random walks."""
    start = np.datetime64("2025-01-02T00:00", "ns").astype(np.int64)
    minutes = start + np.arange(365 * 1440, dtype=np.int64) * NS_PER_MINUTE
    minutes = minutes[regular_session_mask(Market.NYSE, minutes)]
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.standard_t(4, (minutes.size, legs)) * 7e-4, axis=0))
    return Table("1m", minutes, closes, np.full_like(closes, 1e4))


def python_loop(closes: np.ndarray, targets: np.ndarray, fee: float) -> np.ndarray:
    """Bar by bar, as a hand-written backtest runs: hold shares, and where the target weight changes, trade to it
    at the close and pay ``fee`` on the value traded. Returns per-bar returns of equity, one column per set."""
    bars, sets = targets.shape
    out = np.zeros((bars, sets))
    for j in range(sets):
        cash, shares, equity = 1.0, 0.0, 1.0
        previous_target = 0.0
        for t in range(bars):
            price = closes[t]
            value = cash + shares * price
            target = targets[t, j]
            if target != previous_target:
                wanted = target * value / price
                traded = (wanted - shares) * price
                cash -= traded + abs(traded) * fee
                shares = wanted
                previous_target = target
            now = cash + shares * price
            out[t, j] = now / equity - 1.0
            equity = now
    return out


def backtest_speed() -> None:
    table = year_of_minutes(1)
    bars = Bars(table.closes, np.zeros(table.starts.size, dtype=np.bool_), 252.0 * 390)
    rng = np.random.default_rng(2)
    momentum = FAMILIES["momentum"]
    sets = [
        {
            "lookback": float(rng.integers(10, 240)),
            "entry": float(rng.uniform(0, 2)),
            "exit": float(rng.uniform(-1, 0)),
            "vol_cap": float(rng.uniform(1.2, 3)),
            "stop": float(rng.uniform(1, 4)),
        }
        for _ in range(100)
    ]
    started = time.perf_counter()
    targets = np.column_stack([momentum.positions(bars, p)[:, 0] for p in sets])
    signals = time.perf_counter() - started
    closes = np.broadcast_to(table.closes, targets.shape).copy()
    import vectorbt as vbt

    def simulate(rows: slice) -> np.ndarray:
        changed = np.diff(targets[rows], axis=0, prepend=0.0) != 0
        portfolio = vbt.Portfolio.from_orders(
            closes[rows],
            size=np.where(changed, targets[rows], np.nan),
            size_type="targetpercent",
            direction="both",
            fees=EQUITY_COST,
            init_cash=1.0,
            freq="1min",
        )
        return np.asarray(portfolio.returns())

    simulate(slice(0, 500))  # numba compiles on the first call: not part of the timing
    started = time.perf_counter()
    vbt_returns = simulate(slice(None))
    vbt_s = time.perf_counter() - started
    started = time.perf_counter()
    kernel = np.column_stack([net_returns(targets[:, [j]], table.closes, EQUITY_COST)[0] for j in range(100)])
    kernel_s = time.perf_counter() - started
    started = time.perf_counter()
    loop = python_loop(table.closes[:, 0], targets, EQUITY_COST)
    loop_s = time.perf_counter() - started
    worst = float(np.max(np.abs(vbt_returns - loop)))
    agree = min(float(np.corrcoef(kernel[:, j], loop[:, j])[0, 1]) for j in range(100))
    print(f"backtest: momentum, 100 parameter sets x {targets.shape[0]:,} minute bars (positions: {signals:.2f} s)")
    print(f"  vectorbt from_orders (100 columns)  {vbt_s:8.2f} s")
    print(f"  numpy kernel (the search's)         {kernel_s:8.2f} s")
    print(f"  plain-Python bar-by-bar loop        {loop_s:8.2f} s")
    print(f"  ratio loop / vectorbt: {loop_s / vbt_s:.0f}x; loop / numpy kernel: {loop_s / kernel_s:.0f}x")
    print(
        f"  agreement: vectorbt vs loop max |return difference| {worst:.1e}; kernel vs loop correlation >= {agree:.5f}"
    )


def validation_time() -> None:
    table = year_of_minutes(3)
    for name in ("momentum", "reversion"):
        started = time.perf_counter()
        evidence = run(
            f"bench-{name}", FAMILIES[name], table, Market.NYSE, EQUITY_COST, optuna.storages.InMemoryStorage()
        )
        seconds = time.perf_counter() - started
        print(
            f"validation: {name} on {table.starts.size:,} minute bars, {len(evidence.curve)} variants, "
            f"{evidence.trials} trials, Optuna in memory: {seconds:.1f} s (target 30 s)"
        )
    try:
        from core.settings import Settings
        from tidemark.discovery import optuna_url

        url = optuna_url(Settings().postgres_dsn)
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:
        print(f"validation in PostgreSQL skipped: {exc}")
        return
    tag = f"{time.time_ns()}"
    started = time.perf_counter()
    run(f"bench-{tag}", FAMILIES["momentum"], table, Market.NYSE, EQUITY_COST, storage)
    batched = time.perf_counter() - started
    study = optuna.create_study(storage=storage, study_name=f"bench-direct-{tag}", direction="maximize")
    bars = Bars(table.closes, np.zeros(table.starts.size, dtype=np.bool_), 252.0 * 390)
    started = time.perf_counter()
    for _ in range(100):
        trial = study.ask()
        params = {
            "lookback": float(trial.suggest_int("lookback", 5, 240, log=True)),
            "entry": trial.suggest_float("entry", 0, 2.5),
        }
        study.tell(
            trial, float(net_returns(FAMILIES["momentum"].positions(bars, params), table.closes, EQUITY_COST)[0].mean())
        )
    direct = (time.perf_counter() - started) / 100
    print(
        f"validation: momentum, studies in PostgreSQL with batched saves: {batched:.1f} s; Optuna asking PostgreSQL "
        f"for every trial (baseline) takes {direct * 1000:.0f} ms a trial, {direct * 480:.1f} s for the same 480 trials"
    )


def _daily(seed: int, legs: int) -> Table:
    days = (
        np.datetime64("2019-01-07", "ns").astype(np.int64)
        + np.array([d for d in range(1900) if d % 7 < 5][:1260], dtype=np.int64) * NS_PER_DAY
    )
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.standard_t(4, (days.size, legs)) * 0.007, axis=0))
    return Table("1d", days, closes, np.full_like(closes, 1e6))


def false_discoveries(seeds: int = 100) -> None:
    names = ("momentum", "reversion", "pairs", "rotation")
    legs = {"pairs": 2, "rotation": 8}
    passed: dict[str, int] = dict.fromkeys(names, 0)
    tried: dict[str, int] = dict.fromkeys(names, 0)
    started = time.perf_counter()
    for seed in range(seeds):
        name = names[seed % len(names)]
        evidence = run(
            f"null-{seed}", FAMILIES[name], _daily(seed, legs.get(name, 1)), Market.NYSE, EQUITY_COST,
            optuna.storages.InMemoryStorage(),
        )  # fmt: skip
        tried[name] += 1
        passed[name] += evidence.passed
    total = sum(passed.values())
    bound = _upper_99(total, seeds)
    print(
        f"false discoveries: {total} of {seeds} random-walk tasks passed ({total / seeds:.1%}; 99% upper bound "
        f"{bound:.1%}; target 5%) in {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{n} {passed[n]}/{tried[n]}" for n in names)
    )


def _upper_99(hits: int, n: int) -> float:
    from scipy.stats import beta

    return float(beta.ppf(0.99, hits + 1, n - hits)) if hits < n else 1.0


def recall(seeds: list[int], days: int) -> None:
    found = tried = 0
    for seed in seeds:
        start = datetime(2025, 3, 3, tzinfo=UTC)
        universe = build_universe(n_symbols=100, seed=seed, start=start, days=days)
        wanted = {s for r in universe.regimes for s in r.symbols}
        rows: dict[str, list[tuple[int, float]]] = {s: [] for s in wanted}
        classes: dict[str, str] = {}
        for batch in generate_bars(universe, start=start, minutes=days * 1440, seed=seed):
            for i in np.flatnonzero(np.isin(batch.symbol, list(wanted))):
                rows[batch.symbol[i]].append((int(batch.start_ns[i]), float(batch.close[i])))
                classes[batch.symbol[i]] = ASSET_CLASSES[batch.asset_class[i]]
        outcomes = []
        for regime in universe.regimes:
            legs = [np.array(rows[s]) for s in regime.symbols]
            starts = np.unique(np.concatenate([leg[:, 0] for leg in legs])).astype(np.int64)
            closes = np.full((starts.size, len(legs)), np.nan)
            for j, leg in enumerate(legs):
                closes[np.searchsorted(starts, leg[:, 0].astype(np.int64)), j] = leg[:, 1]
            asset_class = classes[regime.symbols[0]]
            market = {"EQUITY": Market.NYSE, "FUTURE": Market.CME, "FX": Market.FX}[asset_class]
            name = "momentum" if regime.kind == "trending" else "pairs"
            table = Table("1m", starts, closes, np.ones_like(closes))
            task = f"recall-{seed}-{'-'.join(regime.symbols)}"
            cost = DEFAULT_COSTS[asset_class].per_unit
            evidence = run(task, FAMILIES[name], table, market, cost, optuna.storages.InMemoryStorage())
            verdict = "passed" if evidence.passed else "rejected: " + "; ".join(evidence.failed)
            outcomes.append(f"{name} {','.join(regime.symbols)} {verdict}")
            found += evidence.passed
            tried += 1
        print(f"recall, seed {seed}, {days} days:")
        for line in outcomes:
            print(f"  {line}")
    print(f"recall: {found} of {tried} injected regimes passed ({found / tried:.0%})")


def recall_daily(seeds: range) -> None:
    """The daily synthetic market of the demo (``connectors.synthetic.daily``): its trends and its pairs, per seed."""
    from connectors.synthetic.daily import daily_market

    found = {"momentum": 0, "pairs": 0}
    tried = {"momentum": 0, "pairs": 0}
    for seed in seeds:
        frame, regimes = daily_market(seed)
        days = frame["date"].to_numpy().astype("datetime64[ns]").astype(np.int64)
        for regime in regimes:
            if regime.kind == "none":
                continue
            name = "momentum" if regime.kind == "trending" else "pairs"
            closes = frame[list(regime.symbols)].to_numpy()
            table = Table("1d", days, closes, np.ones_like(closes))
            evidence = run(
                f"daily-{seed}-{name}",
                FAMILIES[name],
                table,
                Market.NYSE,
                EQUITY_COST,
                optuna.storages.InMemoryStorage(),
            )
            found[name] += evidence.passed
            tried[name] += 1
            if not evidence.passed:
                print(f"  seed {seed}: {name} on {'/'.join(regime.symbols)} missed: {'; '.join(evidence.failed)}")
    print(
        f"recall on the daily synthetic market, seeds {seeds.start}-{seeds.stop - 1}: trends (|t| = 10) "
        f"{found['momentum']}/{tried['momentum']}, cointegrated pairs (half-life 5 sessions) "
        f"{found['pairs']}/{tried['pairs']}"
    )


THROUGHPUT_TASKS = 40


async def _insert_daily(dsn: str, symbols: list[str], seed: int) -> None:
    """Five years of daily closes per symbol straight into the bars table: how bars reach PostgreSQL is not what
    this measures."""
    import asyncpg

    table = _daily(seed, len(symbols))
    conn = await asyncpg.connect(dsn)
    try:
        rows = [
            (symbol, "1d", datetime.fromtimestamp(t / 1e9, UTC), datetime.fromtimestamp((t + NS_PER_DAY) / 1e9, UTC),
             "EQUITY", c, c, c, c, 1e6, True, 0)
            for j, symbol in enumerate(symbols)
            for t, c in zip(table.starts.tolist(), table.closes[:, j].tolist(), strict=True)
        ]  # fmt: skip
        await conn.copy_records_to_table(
            "bars",
            records=rows,
            columns=["symbol", "interval", "start_ts", "end_ts", "asset_class", "open", "high", "low", "close",
                     "volume", "regular_session", "source_offset"],
        )  # fmt: skip
    finally:
        await conn.close()


def _finished_per_worker(settings: Settings, symbols: list[str]) -> list[int]:
    """How the group shared the tasks on ``symbols``: a worker that got more partitions' tasks sets the pace."""
    from collections import Counter

    from core.kafka import range_reader, read_range
    from schemas.codec import get_registry

    registry = get_registry()
    consumer = range_reader(settings.kafka.bootstrap, f"{settings.app_id}-bench-read")
    try:
        events = [registry.decode(m.value()).record for m in read_range(consumer, settings.topic("discovery.progress"))]
    finally:
        consumer.close()
    wanted = set(symbols)
    done = Counter(e["worker"] for e in events if e["stage"] == "FINISHED" and e["symbols"][0] in wanted)
    return sorted(done.values(), reverse=True)


def throughput() -> None:
    """Tasks per hour of `tidemark discover worker` processes on the local stack: 40 daily momentum tasks with one
    worker, 40 others with two."""
    import asyncio
    import subprocess

    from bench.pipeline import drop_database, fresh_database
    from core.settings import Settings
    from tidemark.discovery import TaskPublisher, TaskRequest, queue_depth, task_event
    from tidemark.topics import create_topics, delete_prefixed_topics

    tag = time.time_ns()
    base = Settings()
    database = f"tidemark_bench_discovery_{tag}"
    settings = base.changed(topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}")
    settings = settings.changed(postgres_dsn=fresh_database(base, database))
    create_topics(settings)
    symbols = [f"S{i:03d}" for i in range(2 * THROUGHPUT_TASKS)]
    asyncio.run(_insert_daily(settings.postgres_dsn, symbols, 5))
    rates = {}
    try:
        for workers, chunk in ((1, symbols[:THROUGHPUT_TASKS]), (2, symbols[THROUGHPUT_TASKS:])):
            tasks = [task_event(TaskRequest("momentum", (s,), "EQUITY", "1d"), "bench", tag) for s in chunk]
            TaskPublisher(settings).publish(tasks)
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "tidemark.cli", "discover", "worker", "--loglevel", "warning"],
                    env=settings.environment(),
                )
                for _ in range(workers)
            ]
            while queue_depth(settings) > 0:
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
            rates[workers] = len(tasks) / elapsed * 3600
            print(
                f"throughput: {workers} worker(s), {len(tasks)} daily momentum tasks in {elapsed:.0f} s: "
                f"{rates[workers]:.0f} tasks/hour; tasks per worker {_finished_per_worker(settings, chunk)}"
            )
        print(
            f"throughput: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}x on {os.cpu_count()} cores "
            "(target 200 tasks/hour)"
        )
    finally:
        delete_prefixed_topics(settings, groups=[f"{settings.app_id}-discovery"])
        drop_database(base, database)


def memory() -> None:
    days = _daily(9, 1000)
    run(
        "memory-rotation",
        FAMILIES["rotation"],
        days,
        Market.NYSE,
        EQUITY_COST,
        optuna.storages.InMemoryStorage(),
        budget=Budget(trials_per_parameter=4),
    )
    for seed in range(5):
        run(
            f"memory-{seed}",
            FAMILIES["pairs"],
            year_of_minutes(seed, 2),
            Market.NYSE,
            EQUITY_COST,
            optuna.storages.InMemoryStorage(),
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(
        f"memory: peak RSS {peak:.2f} GiB after a 1,000-symbol rotation task and five pairs tasks on a year of "
        "minutes (target 2 GiB)"
    )


def main(argv: list[str] | None = None) -> None:
    parts = set(argv if argv is not None else sys.argv[1:]) or {
        "backtest",
        "validation",
        "false",
        "recall",
        "recall-daily",
        "memory",
    }
    if "backtest" in parts:
        backtest_speed()
    if "validation" in parts:
        validation_time()
    if "false" in parts:
        false_discoveries()
    if "recall" in parts:
        recall([1, 2, 3], 20)
    if "recall-daily" in parts:
        recall_daily(range(1, 21))
    if "memory" in parts:
        memory()
    if "throughput" in parts:
        throughput()


if __name__ == "__main__":
    main()
