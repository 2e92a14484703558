"""`tidemark risk` (an account's latest risk figures, their history as a plot, and backtests of the VaR methods),
`tidemark halt` and `tidemark resume` (the kill switch by hand): what the risk agent measured, and the commands the
execution desk answers."""

from __future__ import annotations

import asyncio
import getpass
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
import numpy.typing as npt
import typer
from confluent_kafka import KafkaException
from rich.markup import escape

from core.settings import RiskSettings, get_settings
from tidemark.execution_cli import ACCOUNT_HELP, _money

if TYPE_CHECKING:
    import pandas as pd

    from streams.risk.backtest import Coverage

risk_app = typer.Typer(invoke_without_command=True)  # its help is risk_show's: what `tidemark risk` alone prints

SOURCE_HELP = (
    "sp500 (the S&P 500's daily adjusted closes 1999-2018, shipped with arch), portfolio (the account's daily equity "
    "from its risk measurements), strategy:<id> (its net daily returns as booked), or a CSV file with a return or a "
    "close column"
)
NOTHING_YET = (
    "no risk measurement for account {account} yet: the risk agent (`tidemark agents`) measures the account once it "
    "holds positions (`tidemark broker run`, `tidemark rebalance approve`), and `tidemark worker` records it"
)


class CannotBacktest(ValueError):
    """A backtest that cannot run as asked (no such history, too short, an unknown method): the message says why,
    for a person."""


# -- the latest figures -----------------------------------------------------------------------------------------


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.2%}"


def _level(confidence: float) -> str:
    return f"{confidence:.0%}" if round(confidence, 2) == confidence else f"{confidence:.1%}"


def _is_limit_estimate(estimate: dict[str, Any], risk: RiskSettings) -> bool:
    return estimate["method"] == risk.limit_method and math.isclose(estimate["confidence"], risk.limit_level)


def summary_rows(measurement: dict[str, Any], control: dict[str, Any] | None) -> list[dict[str, str]]:
    """The account's figures, one per row: money in the account currency, fractions of equity as percentages."""
    equity = measurement["equity"]
    kupiec = measurement["kupiec_p_value"]
    switch = (
        f"[red]ON[/red]: {escape(measurement['halt_reason'])}" if measurement["kill_switch"] else "[green]off[/green]"
    )
    rows = [
        ("equity", _money(equity)),
        ("peak equity", _money(measurement["peak_equity"])),
        ("gross exposure", f"{_money(measurement['gross_exposure'])} ({measurement['leverage']:.2f}x equity)"),
        ("net exposure", f"{_money(measurement['net_exposure'])} ({_percent(_fraction(measurement, 'net_exposure'))})"),
        ("leverage", f"{measurement['leverage']:.2f}x"),
        ("drawdown", _percent(measurement["drawdown"])),
        ("max drawdown", _percent(measurement["max_drawdown"])),
        ("covariance VaR 95% / 99%", f"{_percent(measurement['covariance_var_95'])} / "
         f"{_percent(measurement['covariance_var_99'])}"),
        ("Kupiec p (historical 99%)", "n/a until enough history" if kupiec is None else f"{kupiec:.3f}"),
        ("kill switch", switch),
    ]  # fmt: skip
    if control is not None:
        rows.append(
            (
                "last control",
                f"{control['kind']} at {control['ts']:%Y-%m-%d %H:%M:%S} UTC by {escape(control['requested_by'])}: "
                f"{escape(control['reason'])}",
            )
        )
    if measurement["missing_history"]:
        missing = ", ".join(measurement["missing_history"])
        rows.append(("too little history", f"{escape(missing)} (in the exposures, not in the VaR)"))
    return [{"figure": name, "value": value} for name, value in rows]


def _fraction(measurement: dict[str, Any], name: str) -> float | None:
    equity = measurement["equity"]
    return None if not equity else float(measurement[name] / equity)


def _amount(equity: Decimal, fraction: float | None) -> str:
    return "-" if fraction is None else _money(equity * Decimal(repr(fraction)))


def estimate_rows(measurement: dict[str, Any], risk: RiskSettings) -> list[dict[str, str]]:
    """VaR and CVaR per method and confidence, as fractions of equity and as amounts; the estimate the limits are
    checked with is marked."""
    equity = measurement["equity"]
    return [
        {
            "method": e["method"],
            "confidence": _level(e["confidence"]),
            "VaR": _percent(e["var"]),
            "VaR amount": _money(e["var_amount"]),
            "CVaR": _percent(e["cvar"]),
            "CVaR amount": _amount(equity, e["cvar"]),
            "limits": "checked" if _is_limit_estimate(e, risk) else "",
        }
        for e in measurement["estimates"]
    ]


