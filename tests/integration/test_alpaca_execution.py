"""Execution against Alpaca's wire protocol: the fake Alpaca server (``fakes.alpaca``) runs in the test process and
``tidemark broker run`` talks to it through alpaca-py as it would to Alpaca, with the real Kafka, PostgreSQL and
Redis behind. A connector killed with kill -9 mid-rebalance places each order once; a trade-update stream that
drops, repeats and reorders counts each fill once; a position changed outside is found, alerted and booked to
"unattributed"; a wrong key or a live endpoint without --live stops the connector before it starts."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from fakes.alpaca import FakeAlpaca
from tests.integration.test_execution import (
    AGENTS,
    BROKER,
    PRICES,
    bars,
    events,
    expected_quantities,
    kill_when_paused,
    performance,
    proposal,
    targets,
)
from tests.services import eventually

pytestmark = pytest.mark.integration

KEY = "tm-fake-key-5d1c0a"
SECRET = "tm-fake-secret-8e42b7f19a"
TRADED = ("AAA", "BBB")  # EURUSD is FX: the rebalancer keeps it on the simulated book for Alpaca
CHANGED_SCHEMA = "tidemark.orders.PositionChanged"


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(KEY, SECRET) as server:
        for symbol in TRADED:
            server.add_asset(symbol)
            server.set_price(symbol, PRICES[symbol])
        yield server


def on_fake(isolated: Settings, fake: FakeAlpaca, **changes: Any) -> Settings:
    """The test's settings with the account at the fake Alpaca (reconciling every 2 s)."""
    return isolated.changed(
        alpaca__key_id=KEY,
        alpaca__secret_key=SECRET,
        alpaca__rest_url=fake.rest_url,
        alpaca__stream_url=fake.stream_url,
        broker__reconcile_every_s=2,
        **changes,
    )


def brokers(fake: FakeAlpaca) -> dict[str, Decimal]:
    return {p["symbol"]: Decimal(p["qty"]) for p in fake.positions()}


def tracked(run_cli: Callable[..., Any], settings: Settings) -> dict[tuple[str, str], Decimal]:
    """The tracker's non-zero positions per (strategy, symbol), as `tidemark positions --json` shows them."""
    rows = json.loads(run_cli("positions", "--json", settings=settings).stdout)[0]["positions"]
    found = {(r["strategy_id"], r["symbol"]): Decimal(str(r["qty"])) for r in rows}
    return {k: q for k, q in found.items() if q != 0}


def per_symbol(positions: dict[tuple[str, str], Decimal]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for (_, symbol), qty in positions.items():
        totals[symbol] += qty
    return {s: q for s, q in totals.items() if q != 0}


def differences(run_cli: Callable[..., Any], settings: Settings) -> int:
    result = run_cli("reconcile", "--json", settings=settings, check=False)
    found = json.loads(result.stdout)[0]
    assert found["broker"] == "alpaca"
    return int(found["differences"])


def propose(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    settings: Settings,
    connector: Settings | None = None,
) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Sink (worker-0), agents (worker-1) and connector (worker-2) on the fake; targets -> a projected proposal of
    two buys (EURUSD refused: FX). Returns the proposal and the connector's process."""
    run_cli("topics", "create", settings=settings)
    bars(isolated, 0)
    performance(isolated)
    start_worker(settings)
    start_worker(settings, AGENTS)
    process = start_worker(connector or settings, BROKER)
    wanted = targets(isolated)
    proposed = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=180, interval=1, what="a proposal")
    expected = expected_quantities()
    assert proposed["broker"] == "alpaca"
    assert {o["symbol"]: (o["side"], Decimal(o["qty"])) for o in proposed["orders"]} == {
        "AAA": ("BUY", expected[("S1", "AAA")]),
        "BBB": ("BUY", expected[("S1", "BBB")] + expected[("S2", "BBB")]),
    }
    assert [r["symbol"] for r in proposed["refused"]] == ["EURUSD"]
    eventually(
        lambda: json.loads(run_cli("rebalance", "propose", "--json", check=False, settings=settings).stdout or "[]"),
        timeout=60,
        what="the proposal projected",
    )
    return proposed, process


def approve(run_cli: Callable[..., Any], settings: Settings, proposed: dict[str, Any]) -> None:
    approved = run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "0", settings=settings)
    assert f"approved {proposed['rebalance_id']}: 2 orders" in approved.stdout
    # Alpaca is paced: the command says up front what the rate limit alone will take.
    rate = settings.broker.rate_limit_per_min
    floor = (
        f"allows {rate} requests/min (TIDEMARK_BROKER_RATE_LIMIT_PER_MIN): 2 orders take at least {120 / rate:.1f} s"
    )
    assert floor in " ".join(approved.stdout.split())


