"""`tidemark portfolio`: the latest targets of an account, and the efficient frontier of its live strategies."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer

from core.settings import get_settings

portfolio_app = typer.Typer(help="The portfolio: the latest targets, the efficient frontier.", no_args_is_help=True)


def correlation_summary(account: str) -> dict[str, Any] | None:
    """The strategies' latest correlation snapshot as the sink cached it in Redis (None when there is none)."""
    import redis

    from projections.redis_store import key

    settings = get_settings()
    name = key("correlations", f"strategies:{account}", "1d", str(settings.portfolio.lookback_sessions))
    client = redis.Redis.from_url(settings.redis_url)
    try:
        cached = {k.decode(): v.decode() for k, v in client.hgetall(name).items()}
    finally:
        client.close()
    if not cached:
        return None
    ids = json.loads(cached["symbols"])
    upper = np.frombuffer(base64.b64decode(cached["upper_triangle_f32le_base64"]), dtype="<f4")
    rows, cols = np.triu_indices(len(ids), k=1)
    top = int(np.argmax(upper)) if upper.size else None
    return {
        "strategies": ids,
        "as_of_ns": int(cached["as_of_ns"]),
        "average_correlation": float(cached["average_correlation"]),
        "equal_weight_diversification_ratio": float(cached["diversification_ratio"]),
        "most_correlated": None if top is None else [ids[rows[top]], ids[cols[top]], round(float(upper[top]), 4)],
    }


@portfolio_app.command("show")
def portfolio_show(
    account: str | None = typer.Option(None, help="the account (default: TIDEMARK_PORTFOLIO_ACCOUNT)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The latest targets: weights, per-symbol exposures, how they were found and why; and the strategies'
    correlation summary. Exits 1 when the account has no targets yet."""
    from projections.portfolio import latest_targets
    from tidemark.cli import _emit, _jsonable, _run_db, console

    account = account or get_settings().portfolio.account
    targets = _run_db(lambda conn: latest_targets(conn, account))
    correlation = correlation_summary(account)
    if as_json:
        shown = None if targets is None else {k: _jsonable(v) for k, v in targets.items()}
        sys.stdout.write(json.dumps({"targets": shown, "correlation": correlation}, indent=2) + "\n")
    elif targets is not None:
        sharpe = targets["expected_sharpe"]
        se = targets["expected_sharpe_se"]
        console.print(
            f"account {account}: targets {targets['event_id']} at {targets['ts']:%Y-%m-%d %H:%M:%S} UTC\n"
            f"reason: {targets['reason']}\n"
            f"{targets['objective']} by {targets['solver']} ({targets['method']}) over {targets['lookback_sessions']} "
            f"sessions; capital {targets['capital']}, buying power {targets['buying_power'] or 'simulated account'}\n"
            f"expected return {targets['expected_return']:.2%}, volatility {targets['expected_volatility']:.2%}, "
            f"Sharpe {'n/a' if sharpe is None else f'{sharpe:.2f}'}{'' if se is None else f' ± {se:.2f}'}, "
            f"diversification ratio {targets['diversification_ratio']:.2f}"
        )
        _emit(targets["weights"], "strategy weights", False)
        _emit(targets["exposures"], "target exposures per symbol", False)
        if correlation is not None:
            pair = correlation["most_correlated"]
            console.print(
                f"strategy correlations ({len(correlation['strategies'])} strategies): average "
                f"{correlation['average_correlation']:.2f}, equal-weight diversification ratio "
                f"{correlation['equal_weight_diversification_ratio']:.2f}"
                + ("" if pair is None else f", most correlated {pair[0]} / {pair[1]} at {pair[2]:.2f}")
            )
    if targets is None:
        typer.echo(f"no portfolio targets for account {account!r} yet: is `tidemark agents` running?", err=True)
        raise typer.Exit(1)


@portfolio_app.command("frontier")
def portfolio_frontier(
    plot: Path = typer.Option(..., "--plot", help="the PNG to write"),
    account: str | None = typer.Option(None, help="the account (default: TIDEMARK_PORTFOLIO_ACCOUNT)"),
) -> None:
    """The efficient frontier of the LIVE strategies' returns (from the projections), each strategy alone, and the
    portfolio the optimiser chooses, as a PNG. Exits 1 with fewer than 2 strategies."""
    from projections.portfolio import latest_candidates, live_returns
    from streams.portfolio.agent import PERIODS_PER_YEAR, policy_of
    from streams.portfolio.book import Book, apply_candidate, expected_returns
    from streams.portfolio.frontier import frontier
    from streams.portfolio.optimiser import TooFewStrategies, optimise
    from tidemark.cli import _run_db, console
    from tidemark.plots import frontier_plot

    settings = get_settings()
    policy = policy_of(settings)
    account = account or policy.account

    async def load(conn: Any) -> tuple[Any, list[dict[str, Any]]]:
        returns = await live_returns(conn, policy.lookback)
        return returns, await latest_candidates(conn, [str(c) for c in returns.columns])

    returns, candidates = _run_db(load)
    book = Book()
    for candidate in candidates:
        apply_candidate(book, candidate, PERIODS_PER_YEAR)
    if len(returns):
        returns = returns[[c for c in returns.columns if c in book.strategies]].dropna()
    if returns.shape[1] < 2 or len(returns) < 2:
        typer.echo(
            f"{returns.shape[1]} live strateg{'y' if returns.shape[1] == 1 else 'ies'} with a candidate and common "
            "sessions of returns: a frontier needs at least 2",
            err=True,
        )
        raise typer.Exit(1)
    mu = expected_returns(book, returns, PERIODS_PER_YEAR)
    found = frontier(returns, mu, policy.constraints)
    try:
        chosen = optimise(returns, mu, policy.objective, policy.constraints)
        point: tuple[float, float] | None = (chosen.volatility, chosen.expected_return)
        note = f"chosen: {policy.objective.value} by {chosen.method}, {chosen.held} held"
    except TooFewStrategies as exc:
        point, note = None, f"no portfolio: {exc}"
    title = f"account {account}: {returns.shape[1]} live strategies over {len(returns)} sessions\n{note}"
    frontier_plot(found, point, title, plot)
    console.print(f"wrote {plot} ({len(found.points)} frontier points; {note})")