def strategy_rows(measurement: dict[str, Any], risk: RiskSettings) -> list[dict[str, str]]:
    """Each strategy's exposures, its own VaR by the limits' method and confidence, and its share of the account's
    VaR (component VaR: the strategies' sum to the covariance VaR)."""
    own = f"VaR {risk.limit_method.lower()} {_level(risk.limit_level)}"
    rows = []
    for s in measurement["strategies"]:
        var = next((e["var"] for e in s["estimates"] if _is_limit_estimate(e, risk)), None)
        rows.append(
            {
                "strategy": escape(s["strategy_id"]),
                "gross": _money(s["gross_exposure"]),
                "net": _money(s["net_exposure"]),
                own: _percent(var),
                "component VaR 95%": _percent(s["component_var_95"]),
                "component VaR 99%": _percent(s["component_var_99"]),
                "component CVaR 99%": _percent(s["component_cvar_99"]),
                "drawdown": _percent(s["drawdown"]),
            }
        )
    return rows


def limit_rows(measurement: dict[str, Any]) -> list[dict[str, str]]:
    """Every limit checked; a breached one in red. Leverage limits are multiples of equity, the others fractions."""
    rows = []
    for limit in measurement["limits"]:
        shown = (lambda v: f"{v:.2f}x") if "leverage" in limit["name"] else _percent
        cells = {
            "name": escape(limit["name"]),
            "value": shown(limit["value"]),
            "limit": shown(limit["limit"]),
            "breached": "BREACHED" if limit["breached"] else "ok",
        }
        rows.append({k: f"[red]{v}[/red]" for k, v in cells.items()} if limit["breached"] else cells)
    return rows


