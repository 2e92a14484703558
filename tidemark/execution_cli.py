"""`tidemark broker run`, `tidemark rebalance propose|approve`, `tidemark orders`, `tidemark positions` and
`tidemark reconcile`: the execution side, from the proposal a person approves to the positions the broker holds."""

from __future__ import annotations

import getpass
import time
from decimal import Decimal
from typing import Any

import typer

from core.settings import Settings, get_settings

broker_app = typer.Typer(help="The broker connector (Alpaca, or the simulated broker).", no_args_is_help=True)
rebalance_app = typer.Typer(help="Rebalances: what the targets ask for, and sending it.", no_args_is_help=True)

ACCOUNT_HELP = "the account (default: TIDEMARK_PORTFOLIO_ACCOUNT)"


@broker_app.command("run")
def broker_run(
    live: bool = typer.Option(False, "--live", help="trade real money; needs TIDEMARK_ALPACA_PAPER=false as well"),
    loglevel: str = typer.Option("info", help="log level"),
) -> None:
    """Send the approved orders (orders.intents) to the broker and publish its order updates, positions and account;
    reconcile every TIDEMARK_BROKER_RECONCILE_EVERY_S. Alpaca when TIDEMARK_ALPACA_KEY_ID is set (paper unless
    TIDEMARK_ALPACA_PAPER=false and --live), else the simulated broker, which fills at the next bar."""
    from connectors.broker import CredentialsRefused
    from connectors.orders import BrokerConnector, LiveTradingRefused, make_broker
    from core.metrics import process_port, serve
    from core.supervision import start_process

    settings = get_settings()
    ops = settings.operations
    watchdog = start_process("broker-connector", loglevel.upper(), ops.stop_within_s)
    try:
        broker = make_broker(settings, live)
        if broker.name == "alpaca":
            broker.account()  # a refused key fails here, before anything is consumed
    except LiveTradingRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    except CredentialsRefused as exc:
        typer.echo(f"the broker refused the key: {exc} (check {exc.variable})", err=True)
        raise typer.Exit(2) from None
    connector = BrokerConnector(settings, broker, watchdog)
    serve(connector.metrics, ops.metrics_host, process_port(ops.metrics_port, 4))
    connector.run()


def _money(value: Any) -> str:
    return "-" if value is None else f"{Decimal(value):,.2f}"


