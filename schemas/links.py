"""What each event says about where it came from: the events it names as causes, the other names it is known by,
the bars behind it, and one line for a person. The causation index (``projections.causation``) stores these and
``tidemark explain`` walks them back.

Part of the contract beside the schemas, so every layer that reads events can use it; pure: no Kafka, database or
Redis code. Every schema of ``schemas/avro`` has an entry in ``RULES`` (a test checks it), so a new event type says
what it links to before it can ship.

- ``links``: every event id the event names as a cause, with the field that names it (``causation``, ``inputs``,
  ``evidence.candidate_id``, ...). Empty names and the event's own id are left out, repeats once.
- ``aliases``: business ids the event is also known by, for links that name an id rather than an event id. A
  ``PlaceOrder`` is known by its ``client_order_id``: the broker's ``OrderUpdated`` and the tracker's
  ``PositionChanged`` name the order by it (only the first update of an order carries the command's id as causation).
- ``bar_window``: for an event computed from bars (statistics, correlations, currency strength, sector rotation,
  pattern signals), the exact reference to the bars behind it, from the event's own fields and the processor's rule.
- ``summary``: one short line per event type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

CAUSATION = "causation"
RUNNER_INTERVAL = "1m"
"""The bars every analytics processor reads (the runner consumes md.bars.1m; daily and hourly rows are built from
them)."""
DEFAULT_ROTATION_MOMENTUM = 15
"""``TIDEMARK_ROTATION_MOMENTUM``'s default: the sector-rotation grid holds ``window + momentum`` returns, and the
event does not say its momentum."""
EVENT_ID_KEYS = ("candidate_id", "task_id", "measurement_id", "command_id", "rebalance_id", "targets_id")
"""Keys of text maps (a command's or a transition's ``evidence``, an alert's ``details``) whose values are event ids."""
SUMMARY_LIMIT = 200


@dataclass(frozen=True)
class Link:
    """An event id (or an alias of one: see ``aliases``) that an event names as a cause, and the field naming it."""

    cause_id: str
    relation: str


@dataclass(frozen=True)
class BarWindow:
    """The bars behind a bar-derived event: for each of ``symbols``, the ``bars_per_symbol`` newest rows of
    ``timeframe`` made of ``interval`` bars starting before ``as_of_ns`` (closes: one more than the returns).

    With ``timeframe == interval`` each bar is a row. Otherwise rows are the processor's own: 15m and 1h buckets
    aligned to each regular session's open (the last one of a session may be short), or whole sessions (1d), each
    closed by its last bar, found with ``core.sessions``. ``regular_session``: only bars inside the market's regular
    session count. ``whole_rows``: a row still open at ``as_of_ns`` does not count (a pattern scan reads complete
    rows only).
    """

    symbols: tuple[str, ...]
    interval: str
    as_of_ns: int
    bars_per_symbol: int
    timeframe: str
    regular_session: bool = False
    whole_rows: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["symbols"] = list(self.symbols)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BarWindow:
        return cls(
            tuple(data["symbols"]),
            str(data["interval"]),
            int(data["as_of_ns"]),
            int(data["bars_per_symbol"]),
            str(data["timeframe"]),
            bool(data["regular_session"]),
            bool(data["whole_rows"]),
        )


Event = Mapping[str, Any]
LinksOf = Callable[[Event], list[Link]]
AliasesOf = Callable[[Event], list[str]]
WindowOf = Callable[[Event, int], BarWindow | None]
SummaryOf = Callable[[Event], str]


@dataclass(frozen=True)
class Rule:
    """What one event type names: links beyond its causation, aliases, its bar window, its summary line."""

    summary: SummaryOf
    links: LinksOf = lambda event: []
    aliases: AliasesOf = lambda event: []
    window: WindowOf | None = None


def links(schema: str, event: Event) -> list[Link]:
    """Every event id ``event`` names as a cause: its causation id, then the schema's linking fields."""
    rule = RULES.get(schema)
    found = [Link(event.get("causation_id") or "", CAUSATION), *(rule.links(event) if rule else [])]
    own = event.get("event_id")
    return _unique(link for link in found if link.cause_id and link.cause_id != own)


def aliases(schema: str, event: Event) -> list[str]:
    """Business ids ``event`` is also known by (a link may name one instead of the event id)."""
    rule = RULES.get(schema)
    return _unique(alias for alias in (rule.aliases(event) if rule else []) if alias)


def bar_window(schema: str, event: Event, *, rotation_momentum: int = DEFAULT_ROTATION_MOMENTUM) -> BarWindow | None:
    """The bars behind ``event`` (None for an event not computed from bars). ``rotation_momentum``: the sector
    rotation's ``TIDEMARK_ROTATION_MOMENTUM``, which its events do not carry."""
    rule = RULES.get(schema)
    if rule is None or rule.window is None:
        return None
    return rule.window(event, rotation_momentum)


def summary(schema: str, event: Event) -> str:
    """One line for a person (at most ``SUMMARY_LIMIT`` characters)."""
    rule = RULES.get(schema)
    text = rule.summary(event) if rule else schema.rpartition(".")[2]
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def short_name(schema: str) -> str:
    """``tidemark.orders.PlaceOrder`` -> ``PlaceOrder``."""
    return schema.rpartition(".")[2]


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


# -- link extractors -----------------------------------------------------------------------------------------------


def _fields(*names: str) -> LinksOf:
    return lambda event: [Link(event[name] or "", name) for name in names]


def _each(name: str) -> LinksOf:
    return lambda event: [Link(value, name) for value in event[name]]


def _keyed(map_field: str) -> LinksOf:
    """The values of ``EVENT_ID_KEYS`` in a text map, as ``field.key``."""

    def extract(event: Event) -> list[Link]:
        values = event[map_field] or {}
        return [Link(values[key], f"{map_field}.{key}") for key in EVENT_ID_KEYS if values.get(key)]

    return extract


def _both(*extractors: LinksOf) -> LinksOf:
    return lambda event: [link for extract in extractors for link in extract(event)]


# -- bar windows (the processors' rules) ---------------------------------------------------------------------------


def _stats_window(event: Event, _: int) -> BarWindow:
    """streams.correlation: a minute window of N returns is the symbol's N + 1 newest minute closes of the market-time
    grid, ending with the bar that ends at as_of_ns (every bar counts; returns across sessions are masked)."""
    return BarWindow(
        (event["symbol"],), RUNNER_INTERVAL, event["as_of_ns"], event["window_bars"] + 1, event["timeframe"]
    )


def _correlation_window(event: Event, _: int) -> BarWindow | None:
    """Minute windows as the statistics'; a daily window is N + 1 trading sessions of each symbol's market, each closed
    by its last regular-session minute bar before the snapshot's boundary (as_of_ns). The portfolio agent's snapshots
    of strategy returns (universe ``strategies:<account>``) come from no bars."""
    if event["universe"].startswith("strategies:"):
        return None
    timeframe = event["timeframe"]
    return BarWindow(
        tuple(event["symbols"]),
        RUNNER_INTERVAL,
        event["as_of_ns"],
        event["window_bars"] + 1,
        timeframe,
        regular_session=timeframe != RUNNER_INTERVAL,
    )


def _signal_window(event: Event, _: int) -> BarWindow:
    """streams.patterns: N + 1 complete rows of the timeframe (session-aligned buckets, or sessions) of regular-session
    minute bars before the scan's boundary (as_of_ns); the row still forming at the boundary is not scanned."""
    return BarWindow(
        tuple(event["symbols"]),
        RUNNER_INTERVAL,
        event["as_of_ns"],
        event["window_bars"] + 1,
        event["timeframe"],
        regular_session=True,
        whole_rows=True,
    )


def _strength_window(event: Event, _: int) -> BarWindow:
    """streams.rotation: the basket's FX pairs (``pairs``: those with a close at both ends of the window, the only ones
    measured), N + 1 regular-session minute closes ending at as_of_ns."""
    return BarWindow(
        tuple(event["pairs"]), RUNNER_INTERVAL, event["as_of_ns"], event["window_bars"] + 1, event["timeframe"], True
    )


def _rotation_window(event: Event, momentum: int) -> BarWindow:
    """streams.rotation: the benchmark and the ranked sector ETFs, window + momentum + 1 regular-session minute closes
    ending at as_of_ns (the RS-momentum of the last bar needs momentum more)."""
    symbols = (event["benchmark"], *(sector["symbol"] for sector in event["sectors"]))
    bars = event["window_bars"] + momentum + 1
    return BarWindow(symbols, RUNNER_INTERVAL, event["as_of_ns"], bars, event["timeframe"], True)


# -- summaries -----------------------------------------------------------------------------------------------------


def _num(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _pm(value: Any, error: Any, spec: str = ".2f") -> str:
    return _num(value, spec) if error is None else f"{_num(value, spec)} ± {_num(error, spec)}"


def _symbols(event: Event, name: str = "symbols", limit: int = 6) -> str:
    values = list(event[name])
    shown = ",".join(values[:limit])
    return shown + (f",… ({len(values)})" if len(values) > limit else "")


def _short(event_id: str) -> str:
    return event_id[:8]


def _order(event: Event) -> str:
    amount = event["qty"] if event["qty"] is not None else f"${event['notional']}"
    words = event["reason"].split()
    return f"{event['side']} {amount} {event['symbol']} ({words[0] if words else 'no reason'})" + (
        f" for {event['strategy_id']}" if event.get("strategy_id") else ""
    )


def _fraction(text: str) -> float:
    """A decimal string as a float; NaN for anything else (a summary must not fail on a malformed figure)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _targets(event: Event) -> str:
    weights = sorted(event["weights"], key=lambda w: (-_fraction(w["weight"]), w["strategy_id"]))
    shown = ", ".join(f"{w['strategy_id']} {_num(_fraction(w['weight']), '.1%')}" for w in weights[:4])
    more = f", … ({len(weights)})" if len(weights) > 4 else ""
    return f"{event['objective']} ({event['solver']}) over {len(weights)} strategies: {shown}{more}; {event['reason']}"


def _candidate(event: Event) -> str:
    verdict = "passed" if event["passed"] else "failed: " + "; ".join(event["rejections"])
    return (
        f"{event['family']} {_symbols(event)} {event['timeframe']}: DSR {_num(event['deflated_sharpe'])}, OOS Sharpe "
        f"{_pm(event['sharpe_out_of_sample'], event.get('sharpe_out_of_sample_se'), '.1f')}, "
        f"PBO {_num(event['pbo'])} ({event['strategy_id']}, {verdict})"
    )


def _signal(event: Event) -> str:
    return (
        f"{event['pattern_family'].lower()} {event['direction'].lower()} {_symbols(event)} {event['timeframe']}: "
        f"{event['test']} adjusted p {_num(event['adjusted_p_value'], '.3g')}, net Sharpe "
        f"{_pm(event['sharpe'], event.get('sharpe_se'))}, DSR {_num(event.get('deflated_sharpe'))}"
    )


def _transitioned(event: Event) -> str:
    return (
        f"{event['strategy_id']}: {event['from_state'] or '-'} → {event['to_state']} v{event['version']}: "
        f"{event['reason']}"
    )


def _risk(event: Event) -> str:
    var_99 = max((e["var"] for e in event["estimates"] if e["confidence"] == 0.99), default=None)
    breaches = f"; breaches {', '.join(event['breaches'])}" if event["breaches"] else ""
    halted = "; kill switch on" if event["kill_switch"] else ""
    return (
        f"{event['account_id']}: 99% VaR {_num(var_99, '.2%')}, drawdown {_num(event['drawdown'], '.2%')}, "
        f"leverage {_num(event['leverage'])}{breaches}{halted}"
    )


def _strength(event: Event) -> str:
    ranked = [c["currency"] for c in event["currencies"]]
    ends = f"strongest {ranked[0]}, weakest {ranked[-1]}" if ranked else "nothing ranked"
    return f"{event['basket']} {event['timeframe']}:{event['window_bars']} over {len(event['pairs'])} pairs: {ends}"


def _rotation(event: Event) -> str:
    leader = event["leader"] or "none"
    return (
        f"{event['universe']} vs {event['benchmark']} {event['timeframe']}:{event['window_bars']}: leader {leader} "
        f"({len(event['sectors'])} sectors)"
    )


def _progress(event: Event) -> str:
    why = f": {event['reason']}" if event["reason"] else ""
    return (
        f"task {_short(event['task_id'])} {event['stage']} {event['trials_done']}/{event['trials_planned']} trials "
        f"({event['family']} {_symbols(event)}){why}"
    )


RULES: dict[str, Rule] = {
    "tidemark.broker.AccountReported": Rule(
        lambda e: f"{e['account_id']}: equity {e['equity']} {e['currency']}, buying power {e['buying_power']}"
    ),
    "tidemark.risk.AlertRaised": Rule(
        lambda e: f"{e['severity']} {e['kind']}: {e['message']}",
        links=_keyed("details"),
    ),
    "tidemark.orders.ApproveRebalance": Rule(
        lambda e: f"approve rebalance {_short(e['rebalance_id'])} by {e['approved_by']}",
        links=_fields("rebalance_id"),
    ),
    "tidemark.marketdata.BarClosed": Rule(
        lambda e: f"{e['symbol']} {e['interval']} bar: close {_num(e['close'], 'g')}, volume {_num(e['volume'], 'g')}"
    ),
    "tidemark.marketdata.CorporateActionAnnounced": Rule(
        lambda e: f"{e['symbol']} {e['action_type']} ex {e['ex_date']} ({e['action_id']})"
    ),
    "tidemark.analytics.CorrelationSnapshotTaken": Rule(
        lambda e: (
            f"{e['universe']} {e['timeframe']}:{e['window_bars']} over {len(e['symbols'])} symbols: average "
            f"correlation {_num(e['average_correlation'])}, "
            f"first component {_num(e['largest_eigenvalue_share'], '.0%')}"
        ),
        window=_correlation_window,
    ),
    "tidemark.analytics.CurrencyStrengthComputed": Rule(_strength, window=_strength_window),
    "tidemark.discovery.DiscoverStrategy": Rule(
        lambda e: f"discover {e['family']} {_symbols(e)} {e['interval']} ({e['asset_class']})"
    ),
    "tidemark.discovery.DiscoveryProgressed": Rule(_progress, links=_fields("task_id", "candidate_id")),
    "tidemark.risk.HaltTrading": Rule(
        lambda e: (
            f"halt {e['account_id']}{' and flatten' if e['flatten'] else ''} asked by {e['requested_by']}: "
            f"{e['reason']}"
        )
    ),
    "tidemark.ops.MessageDeadLettered": Rule(
        lambda e: (
            f"{e['source_topic']}[{e['partition']}]@{e['offset']} dead-lettered by {e['processor']}: "
            f"{e['error_type']}: {e['reason']}"
        )
    ),
    "tidemark.orders.OrderRejected": Rule(
        lambda e: f"{e['symbol']} refused by {e['refused_by']}: {e['reason']}",
        links=_fields("rebalance_id"),
    ),
    "tidemark.broker.OrderUpdated": Rule(
        lambda e: (
            f"{e['update_event']} {e['side']} {e['symbol']}: {e['status']}, filled {e['filled_qty']}"
            + (f" @ {e['filled_avg_price']}" if e["filled_avg_price"] is not None else "")
        ),
        links=_fields("client_order_id"),
    ),
    "tidemark.signals.PatternSignalDetected": Rule(_signal, window=_signal_window),
    "tidemark.orders.PlaceOrder": Rule(_order, aliases=lambda e: [e["client_order_id"]]),
    "tidemark.portfolio.PortfolioTargetsSet": Rule(_targets, links=_each("inputs")),
    "tidemark.orders.PositionChanged": Rule(
        lambda e: f"{e['strategy_id']} {e['symbol']}: {e['qty_change']} → {e['qty']} ({e['cause']})",
        links=_fields("client_order_id"),
    ),
    "tidemark.broker.PositionCorrected": Rule(
        lambda e: f"{e['symbol']}: ours {e['ours']} → the broker's {e['brokers']}: {e['reason']}"
    ),
    "tidemark.broker.PositionReported": Rule(
        lambda e: f"{e['account_id']} {e['symbol']}: {e['qty']} @ {e['avg_entry_price']}"
    ),
    "tidemark.orders.RebalanceProposed": Rule(
        lambda e: (
            f"{len(e['orders'])} orders, {len(e['refused'])} refused, {len(e['skipped'])} skipped for capital "
            f"{e['capital']} ({'auto-approved' if e['auto_approved'] else 'awaiting approval'}, {e['broker']})"
        ),
        links=_fields("targets_id"),
    ),
    "tidemark.risk.ResumeTrading": Rule(
        lambda e: f"resume {e['account_id']} asked by {e['requested_by']}: {e['reason']}"
    ),
    "tidemark.risk.RiskMeasured": Rule(_risk),
    "tidemark.analytics.SectorRotationComputed": Rule(_rotation, window=_rotation_window),
    "tidemark.strategies.StrategyCandidateDiscovered": Rule(_candidate, links=_fields("task_id")),
    "tidemark.strategies.StrategyPerformanceRecorded": Rule(
        lambda e: (
            f"{e['strategy_id']} {e['state']}: {_num(e['period_return'], '+.2%')} (cumulative "
            f"{_num(e['cumulative_return'], '+.2%')}), rolling Sharpe "
            f"{_pm(e['rolling_sharpe'], e.get('rolling_sharpe_se'))}, {e['trades']} trades"
        )
    ),
    "tidemark.strategies.StrategyTransitioned": Rule(_transitioned, links=_keyed("evidence")),
    "tidemark.analytics.SymbolStatsComputed": Rule(
        lambda e: (
            f"{e['symbol']} {e['timeframe']}:{e['window_bars']}: return {_num(e['window_return'], '+.2%')}, "
            f"volatility {_num(e['volatility_annualised'], '.1%')} a year"
        ),
        window=_stats_window,
    ),
    "tidemark.marketdata.TradePrinted": Rule(
        lambda e: f"{e['symbol']} {_num(e['size'], 'g')} @ {_num(e['price'], 'g')} on {e['exchange']}"
    ),
    "tidemark.risk.TradingHalted": Rule(
        lambda e: f"trading halted for {e['account_id']}{' (flattening)' if e['flatten'] else ''}: {e['reason']}",
        links=_fields("command_id", "flatten_rebalance_id"),
    ),
    "tidemark.risk.TradingResumed": Rule(
        lambda e: f"trading resumed for {e['account_id']}: {e['reason']}",
        links=_fields("command_id"),
    ),
    "tidemark.strategies.TransitionRejected": Rule(
        lambda e: f"{e['strategy_id']}: → {e['target_state']} refused: {e['reason']}"
    ),
    "tidemark.strategies.TransitionStrategy": Rule(
        lambda e: (
            f"{e['strategy_id']}: → {e['target_state']} (at v{e['expected_version']}) asked by {e['requested_by']}: "
            f"{e['reason']}"
        ),
        links=_keyed("evidence"),
    ),
}
"""One entry per record schema of ``schemas/avro``."""