@risk_app.callback()
def risk_show(
    ctx: typer.Context,
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    as_json: bool = typer.Option(False, "--json"),
    plot: Path | None = typer.Option(
        None, "--plot", help="also draw the drawdown and the VaR band over time to this PNG"
    ),
) -> None:
    """The account's latest risk figures as the risk agent measured them: equity, exposures, leverage, drawdown, the
    kill switch, VaR and CVaR per method and confidence, each strategy's share, and every limit (breaches in red).
    Subcommand: backtest."""
    if ctx.invoked_subcommand is not None:
        return
    from projections.risk import latest_control, latest_measurement
    from tidemark.cli import _emit, _jsonable, _run_db, console

    settings = get_settings()
    account = account or settings.portfolio.account

    async def load(conn: asyncpg.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return await latest_measurement(conn, account), await latest_control(conn, account)

    measurement, control = _run_db(load)
    if as_json:
        shown = {"measurement": measurement, "control": control}
        sys.stdout.write(json.dumps(shown, indent=2, default=_jsonable) + "\n")
    elif measurement is None:
        console.print(NOTHING_YET.format(account=account), highlight=False)
    else:
        console.print(
            f"account {escape(account)} at {measurement['ts']:%Y-%m-%d %H:%M:%S} UTC: {measurement['observations']} "
            f"daily returns, {measurement['horizon_days']}-day horizon",
            highlight=False,
        )
        _emit(summary_rows(measurement, control), "account", False)
        _emit(estimate_rows(measurement, settings.risk), "VaR and CVaR (fractions of equity, and amounts)", False)
        if measurement["strategies"]:
            _emit(strategy_rows(measurement, settings.risk), "strategies", False)
        _emit(limit_rows(measurement), "limits", False)
    if plot is not None:
        if measurement is None:
            raise typer.Exit(1)  # nothing to draw, as said above (or as the JSON's null says)
        _write_plot(account, plot, settings.risk)


# -- the history as a picture -----------------------------------------------------------------------------------


def daily_changes(history: Sequence[dict[str, Any]]) -> list[tuple[datetime, float, float | None]]:
    """Per UTC day after the first: the time of its last measurement, the equity change since the day before's last
    (a fraction of that equity), and the 99% VaR the day before's last measurement forecast for it."""
    last_of_day: dict[date, dict[str, Any]] = {}
    for row in history:
        last_of_day[row["ts"].date()] = row  # oldest first, so the last write of a day is its last measurement
    days = list(last_of_day.values())
    return [
        (today["ts"], today["equity"] / before["equity"] - 1.0, before["var_99"])
        for before, today in pairwise(days)
        if before["equity"]
    ]


def risk_plot(history: Sequence[dict[str, Any]], account: str, risk: RiskSettings, path: Path) -> tuple[int, int]:
    """Top: the VaR band (-VaR 95% to -VaR 99% of the limits' method, as each measurement forecast it) and each day's
    equity change against it, the days beyond the 99% VaR in red; bottom: the drawdown under its limit. Returns the
    daily changes drawn and how many were beyond the 99% VaR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    times = [r["ts"] for r in history]

    def series(name: str) -> npt.NDArray[np.float64]:
        return np.array([np.nan if r[name] is None else -r[name] for r in history], dtype=np.float64)

    var_95, var_99 = series("var_95"), series("var_99")
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 7), dpi=110)
    method = risk.limit_method.lower()
    top.fill_between(times, var_95, var_99, step="post", alpha=0.3, color="tab:orange", label=f"{method} VaR 95-99%")
    top.step(times, var_99, where="post", color="tab:red", linewidth=0.8)
    top.axhline(-risk.max_var, linestyle="--", color="grey", linewidth=0.8, label="VaR limit")
    changes = daily_changes(history)
    beyond = [(t, c) for t, c, var in changes if var is not None and c < -var]
    if changes:
        top.scatter([t for t, _, _ in changes], [c for _, c, _ in changes], s=12, color="black", label="daily change")
    if beyond:
        top.scatter(*zip(*beyond, strict=True), s=30, color="red", label="beyond the 99% VaR")
    top.axhline(0.0, color="grey", linewidth=0.5)
    top.set_ylabel("fraction of equity")
    top.legend(fontsize=8, loc="lower left")
    bottom.fill_between(times, series("drawdown"), 0.0, step="post", alpha=0.4, label="drawdown")
    bottom.step(times, series("max_drawdown"), where="post", linewidth=0.8, label="max drawdown")
    bottom.axhline(-risk.max_drawdown, linestyle="--", color="grey", linewidth=0.8, label="drawdown limit")
    bottom.set_ylabel("from peak equity")
    bottom.legend(fontsize=8, loc="lower left")
    for axes in (top, bottom):
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.set_title(
        f"account {account}: {len(history)} measurements, {len(changes)} daily changes, {len(beyond)} beyond the "
        f"{method} 99% VaR",
        fontsize=10,
    )
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return len(changes), len(beyond)


def _write_plot(account: str, path: Path, risk: RiskSettings) -> None:
    from projections.risk import measurement_history
    from tidemark.cli import _run_db

    history = _run_db(lambda conn: measurement_history(conn, account, risk.limit_method))
    changes, beyond = risk_plot(history, account, risk, path)
    typer.echo(f"wrote {path} ({len(history)} measurements, {changes} daily changes, {beyond} beyond the 99% VaR)")


# -- backtests --------------------------------------------------------------------------------------------------


def simple_returns(closes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    prices = np.asarray(closes, dtype=np.float64)
    return prices[1:] / prices[:-1] - 1.0


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> npt.NDArray[np.float64]:
    """The column's numbers, blank cells left out (a returns file's first row often is one); any other text is an
    error naming its line."""
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        line = int(np.argmax(bad.to_numpy())) + 2  # the header is line 1
        raise CannotBacktest(f"{path}, line {line}: {raw[bad].iloc[0]!r} in the {column} column is not a number")
    numbers: npt.NDArray[np.float64] = values.dropna().to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise CannotBacktest(f"{path}: the {column} column holds an infinite value")
    return numbers


def csv_returns(path: Path) -> tuple[npt.NDArray[np.float64], str]:
    """Simple returns from a CSV file's ``return`` column (as they are) or else its ``close`` column (oldest
    first); column names are matched without case."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CannotBacktest(f"cannot read {path} as CSV: {exc}") from exc
    columns = {str(c).strip().lower(): str(c) for c in frame.columns}
    if "return" in columns:
        return _numbers(frame, columns["return"], path), f"{path} (return column)"
    if "close" not in columns:
        raise CannotBacktest(
            f"{path} has no return or close column (its columns: {', '.join(map(str, frame.columns))})"
        )
    closes = _numbers(frame, columns["close"], path)
    if (closes <= 0).any():
        raise CannotBacktest(f"{path}: a close is zero or negative; returns need positive prices")
    return simple_returns(closes), f"{path} (close column)"


