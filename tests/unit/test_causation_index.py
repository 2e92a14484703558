"""The causation index's rows of a record (no database: what ``CausationIndex.apply`` writes is checked against
PostgreSQL in tests/integration/test_explain.py), and the sink's routes to it."""

from __future__ import annotations

import json
import random

from avro_samples import sample

from core.consumed import Consumed
from core.events import common_fields
from core.settings import Settings
from projections.causation import CAUSATION, INDEXED_TOPICS, CausationIndex, Indexed
from projections.sink import PROJECTED_TOPICS, projection_routes
from schemas.catalogue import CATALOGUE
from schemas.codec import get_registry

ORDER = "00000000-0000-4000-8000-0000000000aa"
PLACE = "tidemark.orders.PlaceOrder"
REBALANCE = "00000000-0000-4000-8000-000000000001"


def test_every_topic_of_the_contract_but_bars_and_trades_is_indexed() -> None:
    assert set(INDEXED_TOPICS) == {
        spec.name for spec in CATALOGUE if spec.value_schemas and not spec.name.startswith(("md.bars.", "md.trades"))
    }
    assert "analytics.checkpoints" not in INDEXED_TOPICS and "dlq" in INDEXED_TOPICS


def test_the_sink_sends_each_indexed_topic_to_its_projection_then_to_the_index() -> None:
    settings = Settings().changed(topic_prefix="p.")
    routes = projection_routes(settings, None, None, None)  # type: ignore[arg-type]  # nothing connects until used
    assert set(routes) == {settings.topic(name) for name in (*PROJECTED_TOPICS, *INDEXED_TOPICS)}
    for name in INDEXED_TOPICS:
        names = [route.projection for route in routes[settings.topic(name)]]
        assert names[-1] == CAUSATION and names.count(CAUSATION) == 1
        assert len(names) == (2 if name in PROJECTED_TOPICS else 1), name
    assert [route.projection for route in routes["p.md.bars.1m"]] == ["projection.bars"]


def test_a_record_becomes_its_position_fields_causes_and_aliases() -> None:
    registry = get_registry()
    order = {
        **sample(registry.schema("tidemark.orders.PlaceOrder"), random.Random(1)),
        **common_fields("rebalancer", 1_728_048_600_123_456_789, REBALANCE, ORDER),
        "client_order_id": "tm-000000000000400080000000000000aa",
    }
    index = CausationIndex(None)  # type: ignore[arg-type]
    value = registry.encode("tidemark.orders.PlaceOrder", order)
    found = index.outcome(Consumed("orders.intents", 2, 41, b"paper", value))
    assert isinstance(found, Indexed)
    assert found.row[:8] == (
        ORDER,
        "tidemark.orders.PlaceOrder",
        "orders.intents",
        2,
        41,
        1_728_048_600_123_456_789,
        "paper",
        "rebalancer",
    )
    assert found.row[9] is None  # not computed from bars
    assert found.causes == [(ORDER, REBALANCE, "causation")]
    assert found.aliases == [("tm-000000000000400080000000000000aa", ORDER)]
    # PostgreSQL text holds no NUL, which Avro strings may: replaced, so the batch is not refused.
    odd = index.outcome(
        Consumed("orders.intents", 2, 44, b"pa\x00per", registry.encode(PLACE, {**order, "source": "re\x00b"}))
    )
    assert isinstance(odd, Indexed) and odd.row[6:8] == ("pa\ufffdper", "re\ufffdb")
    assert index.outcome(Consumed("orders.intents", 2, 42, None, b"\xc3\x01junk")) == "undecodable"
    assert index.outcome(Consumed("orders.intents", 2, 43, None, None)) == "undecodable"


def test_a_bar_derived_event_stores_its_window() -> None:
    registry = get_registry()
    stats = {
        **sample(registry.schema("tidemark.analytics.SymbolStatsComputed"), random.Random(2)),
        "symbol": "AAPL",
        "timeframe": "1m",
        "window_bars": 60,
        "as_of_ns": 5,
    }
    value = registry.encode("tidemark.analytics.SymbolStatsComputed", stats)
    found = CausationIndex(None, rotation_momentum=3).outcome(Consumed("analytics.stats", 0, 0, b"AAPL", value))  # type: ignore[arg-type]
    assert isinstance(found, Indexed)
    assert json.loads(found.row[9]) == {
        "symbols": ["AAPL"],
        "interval": "1m",
        "as_of_ns": 5,
        "bars_per_symbol": 61,
        "timeframe": "1m",
        "regular_session": False,
        "whole_rows": False,
    }
