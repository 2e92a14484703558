"""Execution projections: rebalances and approvals, orders (as commanded and as the broker reports them), refusals,
positions per strategy (PostgreSQL, and Redis for the latest), and the broker's own positions and account; written
with the consumer's offsets in the same transaction. And the reads of `tidemark rebalance`, `orders`, `positions`
and `reconcile`.

An order's row keeps the most advanced state whatever order its updates arrive in: a larger cumulative fill wins,
and at an equal fill the further status (a terminal one over an open one)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from core.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position

EXECUTION = "projection.execution"
CHANGED = "tidemark.orders.PositionChanged"
SCHEMAS = (
    "tidemark.orders.RebalanceProposed",
    "tidemark.orders.ApproveRebalance",
    "tidemark.orders.PlaceOrder",
    "tidemark.orders.OrderRejected",
    "tidemark.broker.OrderUpdated",
    CHANGED,
    "tidemark.broker.PositionReported",
    "tidemark.broker.PositionCorrected",
    "tidemark.broker.AccountReported",
)
TOPICS = (
    "orders.rebalances",
    "orders.intents",
    "broker.order_updates",
    "positions",
    "broker.positions",
    "broker.account",
)
STATUS_RANK = {
    "UNKNOWN": 0, "PENDING_NEW": 1, "NEW": 2, "ACCEPTED": 2, "ACCEPTED_FOR_BIDDING": 2, "PENDING_CANCEL": 3,
    "PENDING_REPLACE": 3, "PARTIALLY_FILLED": 4, "DONE_FOR_DAY": 5, "STOPPED": 5, "SUSPENDED": 5, "CALCULATED": 5,
    "FILLED": 6, "CANCELED": 6, "EXPIRED": 6, "REPLACED": 6, "REJECTED": 6,
}  # fmt: skip
"""How far an order's status is along its life: at an equal cumulative fill, the further one wins."""

_NS = "timestamptz 'epoch' + ({}::bigint / 1000) * interval '1 microsecond'"