def settled(run_cli: Callable[..., Any], settings: Settings, fake: FakeAlpaca) -> dict[tuple[str, str], Decimal]:
    """Waits until the tracker's positions, summed per symbol, equal the fake broker's; returns them per strategy."""
    return eventually(
        lambda: (p := tracked(run_cli, settings)) and per_symbol(p) == brokers(fake) and p,
        timeout=60,
        interval=0.5,
        what="the tracker's positions equal to the broker's",
    )


def unique(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One of each event id (at least once: a redelivered input may publish its outputs again, unchanged)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        assert found.setdefault(record["event_id"], record) == record
    return list(found.values())


def expected_positions() -> dict[tuple[str, str], Decimal]:
    return {k: q for k, q in expected_quantities().items() if k[1] in TRADED}


def test_a_connector_killed_mid_rebalance_places_each_order_once_at_alpaca(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    fake: FakeAlpaca,
    tmp_path: Path,
) -> None:
    """The connector stops after placing its first order (its answer published, the command's offset not committed)
    and is killed; its successor meets the first command again, finds the order at Alpaca by its client_order_id,
    and places the second."""
    settings = on_fake(isolated, fake)
    proposed, drill = propose(isolated, run_cli, start_worker, settings, settings.changed(broker__pause_after_orders=1))
    approve(run_cli, settings, proposed)
    kill_when_paused(drill, tmp_path / "worker-2.log", "paused after 1 orders")
    assert len(fake.orders()) == 1
    start_worker(settings, BROKER)  # worker-3
    planned = {o["client_order_id"]: o for o in proposed["orders"]}
    eventually(lambda: len(fake.orders()) == 2, timeout=60, what="the second order placed")
    per_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in fake.orders():
        per_client[order["client_order_id"]].append(order)
    assert set(per_client) == set(planned)  # every planned order placed...
    assert all(len(orders) == 1 for orders in per_client.values())  # ...once
    for client_order_id, [order] in per_client.items():
        assert (order["symbol"], order["side"], Decimal(order["qty"])) == (
            planned[client_order_id]["symbol"],
            planned[client_order_id]["side"].lower(),
            Decimal(planned[client_order_id]["qty"]),
        )
    assert "was placed before" in (tmp_path / "worker-3.log").read_text()  # the repeat was met and looked up
    assert sum(r.path == "/v2/orders" and r.method == "POST" for r in fake.requests) == 3  # the repeat refused

    assert fake.fill() == 2
    positions = settled(run_cli, settings, fake)
    assert positions == expected_positions()
    assert brokers(fake) == {"AAA": Decimal(300), "BBB": Decimal(680)}
    assert eventually(lambda: differences(run_cli, settings) == 0, timeout=30, what="no differences") is True
    refusals = unique(
        r
        for s, r in events(isolated, "orders.intents")
        if s == "tidemark.orders.OrderRejected" and r["symbol"] == "EURUSD"
    )
    assert len(refusals) == 1
    assert refusals[0]["refused_by"] == "rebalancer" and refusals[0]["strategy_ids"] == ["S2"]
    assert "does not trade FX" in refusals[0]["reason"] and "simulated book" in refusals[0]["reason"]
    fills = [r for s, r in events(isolated, "broker.order_updates") if r["update_event"] == "FILL"]
    # A fill may be published from the stream and from a look both (with different ids): the same state.
    assert {(r["client_order_id"], r["symbol"], Decimal(r["filled_qty"])) for r in fills} == {
        (c, o["symbol"], Decimal(o["qty"])) for c, o in planned.items()
    }
    assert {r["source"] for r in fills} == {"alpaca-broker"}


def test_a_stream_that_drops_repeats_and_reorders_updates_counts_each_fill_once(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    fake: FakeAlpaca,
) -> None:
    """AAA fills in three steps whose updates arrive newest first, each twice; BBB's fill update never arrives
    (the connector's next look finds it). Each OrderUpdated carries the cumulative state, so the tracker ends equal
    to the broker with each fill counted once."""
    settings = on_fake(isolated, fake)
    proposed, _ = propose(isolated, run_cli, start_worker, settings)
    approve(run_cli, settings, proposed)
    eventually(
        lambda: sum(u["event"] == "new" for u in fake.sent_updates()) == 2, timeout=60, what="two orders at Alpaca"
    )
    eventually(lambda: fake.listeners() == 1, timeout=30, what="the connector listening to trade updates")
    fake.hold_updates()
    assert fake.fill("AAA", fraction=0.5) == 1  # 150
    assert fake.fill("AAA", fraction=0.5) == 1  # 75 more
    assert fake.fill("AAA") == 1  # the last 75
    assert fake.release_updates(order="reversed", repeat=True) == 3
    fake.drop_next_updates(1)
    assert fake.fill("BBB") == 1
    sent = [(u["order"]["symbol"], u["event"], u["order"]["filled_qty"]) for u in fake.sent_updates()]
    assert [s for s in sent if s[1] != "new"] == [
        ("AAA", "fill", "300"),
        ("AAA", "partial_fill", "225"),
        ("AAA", "partial_fill", "150"),
    ] * 2  # BBB's fill was never sent

    def stale_after_final() -> bool:
        """The connector published the stream's stale partial fill after the order's final state."""
        published = [
            (r["symbol"], r["update_event"], r["filled_qty"]) for s, r in events(isolated, "broker.order_updates")
        ]
        return ("AAA", "FILL", "300") in published and ("AAA", "PARTIAL_FILL", "150") in published[
            published.index(("AAA", "FILL", "300")) :
        ]

    eventually(stale_after_final, timeout=30, what="the reversed updates published")
    positions = settled(run_cli, settings, fake)
    assert positions == expected_positions()
    assert brokers(fake) == {"AAA": Decimal(300), "BBB": Decimal(680)}
    # Each fill's PositionChanged is published again (same id, same content) when its update arrives again, as at
    # least once allows; counted once per event id, the changes add up to what the broker holds.
    changes: dict[str, Decimal] = defaultdict(Decimal)
    for record in unique(r for s, r in events(isolated, "positions") if s == CHANGED_SCHEMA):
        changes[record["symbol"]] += Decimal(record["qty_change"])
    assert dict(changes) == brokers(fake)  # no fill counted twice
    fills = {
        (r["symbol"], r["filled_qty"])
        for s, r in events(isolated, "broker.order_updates")
        if r["update_event"] in ("FILL", "PARTIAL_FILL")
    }
    assert ("BBB", "680") in fills  # published from the connector's look, not the stream
    assert eventually(lambda: differences(run_cli, settings) == 0, timeout=30, what="no differences") is True


def test_a_position_changed_outside_is_alerted_and_booked_to_unattributed(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    fake: FakeAlpaca,
) -> None:
    settings = on_fake(isolated, fake)
    proposed, _ = propose(isolated, run_cli, start_worker, settings)
    approve(run_cli, settings, proposed)
    eventually(lambda: len(fake.orders()) == 2, timeout=60, what="two orders at Alpaca")
    assert fake.fill() == 2
    assert settled(run_cli, settings, fake) == expected_positions()

    fake.set_position("AAA", 301, 100)  # one share from outside (a transfer in)
    alert = eventually(
        lambda: next(
            (r for s, r in events(isolated, "alerts") if r["kind"] == "reconciliation.mismatch"),
            None,
        ),
        timeout=60,
        interval=0.5,
        what="a reconciliation alert",
    )
    details = alert["details"]
    assert (details["symbol"], Decimal(details["tracker"]), Decimal(details["broker"])) == ("AAA", 300, 301)
    assert "AAA: the broker holds 301, the tracker 300" in alert["message"]
    assert (alert["from_value"], alert["to_value"]) == (300.0, 301.0)
    [corrected] = unique(r for s, r in events(isolated, "broker.positions") if s == "tidemark.broker.PositionCorrected")
    assert len(unique(r for s, r in events(isolated, "alerts") if r["kind"] == "reconciliation.mismatch")) == 1
    assert corrected["symbol"] == "AAA"
    assert [Decimal(corrected[n]) for n in ("ours", "brokers", "qty_change")] == [300, 301, 1]
    positions = settled(run_cli, settings, fake)
    assert positions == {**expected_positions(), ("unattributed", "AAA"): Decimal(1)}
    assert eventually(lambda: differences(run_cli, settings) == 0, timeout=30, what="no differences") is True

    # The next targets (the same weights) trade nothing: the unattributed share is the account holder's.
    again = targets(isolated, n=2)
    second = eventually(lambda: proposal(isolated, again["event_id"]), timeout=60, interval=1, what="a proposal")
    assert second["orders"] == []
    assert [r["symbol"] for r in second["refused"]] == ["EURUSD"]


def test_a_wrong_key_or_a_live_endpoint_without_live_stops_the_connector_before_it_starts(
    isolated: Settings, run_cli: Callable[..., Any], fake: FakeAlpaca
) -> None:
    wrong_secret = "tm-wrong-secret-3f9e6c21"
    wrong = on_fake(isolated, fake).changed(alpaca__key_id="tm-wrong-key-77aa", alpaca__secret_key=wrong_secret)
    refused = run_cli(*BROKER, check=False, settings=wrong, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "TIDEMARK_ALPACA_KEY_ID" in refused.stderr
    output = refused.stdout + refused.stderr
    assert wrong_secret not in output and "tm-wrong-key-77aa" not in output
    assert [(r.path, r.status) for r in fake.requests] == [("/v2/account", 401)]

    live = run_cli(*BROKER, check=False, settings=on_fake(isolated, fake, alpaca__paper=False), timeout=60)
    assert live.returncode == 2, live.stderr
    assert "--live" in live.stderr and "nothing was started" in live.stderr
    assert SECRET not in live.stdout + live.stderr
    assert len(fake.requests) == 1  # the live endpoint was never asked