def sp500_returns() -> tuple[npt.NDArray[np.float64], str]:
    from arch.data import sp500

    return simple_returns(sp500.load()["Adj Close"].to_numpy()), "the S&P 500's daily adjusted closes 1999-2018"


def load_returns(source: str, account: str) -> tuple[npt.NDArray[np.float64], str]:
    """The daily returns ``source`` names (see ``SOURCE_HELP``), oldest first, and what they are in words."""
    from projections.risk import daily_equity, strategy_daily_returns
    from tidemark.cli import _run_db

    if source == "sp500":
        return sp500_returns()
    if source == "portfolio":
        equity = _run_db(lambda conn: daily_equity(conn, account))
        if equity and min(value for _, value in equity) <= 0:
            raise CannotBacktest(f"account {account}'s equity in risk_measurements was zero or negative on some day")
        return simple_returns([value for _, value in equity]), f"account {account}'s daily equity (risk_measurements)"
    if source.startswith("strategy:"):
        strategy_id = source.removeprefix("strategy:").strip()
        if not strategy_id:
            raise CannotBacktest("strategy: needs a strategy id, e.g. strategy:<id> (`tidemark query strategies`)")
        days = _run_db(lambda conn: strategy_daily_returns(conn, strategy_id))
        if not days:
            raise CannotBacktest(
                f"strategy {strategy_id!r} has no booked returns in strategy_performance: only Paper and Live "
                f"strategies are booked, by `tidemark strategy run` (`tidemark lifecycle history {strategy_id}` shows "
                "its state)"
            )
        compounded = np.array([np.prod(1.0 + np.asarray(day)) - 1.0 for _, day in days])
        return compounded, f"strategy {strategy_id}'s net daily returns (strategy_performance)"
    path = Path(source)
    if not path.is_file():
        raise CannotBacktest(
            f"unknown source {source!r}: expected sp500, portfolio, strategy:<id> or a CSV file (no file {source})"
        )
    return csv_returns(path)