_PROPOSED = f"""
INSERT INTO rebalances (rebalance_id, account_id, ts, targets_id, capital, buying_power, broker, orders, refused,
    skipped, auto_approved)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5::numeric, $6::numeric, $7, $8::jsonb, $9::jsonb, $10::jsonb, $11)
ON CONFLICT (rebalance_id) DO NOTHING
"""
_APPROVED = f"""
UPDATE rebalances SET approved_at = {_NS.format("$2")}, approved_by = $3, approval_id = $4
WHERE rebalance_id = $1::uuid AND approved_at IS NULL
"""
_PLACED = f"""
INSERT INTO orders (account_id, client_order_id, symbol, side, qty, notional, strategy_id, rebalance_id, placed_at,
    place_event_id, status, status_rank, updated_at, last_event_id)
VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7, $8, {_NS.format("$9")}, $10, 'PENDING_NEW', 1,
    {_NS.format("$9")}, $10)
ON CONFLICT (account_id, client_order_id) DO UPDATE SET strategy_id = EXCLUDED.strategy_id,
    rebalance_id = EXCLUDED.rebalance_id, placed_at = EXCLUDED.placed_at, place_event_id = EXCLUDED.place_event_id,
    qty = COALESCE(orders.qty, EXCLUDED.qty), notional = COALESCE(orders.notional, EXCLUDED.notional)
"""
_UPDATED = f"""
INSERT INTO orders (account_id, client_order_id, symbol, side, qty, notional, order_id, status, status_rank,
    filled_qty, filled_avg_price, reject_reason, updated_at, last_event_id)
VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7, $8, $9, $10::numeric, $11::numeric, $12, {_NS.format("$13")},
    $14)
ON CONFLICT (account_id, client_order_id) DO UPDATE SET order_id = EXCLUDED.order_id, status = EXCLUDED.status,
    status_rank = EXCLUDED.status_rank, filled_qty = EXCLUDED.filled_qty, filled_avg_price = EXCLUDED.filled_avg_price,
    reject_reason = EXCLUDED.reject_reason, updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id
WHERE (EXCLUDED.filled_qty, EXCLUDED.status_rank) > (orders.filled_qty, orders.status_rank)
"""
_REJECTED = f"""
INSERT INTO order_rejections (event_id, account_id, ts, symbol, client_order_id, rebalance_id, strategy_ids, reason,
    refused_by)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id) DO NOTHING
"""
_CHANGE = f"""
INSERT INTO position_changes (event_id, account_id, ts, strategy_id, symbol, qty, qty_change, price, cash_change,
    cause, client_order_id, causation_id)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5, $6::numeric, $7::numeric, $8::numeric, $9::numeric, $10, $11, $12)
ON CONFLICT (event_id) DO NOTHING
"""
_POSITION = f"""
INSERT INTO strategy_positions (account_id, strategy_id, symbol, qty, avg_price, realized_pnl, updated_at, event_id)
VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6::numeric, {_NS.format("$7")}, $8)
ON CONFLICT (account_id, strategy_id, symbol) DO UPDATE SET qty = EXCLUDED.qty, avg_price = EXCLUDED.avg_price,
    realized_pnl = EXCLUDED.realized_pnl, updated_at = EXCLUDED.updated_at, event_id = EXCLUDED.event_id
"""
_BROKER_POSITION = f"""
INSERT INTO broker_positions (account_id, symbol, qty, avg_entry_price, market_value, current_price, reported_at,
    event_id)
VALUES ($1, $2, $3::numeric, $4::numeric, $5::numeric, $6::numeric, {_NS.format("$7")}, $8)
ON CONFLICT (account_id, symbol) DO UPDATE SET qty = EXCLUDED.qty, avg_entry_price = EXCLUDED.avg_entry_price,
    market_value = EXCLUDED.market_value, current_price = EXCLUDED.current_price, reported_at = EXCLUDED.reported_at,
    event_id = EXCLUDED.event_id
WHERE EXCLUDED.reported_at >= broker_positions.reported_at
"""
_CORRECTED = f"""
INSERT INTO position_corrections (event_id, account_id, ts, symbol, ours, brokers, qty_change, reason)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5::numeric, $6::numeric, $7::numeric, $8)
ON CONFLICT (event_id) DO NOTHING
"""
_ACCOUNT = f"""
INSERT INTO broker_accounts (account_id, currency, cash, buying_power, equity, paper, reported_at, event_id)
VALUES ($1, $2, $3::numeric, $4::numeric, $5::numeric, $6, {_NS.format("$7")}, $8)
ON CONFLICT (account_id) DO UPDATE SET currency = EXCLUDED.currency, cash = EXCLUDED.cash,
    buying_power = EXCLUDED.buying_power, equity = EXCLUDED.equity, paper = EXCLUDED.paper,
    reported_at = EXCLUDED.reported_at, event_id = EXCLUDED.event_id
WHERE EXCLUDED.reported_at >= broker_accounts.reported_at
"""


def _order_key(e: dict[str, Any]) -> str:
    return e["client_order_id"] or f"broker:{e['order_id']}"