@rebalance_app.command("propose")
def rebalance_propose(
    rebalance_id: str | None = typer.Argument(None, help="a rebalance id or prefix (default: the newest)"),
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The orders the newest portfolio targets ask for (the execution agent proposes one per targets event), what
    will not be traded and why, and whether it was approved."""
    from projections.execution import rebalance
    from tidemark.cli import _emit, _run_db

    account = account or get_settings().portfolio.account
    found = _run_db(lambda conn: rebalance(conn, account, rebalance_id))
    if found is None:
        typer.echo(
            f"no rebalance {'matches ' + repr(rebalance_id) if rebalance_id else 'for ' + account} yet: one is "
            "proposed for each portfolio targets event (`tidemark portfolio show`), by `tidemark agents`"
        )
        raise typer.Exit(1 if rebalance_id else 0)
    if as_json:
        _emit([found], "rebalance", True)
        return
    state = (
        f"approved by {found['approved_by']} at {found['approved_at']:%Y-%m-%d %H:%M:%S}"
        if found["approved_at"]
        else "superseded by a newer proposal"
        if found["superseded"]
        else f"waiting: `tidemark rebalance approve {found['rebalance_id'][:8]}`"
    )
    typer.echo(
        f"rebalance {found['rebalance_id']} for {account} on the {found['broker']} broker: capital "
        f"{_money(found['capital'])}, buying power {_money(found['buying_power'])}; {state}"
    )
    rows = [
        {
            "symbol": o["symbol"],
            "side": o["side"],
            "qty": o["qty"],
            "price": f"{Decimal(o['price']):,.4f}",
            "notional": _money(o["notional"]),
            "strategies": " ".join(f"{a['strategy_id'][:28]} {Decimal(a['qty']):+f}" for a in o["allocations"]),
        }
        for o in found["orders"]
    ]
    _emit(rows, f"{len(rows)} orders (sells first)", False)
    for kind in ("refused", "skipped"):
        for item in found[kind]:
            typer.echo(f"{kind}: {item['reason']}")


@rebalance_app.command("approve")
def rebalance_approve(
    rebalance_id: str = typer.Argument(..., help="the rebalance id, or a unique prefix"),
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    wait: float = typer.Option(120.0, help="seconds to follow the orders until all are done (0: do not wait)"),
) -> None:
    """Send a proposed rebalance's orders: an ApproveRebalance command that the execution agent answers with the
    PlaceOrder commands the broker connector sends. Follows the orders until each is filled or final."""
    from core.events import common_fields, now_ns
    from core.kafka import ReliableProducer, producer_config
    from projections.execution import orders, rebalance
    from schemas.codec import get_registry
    from tidemark.cli import _run_db

    settings = get_settings()
    account = account or settings.portfolio.account
    found = _run_db(lambda conn: rebalance(conn, account, rebalance_id))
    if found is None:
        typer.echo(f"no single rebalance matches {rebalance_id!r}: see `tidemark rebalance propose`", err=True)
        raise typer.Exit(2)
    if found["superseded"]:
        typer.echo(f"rebalance {found['rebalance_id']} was superseded by a newer proposal: approve that one", err=True)
        raise typer.Exit(1)
    if found["approved_at"] is None or _held_back(account, found["rebalance_id"]):
        _warn_if_halted(account)
        command = {
            **common_fields("tidemark-cli", now_ns(), found["rebalance_id"]),
            "account_id": account,
            "rebalance_id": found["rebalance_id"],
            "approved_by": f"{getpass.getuser()}@cli",
        }
        producer = ReliableProducer(producer_config(settings.kafka.bootstrap), "publishing an approval")
        producer.produce(
            settings.topic("orders.rebalances"),
            get_registry().encode("tidemark.orders.ApproveRebalance", command),
            account,
        )
        producer.flush()
        typer.echo(f"approved {found['rebalance_id']}: {len(found['orders'])} orders")
    else:
        typer.echo(f"{found['rebalance_id']} was approved before ({found['approved_by']}): following its orders")
    floor_s = _rate_limit_floor_s(settings, found["broker"], len(found["orders"]))
    if floor_s:
        typer.echo(
            f"the {found['broker']} broker allows {settings.broker.rate_limit_per_min} requests/min "
            f"(TIDEMARK_BROKER_RATE_LIMIT_PER_MIN): {len(found['orders'])} orders take at least {floor_s:.1f} s to "
            "place, a pace the rate limit sets, not Tidemark"
        )
    if not wait or not found["orders"]:
        return
    started = time.monotonic()
    approved_before = found["approved_at"] is not None
    expected = len(found["orders"])
    done: list[dict[str, Any]] = []
    looks = 0
    while time.monotonic() - started < wait:
        rows = _run_db(lambda conn: orders(conn, account, 10_000, found["rebalance_id"]))
        done = [r for r in rows if r["status"] in ("FILLED", "CANCELED", "EXPIRED", "REJECTED")]
        filled = sum(r["status"] == "FILLED" for r in rows)
        typer.echo(
            f"  {time.monotonic() - started:5.1f} s: {len(rows)}/{expected} orders at the broker, {filled} filled, "
            f"{len(done) - filled} otherwise final"
        )
        if len(done) == expected:
            if approved_before and looks == 0:
                when = "already (before this command looked)"
            else:
                when = f"within {time.monotonic() - started:.1f} s{'' if approved_before else ' of the approval'}"
                if floor_s:
                    when += f" (the rate limit's floor: {floor_s:.1f} s)"
            typer.echo(f"all {expected} orders final {when}: see `tidemark positions`")
            return
        looks += 1
        time.sleep(1.0)
    typer.echo(
        f"{expected - len(done)} of {expected} orders not final after {wait:g} s: is `tidemark broker run` running, "
        "and has the next bar arrived (the simulated broker fills at the next bar)? `tidemark orders` shows them"
    )
    raise typer.Exit(1)


def _rate_limit_floor_s(settings: Settings, broker: str, orders: int) -> float:
    """The least time a paced broker takes to accept ``orders`` (one request each), or 0 for one that is not paced:
    said up front, so a slow approval reads as the broker's limit rather than a stuck Tidemark."""
    if broker != "alpaca" or orders <= 1:
        return 0.0
    return orders * 60 / settings.broker.rate_limit_per_min


def _held_back(account: str, rebalance_id: str) -> bool:
    """Approved while the kill switch was on: the desk refused every order and sent none, so it may be approved
    again (after `tidemark resume`)."""
    from projections.execution import orders, rejections
    from tidemark.cli import _run_db

    if _run_db(lambda conn: orders(conn, account, 1, rebalance_id)):
        return False
    refused = _run_db(lambda conn: rejections(conn, account, rebalance_id))
    return any(r["refused_by"] == "kill switch" for r in refused)


def _warn_if_halted(account: str) -> None:
    from projections.risk import latest_control
    from tidemark.cli import _run_db

    control = _run_db(lambda conn: latest_control(conn, account))
    if control is not None and control["kind"] == "halted":
        typer.echo(
            f"trading is halted ({control['reason']}): the execution desk will refuse these orders; "
            "`tidemark resume` first, then approve again",
            err=True,
        )


def orders_command(
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    rebalance_id: str | None = typer.Option(None, "--rebalance", help="only this rebalance's orders"),
    limit: int = typer.Option(50, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Orders, newest first: as commanded, and as the broker reports them (status, cumulative fill, average price);
    and the orders refused before sending, with the reason."""
    from projections.execution import orders, rejections
    from tidemark.cli import _emit, _run_db

    account = account or get_settings().portfolio.account
    rows = _run_db(lambda conn: orders(conn, account, limit, rebalance_id))
    refused = _run_db(lambda conn: rejections(conn, account, rebalance_id))
    if as_json:
        _emit([{"orders": rows, "refused": refused}], "orders", True)
        return
    _emit(
        [
            {
                "client order id": r["client_order_id"],
                "symbol": r["symbol"],
                "side": r["side"],
                "qty": r["qty"] or "-",
                "status": r["status"],
                "filled": r["filled_qty"],
                "avg price": "-" if r["filled_avg_price"] is None else f"{Decimal(r['filled_avg_price']):,.4f}",
                "strategy": (r["strategy_id"] or "several")[:32],
                "updated": f"{r['updated_at']:%Y-%m-%d %H:%M:%S}",
            }
            for r in rows
        ],
        f"orders of {account}",
        False,
    )
    for r in refused:
        typer.echo(f"refused by {r['refused_by']}: {r['reason']}")


def positions_command(
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Positions per strategy and symbol as the tracker attributes the fills, with average cost, realised profit
    and the market value at the latest price; and the account as the broker last reported it."""
    from projections.execution import account as account_of
    from projections.execution import positions
    from tidemark.cli import _emit, _run_db

    account = account or get_settings().portfolio.account
    rows = _run_db(lambda conn: positions(conn, account))
    money = _run_db(lambda conn: account_of(conn, account))
    if as_json:
        _emit([{"positions": rows, "account": money}], "positions", True)
        return
    _emit(
        [
            {
                "strategy": r["strategy_id"][:40],
                "symbol": r["symbol"],
                "qty": f"{r['qty']:f}",
                "avg cost": _money(r["avg_price"]),
                "price": _money(r["price"]),
                "market value": _money(None if r["price"] is None else r["qty"] * r["price"]),
                "realised": _money(r["realized_pnl"]),
            }
            for r in rows
        ],
        f"positions of {account} per strategy",
        False,
    )
    if money is not None:
        typer.echo(
            f"account {account} ({'paper' if money['paper'] else 'LIVE'}): equity {_money(money['equity'])}, cash "
            f"{_money(money['cash'])}, buying power {_money(money['buying_power'])} "
            f"as of {money['reported_at']:%H:%M:%S}"
        )


def reconcile_command(
    account: str | None = typer.Option(None, help=ACCOUNT_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compare the broker's positions now with the tracker's, symbol by symbol, and print the differences. The
    broker connector does this every TIDEMARK_BROKER_RECONCILE_EVERY_S and corrects a difference that persists;
    this shows it on demand. Exits 1 when they differ."""
    from connectors.orders import BrokerState, broker_positions
    from projections.execution import tracked_totals
    from tidemark.cli import _emit, _run_db

    settings = get_settings()
    account = account or settings.portfolio.account
    state: BrokerState = broker_positions(settings.changed(portfolio__account=account))
    ours = _run_db(lambda conn: tracked_totals(conn, account))
    symbols = sorted(set(state.positions) | set(ours))
    rows = [
        {
            "symbol": s,
            "broker": f"{state.positions.get(s, Decimal(0)):f}",
            "tracker": f"{ours.get(s, Decimal(0)):f}",
            "difference": f"{state.positions.get(s, Decimal(0)) - ours.get(s, Decimal(0)):f}",
        }
        for s in symbols
    ]
    differ = [r for r in rows if Decimal(r["difference"]) != 0]
    if as_json:
        _emit([{"broker": state.broker, "rows": rows, "differences": len(differ)}], "reconcile", True)
    else:
        _emit(rows, f"{account} at the {state.broker} broker vs the tracker", False)
        typer.echo(
            f"{len(differ)} difference(s)"
            + (f"; {state.open_orders} order(s) still open may explain them" if differ and state.open_orders else "")
        )
    if differ:
        raise typer.Exit(1)