def _choices(
    methods: Sequence[str] | None, levels: Sequence[float] | None
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    from streams.risk.backtest import METHODS
    from streams.risk.measures import LEVELS

    chosen = tuple(dict.fromkeys(m.upper() for m in methods)) if methods else METHODS
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise CannotBacktest(f"unknown VaR method {', '.join(unknown)}: expected {', '.join(METHODS)}")
    confidences = tuple(dict.fromkeys(levels)) if levels else LEVELS
    if not all(0.5 < level < 1.0 for level in confidences):
        raise CannotBacktest(f"a confidence level must lie between 0.5 and 1, not {', '.join(map(str, confidences))}")
    return chosen, confidences


def coverage_rows(coverages: Sequence[Coverage]) -> list[dict[str, Any]]:
    """One row per method and level; a rejected model's verdict in red, with every reason."""
    return [
        {
            "method": c.method,
            "level": _level(c.level),
            "observations": c.observations,
            "exceptions": c.exceptions,
            "expected": f"{c.expected:.1f}",
            "Kupiec p": f"{c.kupiec_p:.3f}",
            "Christoffersen p": f"{c.christoffersen_p:.3f}",
            "conditional p": f"{c.conditional_p:.3f}",
            "verdict": "[green]accepted[/green]" if c.verdict == "accepted" else f"[red]{c.verdict}[/red]",
        }
        for c in coverages
    ]


@risk_app.command("backtest")
def risk_backtest(
    methods: list[str] | None = typer.Option(None, "--method", help="a VaR method, repeatable (default: all)"),
    levels: list[float] | None = typer.Option(None, "--level", help="a confidence, repeatable (default: 0.95, 0.99)"),
    window: int = typer.Option(250, min=2, help="trailing daily returns behind each day's forecast"),
    source: str = typer.Option("sp500", help=SOURCE_HELP),
    account: str | None = typer.Option(None, help=f"with --source portfolio: {ACCOUNT_HELP}"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Backtest the VaR methods on a daily return history: each day's VaR from the window before it, the days
    whose loss beat it counted and tested for their frequency (Kupiec) and independence (Christoffersen).
    Exits 2 when the history cannot be had or is too short."""
    from streams.risk.backtest import SIGNIFICANCE, backtest_all
    from tidemark.cli import _emit, console

    account = account or get_settings().portfolio.account
    try:
        chosen, confidences = _choices(methods, levels)
        returns, described = load_returns(source, account)
        if returns.size <= window:
            raise CannotBacktest(
                f"{described}: {returns.size} daily returns, and a {window}-day window needs more than {window} "
                "(lower --window, or choose a longer --source)"
            )
    except CannotBacktest as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    coverages = backtest_all(returns, chosen, confidences, window)
    if as_json:
        _emit([{"source": described, "window": window, **asdict(c)} for c in coverages], "backtest", True)
        return
    console.print(
        f"{escape(described)}: {returns.size} daily returns, each day's VaR from the {window} before it; "
        f"tests at {SIGNIFICANCE:.0%} significance",
        highlight=False,
    )
    _emit(coverage_rows(coverages), "VaR backtests", False)


# -- the kill switch by hand ------------------------------------------------------------------------------------


async def _answer(conn: asyncpg.Connection, command_id: str, wait: float) -> dict[str, Any] | None:
    """The desk's answer to the command once the sink has projected it, looking twice a second for ``wait`` s."""
    from projections.risk import control_answering

    deadline = time.monotonic() + wait
    while True:
        found = await control_answering(conn, command_id)
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.5)


def _command(schema: str, fields: dict[str, Any], wait: float, answer: str) -> dict[str, Any] | None:
    """Publish a halt or resume command for ``fields['account_id']``, keyed by the account; wait for the answer.
    Exits 1 when none came in time."""
    from core.events import common_fields, now_ns
    from core.kafka import ReliableProducer, producer_config
    from schemas.codec import get_registry
    from tidemark.cli import _run_db

    settings = get_settings()
    command = {
        **common_fields("tidemark-cli", now_ns()),
        **fields,
        "requested_by": f"{getpass.getuser()}@cli",
    }
    name = schema.rpartition(".")[2]
    producer = ReliableProducer(producer_config(settings.kafka.bootstrap), f"publishing {name}")
    producer.produce(settings.topic("risk.controls"), get_registry().encode(schema, command), command["account_id"])
    try:
        producer.flush(30)
    except KafkaException as exc:
        hint = "is Kafka up (`tidemark stack up`), and are the topics made (`tidemark topics create`)?"
        typer.echo(f"{exc}: {hint}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"sent {name} {command['event_id']} for {command['account_id']}")
    if not wait:
        return None
    found = _run_db(lambda conn: _answer(conn, command["event_id"], wait))
    if found is None:
        typer.echo(
            f"no {answer} within {wait:g} s: the execution agent (`tidemark agents`) must be running to answer, and "
            "`tidemark worker` to record its answer",
            err=True,
        )
        raise typer.Exit(1)
    return found


def halt_command(
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    flatten: bool = typer.Option(False, "--flatten", help="also close every position the strategies hold"),
    reason: str = typer.Option("halted by hand", help="why, in words the audit keeps"),
    wait: float = typer.Option(30.0, min=0, help="seconds to wait for the execution desk's answer (0: do not wait)"),
) -> None:
    """Turn the kill switch on: a HaltTrading command that the execution desk answers with TradingHalted; from
    then on it sends no new order (approvals are refused) until `tidemark resume`. Exits 1 without an answer."""
    fields = {
        "account_id": account or get_settings().portfolio.account,
        "reason": reason,
        "flatten": flatten,
        "breaches": [],
    }
    found = _command("tidemark.risk.HaltTrading", fields, wait, "TradingHalted")
    if found is None:
        return
    typer.echo(
        f"trading halted for {found['account_id']} at {found['ts']:%Y-%m-%d %H:%M:%S} UTC by {found['requested_by']}: "
        f"{found['reason']}"
    )
    if found["flatten_rebalance_id"]:
        rebalance = found["flatten_rebalance_id"]
        typer.echo(f"closing every position: rebalance {rebalance} (`tidemark orders --rebalance {rebalance}`)")


def resume_command(
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    reason: str = typer.Option("resumed by hand", help="why, in words the audit keeps"),
    wait: float = typer.Option(30.0, min=0, help="seconds to wait for the execution desk's answer (0: do not wait)"),
) -> None:
    """Turn the kill switch off: a ResumeTrading command that the execution desk answers with TradingResumed;
    approvals send orders again. Exits 1 without an answer."""
    fields = {"account_id": account or get_settings().portfolio.account, "reason": reason}
    found = _command("tidemark.risk.ResumeTrading", fields, wait, "TradingResumed")
    if found is not None:
        typer.echo(
            f"trading resumed for {found['account_id']} at {found['ts']:%Y-%m-%d %H:%M:%S} UTC by "
            f"{found['requested_by']}: {found['reason']}"
        )