_ROWS: dict[str, tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]] = {
    "tidemark.orders.RebalanceProposed": (
        _PROPOSED,
        lambda e: (
            e["rebalance_id"], e["account_id"], e["ts_event"], e["targets_id"], e["capital"], e["buying_power"],
            e["broker"], json.dumps(e["orders"]), json.dumps(e["refused"]), json.dumps(e["skipped"]),
            e["auto_approved"],
        ),
    ),
    "tidemark.orders.ApproveRebalance": (
        _APPROVED,
        lambda e: (e["rebalance_id"], e["ts_event"], e["approved_by"], e["event_id"]),
    ),
    "tidemark.orders.PlaceOrder": (
        _PLACED,
        lambda e: (
            e["account_id"], e["client_order_id"], e["symbol"], e["side"], e["qty"], e["notional"], e["strategy_id"],
            e["causation_id"], e["ts_event"], e["event_id"],
        ),
    ),
    "tidemark.orders.OrderRejected": (
        _REJECTED,
        lambda e: (
            e["event_id"], e["account_id"], e["ts_event"], e["symbol"], e["client_order_id"], e["rebalance_id"],
            list(e["strategy_ids"]), e["reason"], e["refused_by"],
        ),
    ),
    "tidemark.broker.OrderUpdated": (
        _UPDATED,
        lambda e: (
            e["account_id"], _order_key(e), e["symbol"], e["side"], e["qty"], e["notional"], e["order_id"], e["status"],
            STATUS_RANK.get(e["status"], 0), e["filled_qty"], e["filled_avg_price"], e["reject_reason"],
            e["ts_event"], e["event_id"],
        ),
    ),
    "tidemark.broker.PositionReported": (
        _BROKER_POSITION,
        lambda e: (
            e["account_id"], e["symbol"], e["qty"], e["avg_entry_price"], e["market_value"], e["current_price"],
            e["ts_event"], e["event_id"],
        ),
    ),
    "tidemark.broker.PositionCorrected": (
        _CORRECTED,
        lambda e: (
            e["event_id"], e["account_id"], e["ts_event"], e["symbol"], e["ours"], e["brokers"], e["qty_change"],
            e["reason"],
        ),
    ),
    "tidemark.broker.AccountReported": (
        _ACCOUNT,
        lambda e: (
            e["account_id"], e["currency"], e["cash"], e["buying_power"], e["equity"], e["paper"], e["ts_event"],
            e["event_id"],
        ),
    ),
}  # fmt: skip


_ORDER = (
    _PROPOSED,
    _APPROVED,
    _PLACED,
    _UPDATED,
    _REJECTED,
    _CHANGE,
    _POSITION,
    _BROKER_POSITION,
    _CORRECTED,
    _ACCOUNT,
)
"""The statements in the order a batch applies them."""


class ExecutionProjection:
    """Every execution event type, dispatched by schema; position changes also to Redis
    (``tm:position:<account>:<strategy>:<symbol>``)."""

    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]], schemas: Sequence[str]) -> int:
        """``events[i]`` was decoded from ``records[i]`` with schema ``schemas[i]``; returns how many records were
        new."""
        event_of = {id(r): (e, s) for r, e, s in zip(records, events, schemas, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            # One executemany per statement, in an order that keeps each table right: a proposal before its
            # approval; a command's row and its broker updates commute (each sets its own columns, and an update
            # only moves an order forward); a position keeps the latest change of the batch, in topic order.
            rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
            latest: dict[tuple[str, str, str], tuple[Any, ...]] = {}
            for record in fresh:
                event, schema = event_of[id(record)]
                if schema == CHANGED:
                    rows[_CHANGE].append(_change_row(event))
                    latest[(event["account_id"], event["strategy_id"], event["symbol"])] = _position_row(event)
                    continue
                statement, row = _ROWS[schema]
                rows[statement].append(row(event))
            rows[_POSITION] = list(latest.values())
            for statement in _ORDER:
                if rows.get(statement):
                    await conn.executemany(statement, rows[statement])

        fresh = await apply_exactly_once(self._pool, EXECUTION, records, write)
        await self._redis.set_latest(
            [
                LatestValue(
                    key("position", e["account_id"], e["strategy_id"], e["symbol"]),
                    position(r.partition, r.offset),
                    {"qty": e["qty"], "avg_price": e["avg_price"] or "", "event_id": e["event_id"]},
                )
                for r, e, schema in zip(records, events, schemas, strict=True)
                if schema == CHANGED
            ]
        )
        return len(fresh)


def _change_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["event_id"], e["account_id"], e["ts_event"], e["strategy_id"], e["symbol"], e["qty"], e["qty_change"],
        e["price"], e["cash_change"], e["cause"], e["client_order_id"], e["causation_id"],
    )  # fmt: skip


def _position_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["account_id"], e["strategy_id"], e["symbol"], e["qty"], e["avg_price"], e["realized_pnl"], e["ts_event"],
        e["event_id"],
    )  # fmt: skip


