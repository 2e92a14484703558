"""Splits and dividends from Polygon's reference endpoints as ``CorporateActionAnnounced`` events.

An action's event id is derived from Polygon's action id and the fields that matter for adjustment, so
re-ingesting the same actions publishes nothing new, while an amended action (Polygon corrects amounts and
dates) is published again and replaces its row in the projection, which is keyed by the action id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from polygon import RESTClient

from connectors.polygon.rest import SOURCE, guard
from connectors.polygon.symbols import parse_symbol
from core.events import deterministic_event_id, now_ns
from core.kafka import ReliableProducer, producer_config, range_reader, read_range
from schemas.codec import DecodeError, get_registry

SCHEMA = "tidemark.marketdata.CorporateActionAnnounced"
LIST_LIMIT = 1000


def _decimal(value: Any) -> str | None:
    """A JSON number as an exact decimal string (4.0 -> "4", 0.82 -> "0.82"); None when absent or not a number."""
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return format(number.normalize(), "f")


def _date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _midnight_ns(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000_000


def _event(symbol: str, kind: str, action_type: str, source_id: Any, ex_date: date, **fields: Any) -> dict[str, Any]:
    """The event of one action; ``ts_event`` is when it was declared (or its ex-date when that is unknown)."""
    material = [str(fields.get(name)) for name in ("split_from", "split_to", "cash_amount", "currency")]
    material = [action_type, ex_date.isoformat(), *material]
    action_id = f"{SOURCE}:{kind}:{source_id}" if source_id else f"{SOURCE}:{kind}:{symbol}:{':'.join(material)}"
    event_id = deterministic_event_id(SOURCE, "corporate_action", action_id, *material)
    declared = fields.get("declaration_date")
    return {
        "event_id": event_id,
        "ts_event": _midnight_ns(declared or ex_date),
        "ts_ingest": now_ns(),
        "source": SOURCE,
        "causation_id": "",
        "symbol": symbol,
        "action_id": action_id,
        "action_type": action_type,
        "ex_date": ex_date,
        "split_from": None,
        "split_to": None,
        "cash_amount": None,
        "currency": None,
        "declaration_date": None,
        "record_date": None,
        "pay_date": None,
        "frequency": None,
        "new_symbol": None,
        **fields,
    }


def split_event(symbol: str, split: Any) -> dict[str, Any] | None:
    """A Polygon ``Split`` as an event; None when it lacks an execution date or a usable ratio."""
    ex_date = _date(split.execution_date)
    split_from, split_to = _decimal(split.split_from), _decimal(split.split_to)
    if ex_date is None or split_from is None or split_to is None:
        return None
    reverse = Decimal(split_from) > Decimal(split_to)
    kind = "REVERSE_SPLIT" if reverse else "SPLIT"
    return _event(symbol, "split", kind, split.id, ex_date, split_from=split_from, split_to=split_to)


def dividend_event(symbol: str, dividend: Any) -> dict[str, Any] | None:
    """A Polygon ``Dividend`` (special cash ``SC`` or any regular type) as an event; None without ex-date or amount."""
    ex_date = _date(dividend.ex_dividend_date)
    cash = _decimal(dividend.cash_amount)
    if ex_date is None or cash is None:
        return None
    kind = "SPECIAL_DIVIDEND" if dividend.dividend_type == "SC" else "DIVIDEND"
    frequency = dividend.frequency if isinstance(dividend.frequency, int) else None
    return _event(
        symbol,
        "dividend",
        kind,
        dividend.id,
        ex_date,
        cash_amount=cash,
        currency=dividend.currency or None,
        declaration_date=_date(dividend.declaration_date),
        record_date=_date(dividend.record_date),
        pay_date=_date(dividend.pay_date),
        frequency=frequency,
    )


def fetch_actions(
    client: RESTClient, symbol: str, start: date | None = None, end: date | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Every split and dividend of ``symbol`` (ours) with an ex-date in [start, end]; and how many were unusable."""
    guard(client)
    instrument = parse_symbol(symbol)
    ticker = instrument.rest_ticker
    splits = client.list_splits(
        ticker=ticker, execution_date_gte=start, execution_date_lte=end, limit=LIST_LIMIT, order="asc"
    )
    dividends = client.list_dividends(
        ticker=ticker, ex_dividend_date_gte=start, ex_dividend_date_lte=end, limit=LIST_LIMIT, order="asc"
    )
    events = [split_event(instrument.symbol, s) for s in splits]
    events += [dividend_event(instrument.symbol, d) for d in dividends]
    usable = [e for e in events if e is not None]
    return usable, len(events) - len(usable)


def published_event_ids(bootstrap: str, topic: str, timeout: float = 60.0) -> set[str]:
    """Event ids already in ``topic`` (corporate actions are few: the whole topic is read)."""
    consumer = range_reader(bootstrap, "tidemark-actions-reader")
    registry = get_registry()
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return set()
        ids: set[str] = set()
        for message in read_range(consumer, topic, timeout=timeout):
            with contextlib.suppress(DecodeError):  # the projection dead-letters it; here: "not one of ours"
                ids.add(registry.decode_as(SCHEMA, message.value())["event_id"])
        return ids
    finally:
        consumer.close()


def publish_actions(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Publish the events not yet in ``topic``, keyed by symbol; returns (published, already there)."""
    known = published_event_ids(bootstrap, topic)
    registry = get_registry()
    producer = ReliableProducer(producer_config(bootstrap), f"publishing corporate actions to {topic}")
    published = skipped = 0
    for event in events:
        if event["event_id"] in known:
            skipped += 1
            continue
        known.add(event["event_id"])
        producer.produce(topic, registry.encode(SCHEMA, event), event["symbol"].encode())
        published += 1
    producer.flush(60)
    return published, skipped
