"""`tidemark risk` without services: return histories read from CSV files (a close or a return column) and from the
S&P 500 that arch ships; backtests printed per method and level as the backtest module computes them; every bad
source a one-line error with exit code 2; the tables' figures (amounts, percentages, breaches in red); and the plot's
daily changes against the VaR forecast the day before."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from core.settings import RiskSettings
from streams.risk.backtest import backtest
from tidemark.cli import app
from tidemark.risk_cli import (
    csv_returns,
    daily_changes,
    estimate_rows,
    limit_rows,
    risk_plot,
    sp500_returns,
    strategy_rows,
    summary_rows,
)

RETURNS = np.random.default_rng(11).standard_t(4, 400) * 0.01
RISK = RiskSettings(limit_method="HISTORICAL", limit_level=0.99)


def _closes_csv(path: Path, returns: np.ndarray) -> Path:
    closes = 100.0 * np.cumprod(np.concatenate([[1.0], 1.0 + returns]))
    path.write_text("date,Close\n" + "".join(f"d{i},{c!r}\n" for i, c in enumerate(closes.tolist())))
    return path


def test_a_close_column_gives_the_simple_returns_between_closes(tmp_path: Path) -> None:
    returns, described = csv_returns(_closes_csv(tmp_path / "prices.csv", RETURNS))
    np.testing.assert_allclose(returns, RETURNS, rtol=1e-9, atol=1e-15)
    assert described.endswith("(close column)")


def test_a_return_column_is_taken_as_it_is_without_its_blank_cells(tmp_path: Path) -> None:
    path = tmp_path / "returns.csv"
    path.write_text(" Return ,close\n,100\n0.01,101\n-0.02,99\n")
    returns, described = csv_returns(path)
    assert returns.tolist() == [0.01, -0.02]  # the return column wins over the close column
    assert described.endswith("(return column)")


def test_the_sp500_source_is_twenty_years_of_daily_adjusted_closes() -> None:
    returns, _ = sp500_returns()
    assert returns.size == 5030
    assert returns[0] == pytest.approx(1244.780029 / 1228.099976 - 1.0, rel=1e-8)


def test_a_backtest_prints_each_chosen_method_and_level_as_the_backtest_computes_it(tmp_path: Path) -> None:
    path = tmp_path / "returns.csv"
    path.write_text("return\n" + "".join(f"{r!r}\n" for r in RETURNS.tolist()))
    methods = ["--method", "historical", "--method", "PARAMETRIC"]
    result = CliRunner().invoke(
        app, ["risk", "backtest", "--source", str(path), *methods, "--level", "0.99", "--window", "100", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["method"], r["level"]) for r in rows] == [("HISTORICAL", 0.99), ("PARAMETRIC", 0.99)]
    for row in rows:
        expected = backtest(RETURNS, row["method"], 0.99, 100)
        assert row["observations"] == len(RETURNS) - 100 == expected.observations
        assert (row["exceptions"], row["kupiec_p"], row["verdict"]) == (
            expected.exceptions,
            expected.kupiec_p,
            expected.verdict,
        )
        assert row["source"] == f"{path} (return column)" and row["window"] == 100


def test_the_backtest_table_names_the_source_and_colours_nothing_it_should_not(tmp_path: Path) -> None:
    path = _closes_csv(tmp_path / "prices.csv", RETURNS)
    result = CliRunner().invoke(app, ["risk", "backtest", "--source", str(path), "--level", "0.95", "--window", "50"])
    assert result.exit_code == 0, result.output
    assert f"{path} (close column): 400 daily returns" in result.stdout
    for method in ("HISTORICAL", "PARAMETRIC", "CORNISH_FISHER", "MONTE_CARLO"):
        assert method in result.stdout
    assert "[red]" not in result.stdout and "[green]" not in result.stdout  # markup rendered, not printed


@pytest.mark.parametrize(
    ("content", "arguments", "message"),
    [
        (None, ["--source", "nowhere.csv"], "unknown source 'nowhere.csv': expected sp500, portfolio, strategy:<id>"),
        ("date,open\n1,2\n", [], "has no return or close column (its columns: date, open)"),
        ("close\n100\nabc\n", [], "line 3: 'abc' in the close column is not a number"),
        ("close\n100\n0\n", [], "a close is zero or negative"),
        ("return\n0.01\n0.02\n", ["--window", "2"], "2 daily returns, and a 2-day window needs more than 2"),
        ("return\n0.01\n", ["--method", "garch"], "unknown VaR method GARCH"),
        ("return\n0.01\n", ["--level", "1.5"], "a confidence level must lie between 0.5 and 1"),
        (None, ["--source", "strategy:"], "strategy: needs a strategy id"),
    ],
)
def test_a_source_that_cannot_be_backtested_is_a_clear_error_with_exit_code_2(
    tmp_path: Path, content: str | None, arguments: list[str], message: str
) -> None:
    source = ["--source", str(tmp_path / "history.csv")]
    if content is not None:
        (tmp_path / "history.csv").write_text(content)
    result = CliRunner().invoke(app, ["risk", "backtest", *source, *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _estimate(method: str, confidence: float, var: float, cvar: float, equity: str) -> dict[str, Any]:
    return {
        "method": method,
        "confidence": confidence,
        "var": var,
        "cvar": cvar,
        "var_amount": str(Decimal(equity) * Decimal(repr(var))),
    }


def _measurement() -> dict[str, Any]:
    equity = "100000"
    return {
        "equity": Decimal(equity),
        "peak_equity": Decimal("110000"),
        "gross_exposure": Decimal("150000"),
        "net_exposure": Decimal("-25000"),
        "leverage": 1.5,
        "drawdown": 0.0909,
        "max_drawdown": 0.12,
        "covariance_var_95": 0.021,
        "covariance_var_99": 0.03,
        "kupiec_p_value": None,
        "kill_switch": True,
        "halt_reason": "var_99 4.10% over its limit 4.00%",
        "missing_history": ["NEWCO"],
        "estimates": [
            _estimate("HISTORICAL", 0.95, 0.025, 0.035, equity),
            _estimate("HISTORICAL", 0.99, 0.041, 0.052, equity),
            _estimate("PARAMETRIC", 0.99, 0.038, 0.043, equity),
        ],
        "strategies": [
            {
                "strategy_id": "momentum-[x]",
                "gross_exposure": "90000",
                "net_exposure": "90000",
                "estimates": [_estimate("HISTORICAL", 0.99, 0.031, 0.04, equity)],
                "component_var_95": 0.014,
                "component_var_99": 0.02,
                "component_cvar_99": 0.025,
                "drawdown": None,
            }
        ],
        "limits": [
            {"name": "var_99", "value": 0.041, "limit": 0.04, "breached": True},
            {"name": "gross_leverage", "value": 1.5, "limit": 2.0, "breached": False},
        ],
    }


def test_the_estimates_show_fractions_and_amounts_and_mark_the_one_limits_are_checked_with() -> None:
    rows = estimate_rows(_measurement(), RISK)
    assert rows[1] == {
        "method": "HISTORICAL",
        "confidence": "99%",
        "VaR": "4.10%",
        "VaR amount": "4,100.00",
        "CVaR": "5.20%",
        "CVaR amount": "5,200.00",
        "limits": "checked",
    }
    assert [r["limits"] for r in rows] == ["", "checked", ""]


def test_a_breached_limit_is_red_and_leverage_is_a_multiple() -> None:
    breached, within = limit_rows(_measurement())
    assert breached == {"name": "[red]var_99[/red]", "value": "[red]4.10%[/red]", "limit": "[red]4.00%[/red]",
                        "breached": "[red]BREACHED[/red]"}  # fmt: skip
    assert within == {"name": "gross_leverage", "value": "1.50x", "limit": "2.00x", "breached": "ok"}


def test_each_strategy_shows_its_var_by_the_limits_method_and_its_component_var() -> None:
    (row,) = strategy_rows(_measurement(), RISK)
    assert row["strategy"] == "momentum-\\[x]"  # escaped: rich would take [x] for markup
    assert (row["VaR historical 99%"], row["component VaR 99%"], row["drawdown"]) == ("3.10%", "2.00%", "-")


def test_the_summary_says_the_kill_switch_is_on_and_why() -> None:
    figures = {r["figure"]: r["value"] for r in summary_rows(_measurement(), None)}
    assert figures["kill switch"] == "[red]ON[/red]: var_99 4.10% over its limit 4.00%"
    assert figures["net exposure"] == "-25,000.00 (-25.00%)"
    assert figures["Kupiec p (historical 99%)"] == "n/a until enough history"
    assert figures["too little history"] == "NEWCO (in the exposures, not in the VaR)"


def _history() -> list[dict[str, Any]]:
    """Two measurements a day for three days; the third day loses 6% against a 5% VaR forecast the day before."""
    start = datetime(2024, 10, 1, 14, tzinfo=UTC)
    points = [(100_000.0, 0.05), (101_000.0, 0.05), (100_000.0, 0.05), (100_000.0, 0.05), (95_000.0, 0.06),
              (94_000.0, 0.07)]  # fmt: skip
    return [
        {
            "ts": start + timedelta(days=i // 2, hours=2 * (i % 2)),
            "equity": equity,
            "drawdown": 1.0 - equity / 101_000.0,
            "max_drawdown": 0.07,
            "var_95": var / 2,
            "var_99": var,
        }
        for i, (equity, var) in enumerate(points)
    ]


def test_each_day_is_judged_against_the_var_the_day_before_forecast() -> None:
    changes = daily_changes(_history())
    assert [(t.day, round(c, 6), var) for t, c, var in changes] == [(2, -0.009901, 0.05), (3, -0.06, 0.05)]


def test_the_plot_is_written_with_the_days_beyond_the_var(tmp_path: Path) -> None:
    path = tmp_path / "risk.png"
    assert risk_plot(_history(), "paper", RISK, path) == (2, 1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