# -- reads ------------------------------------------------------------------------------------------------------


async def rebalance(conn: asyncpg.Connection, account: str, rebalance_id: str | None) -> dict[str, Any] | None:
    """A rebalance by id (or a unique prefix), or the account's newest when None."""
    if rebalance_id is None:
        row = await conn.fetchrow("SELECT * FROM rebalances WHERE account_id = $1 ORDER BY ts DESC LIMIT 1", account)
    else:
        rows = await conn.fetch(
            "SELECT * FROM rebalances WHERE rebalance_id::text LIKE $1 || '%' ORDER BY ts DESC LIMIT 2", rebalance_id
        )
        row = rows[0] if len(rows) == 1 else None
    if row is None:
        return None
    found = dict(row)
    for name in ("orders", "refused", "skipped"):
        found[name] = json.loads(found[name])
    found["rebalance_id"] = str(found["rebalance_id"])
    newest = await conn.fetchval(
        "SELECT rebalance_id::text FROM rebalances WHERE account_id = $1 ORDER BY ts DESC LIMIT 1", account
    )
    found["superseded"] = newest != found["rebalance_id"]
    return found


async def orders(
    conn: asyncpg.Connection, account: str, limit: int = 50, rebalance_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT client_order_id, symbol, side, qty::text AS qty, notional::text AS notional, strategy_id, rebalance_id,
               placed_at, order_id, status, filled_qty::text AS filled_qty, filled_avg_price::text AS filled_avg_price,
               reject_reason, updated_at
        FROM orders WHERE account_id = $1 AND ($3::text IS NULL OR rebalance_id = $3)
        ORDER BY updated_at DESC LIMIT $2
        """,
        account,
        limit,
        rebalance_id,
    )
    return [dict(r) for r in rows]


async def rejections(conn: asyncpg.Connection, account: str, rebalance_id: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT ts, symbol, client_order_id, rebalance_id, strategy_ids, reason, refused_by FROM order_rejections
        WHERE account_id = $1 AND ($2::text IS NULL OR rebalance_id = $2) ORDER BY ts DESC
        """,
        account,
        rebalance_id,
    )
    return [dict(r) for r in rows]


async def positions(conn: asyncpg.Connection, account: str) -> list[dict[str, Any]]:
    """Positions per strategy and symbol (non-zero), with the latest known price and the market value."""
    rows = await conn.fetch(
        """
        SELECT p.strategy_id, p.symbol, p.qty, p.avg_price, p.realized_pnl, p.updated_at,
               COALESCE(b.current_price, bar.close::numeric) AS price
        FROM strategy_positions p
        LEFT JOIN broker_positions b ON b.account_id = p.account_id AND b.symbol = p.symbol
        LEFT JOIN LATERAL (SELECT close FROM bars WHERE symbol = p.symbol ORDER BY start_ts DESC LIMIT 1) bar ON true
        WHERE p.account_id = $1 AND p.qty <> 0 ORDER BY p.strategy_id, p.symbol
        """,
        account,
    )
    return [dict(r) for r in rows]


async def tracked_totals(conn: asyncpg.Connection, account: str) -> dict[str, Decimal]:
    """The tracker's quantity per symbol, summed over strategies."""
    rows = await conn.fetch(
        "SELECT symbol, sum(qty) AS qty FROM strategy_positions WHERE account_id = $1 GROUP BY symbol", account
    )
    return {r["symbol"]: r["qty"] for r in rows}


async def account(conn: asyncpg.Connection, account_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM broker_accounts WHERE account_id = $1", account_id)
    return None if row is None else dict(row)
