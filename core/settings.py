"""Typed settings: every value comes from the environment (prefix ``TIDEMARK_``) with the local stack as default,
so pointing Tidemark at an existing cluster is one variable. Each component reads its own section; the variables
keep their flat names (a field's alias, or ``TIDEMARK_`` + its name), and the README's table is generated from here
(``python -m core.settings``)."""

from __future__ import annotations

import os
from enum import Enum, StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.costs import DEFAULT_COSTS, CostModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The market's reference instruments: the broad market and sector ETFs, the 28 major FX pairs, CME micro futures.
DEFAULT_UNIVERSE = [
    "SPY",
    "XLB",
    "XLC",
    "XLE",
    "XLF",
    "XLI",
    "XLK",
    "XLP",
    "XLRE",
    "XLU",
    "XLV",
    "XLY",
    "EURUSD",
    "GBPUSD",
    "AUDUSD",
    "NZDUSD",
    "USDJPY",
    "USDCHF",
    "USDCAD",
    "EURGBP",
    "EURJPY",
    "EURCHF",
    "EURAUD",
    "EURNZD",
    "EURCAD",
    "GBPJPY",
    "GBPCHF",
    "GBPAUD",
    "GBPNZD",
    "GBPCAD",
    "AUDJPY",
    "AUDCHF",
    "AUDNZD",
    "AUDCAD",
    "NZDJPY",
    "NZDCHF",
    "NZDCAD",
    "CADJPY",
    "CADCHF",
    "CHFJPY",
    "MES",
    "MNQ",
    "M2K",
    "MYM",
    "MGC",
    "MCL",
]


DEMO_DATABASE = "tidemark_demo"


class Context(StrEnum):
    """Which data the commands address: yours, or what ``tidemark demo`` made (same servers, its own names)."""

    default = "default"
    demo = "demo"


def with_database(dsn: str, database: str) -> str:
    """The same PostgreSQL server, another database (credentials and query parameters kept)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _split(value: object) -> object:
    """Comma-separated lists in variables: ``SPY,XLK`` -> ``["SPY", "XLK"]``."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _alias(variable: str) -> Any:
    """The field's variable, when it is not ``TIDEMARK_`` + its name (kept from the flat settings users set)."""
    return AliasChoices(variable)


CommaList = Annotated[list[str], NoDecode]


class Section(BaseSettings):
    """One component's settings. Built from the environment on its own, or from a dict by field name."""

    model_config = SettingsConfigDict(
        env_prefix="TIDEMARK_", env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    @classmethod
    def variable(cls, name: str) -> str:
        alias = cls.model_fields[name].validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"{cls.model_config.get('env_prefix', 'TIDEMARK_')}{name}".upper()


class KafkaSettings(Section):
    bootstrap: str = Field(
        "127.0.0.1:19092", validation_alias=_alias("TIDEMARK_KAFKA_BOOTSTRAP"), description="bootstrap servers"
    )
    topic_partitions: int = Field(8, ge=1, description="partitions of the topics keyed by symbol or strategy")
    replication_factor: int = Field(1, ge=1, description="replicas of every topic Tidemark creates")


class ProcessingSettings(Section):
    batch_size: int = Field(5000, ge=1, description="most records consumed per batch")
    batch_within_s: float = Field(
        0.5, gt=0, description="longest wait for a batch to fill (the projection sink ends one early at a pause)"
    )
    checkpoint_every_s: float = Field(
        1.0,
        gt=0,
        description="seconds between the analytics runner's checkpoints: each commits its outputs, processor states "
        "and input offsets in one transaction, so it is also the latency of its events",
    )
    snapshot_every: int = Field(15, ge=1, description="market minutes between the analytics snapshots")
    bar_window_s: int = Field(
        3600,
        ge=1,
        description="seconds of 1s and 1m bars per symbol the projection sink keeps in Redis "
        "(tm:window:INTERVAL:SYMBOL), counted back from the symbol's newest bar; the key expires twice this after its "
        "last write",
    )


class CorrelationSettings(Section):
    universe: CommaList = Field(
        default_factory=lambda: list(DEFAULT_UNIVERSE),
        description="symbols of the rolling correlation universe (also the pattern scan's), comma separated",
    )
    universe_name: str = Field("core", description="name the universe's snapshots are published under")
    windows: CommaList = Field(
        default_factory=lambda: ["1m:60", "1m:390", "1d:5", "1d:21"],
        validation_alias=_alias("TIDEMARK_CORRELATION_WINDOWS"),
        description="rolling correlation windows as TIMEFRAME:BARS (1m or 1d), comma separated",
    )
    min_coverage: float = Field(
        0.5,
        gt=0,
        le=1,
        validation_alias=_alias("TIDEMARK_CORRELATION_MIN_COVERAGE"),
        description="share of a window's in-session returns a symbol needs to enter its matrix",
    )
    watched_pairs: CommaList = Field(
        default_factory=list, description="threshold alerts, e.g. SPY:XLK>0.9,EURUSD:GBPUSD<0.3"
    )
    alert_hysteresis: float = Field(0.05, ge=0, description="how far back past its threshold a pair re-arms")
    regime_threshold: float = Field(
        0.1, gt=0, description="distance from the correlation baseline that is a structure-shift alert"
    )
    regime_baseline: int = Field(8, ge=1, description="span in snapshots of the baseline (an EWMA)")
    regime_metric: Literal["mad", "frobenius"] = Field("mad", description="mad (mean absolute difference) or frobenius")

    _lists = field_validator("universe", "windows", "watched_pairs", mode="before")(_split)


class RotationSettings(Section):
    currency_basket: str = Field("G8", description="name the currency-strength snapshots are published under")
    currency_pairs: CommaList = Field(
        default_factory=lambda: [s for s in DEFAULT_UNIVERSE if len(s) == 6 and s.isalpha()],
        description="FX pairs (BASEQUOTE) the currency strengths are computed from, comma separated",
    )
    strength_window: int = Field(60, ge=2, description="bars over which currency strength is measured")
    sector_universe: str = Field("spdr_sectors", description="name the sector-rotation snapshots are published under")
    sector_benchmark: str = Field("SPY", description="the broad market the sectors are measured against")
    sector_etfs: CommaList = Field(
        default_factory=lambda: [s for s in DEFAULT_UNIVERSE if s.startswith("XL")],
        description="sector ETFs of the rotation view, comma separated",
    )
    window: int = Field(
        60, ge=1, validation_alias=_alias("TIDEMARK_ROTATION_WINDOW"), description="bars behind the RS-ratio"
    )
    momentum: int = Field(
        15,
        ge=1,
        validation_alias=_alias("TIDEMARK_ROTATION_MOMENTUM"),
        description="bars over which the RS-momentum measures the RS-ratio's move",
    )
    top_k: int = Field(
        1,
        ge=1,
        validation_alias=_alias("TIDEMARK_ROTATION_TOP_K"),
        description="a sector entering or leaving the top k is a rotation signal",
    )
    band: float = Field(
        0.25,
        ge=0,
        validation_alias=_alias("TIDEMARK_ROTATION_BAND"),
        description="RS points clear of both axes a quadrant change needs",
    )

    _lists = field_validator("currency_pairs", "sector_etfs", mode="before")(_split)


class OperationsSettings(Section):
    stall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="longest a Kafka, PostgreSQL or Redis call may block before the process exits (code 75) and "
        "the worker restarts it from its last commit",
    )
    stop_within_s: float = Field(10.0, gt=0, description="longest a process takes to stop after SIGTERM or Ctrl-C")
    metrics_host: str = Field("127.0.0.1", description="address the metrics and liveness endpoints listen on")
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="the analytics runner's /metrics and /healthz port, the projection sink's is the next one; "
        "0: ports the system picks (logged)",
    )
    liveness_after_s: float = Field(
        120.0, gt=0, description="/healthz fails when a process has made no progress for this long with lag > 0"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="log level of the worker's processes (`tidemark worker --loglevel` sets it)"
    )


class PolygonSettings(Section):
    model_config = SettingsConfigDict(env_prefix="TIDEMARK_POLYGON_")

    api_key: SecretStr | None = Field(None, description="API key (a secret: never logged)")
    rest_url: str = Field("https://api.polygon.io", description="REST base URL")
    ws_feed: str = Field("socket.polygon.io", description="WebSocket host[:port] (the client's feed)")
    ws_secure: bool = Field(True, description="wss:// (true) or ws:// (false) for the WebSocket feed")


class PatternSettings(Section):
    model_config = SettingsConfigDict(env_prefix="TIDEMARK_PATTERN_")

    alpha: float = Field(0.05, gt=0, lt=1, description="level of the multiple-testing-adjusted p-value a signal needs")
    correction: Literal["BENJAMINI_HOCHBERG", "HOLM"] = Field(
        "BENJAMINI_HOCHBERG", description="one correction over every hypothesis of a scan: BENJAMINI_HOCHBERG or HOLM"
    )
    partners: int = Field(3, ge=1, description="most correlated partners each symbol is tested for a pair with")
    entry_z: float = Field(
        1.0, gt=0, description="absolute z-score at which the reversion trades enter (they exit at 0)"
    )
    min_sharpe: float = Field(1.0, description="annualised Sharpe ratio (net of costs) a signal's trade needs")
    min_psr: float = Field(
        0.95, ge=0, lt=1, description="probabilistic Sharpe ratio (net of costs, against zero) a signal's trade needs"
    )
    min_dsr: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="deflated Sharpe ratio (net, against the scan's number of trials) a signal's trade needs; 0: off",
    )
    min_traded_share: float = Field(
        0.9, gt=0, le=1, description="share of a window's bars in which a symbol must have traded to be scanned"
    )


class CostSettings(Section):
    """Costs per unit of notional traded, in basis points, one side (see ``core.costs`` for the defaults' basis)."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_COST_")

    equity_commission_bp: float = Field(
        DEFAULT_COSTS["EQUITY"].commission_bp, ge=0, description="US equities: commission and fees"
    )
    equity_half_spread_bp: float = Field(
        DEFAULT_COSTS["EQUITY"].half_spread_bp, ge=0, description="US equities: half the quoted spread"
    )
    equity_slippage_bp: float = Field(
        DEFAULT_COSTS["EQUITY"].slippage_bp, ge=0, description="US equities: slippage beyond the touch"
    )
    fx_commission_bp: float = Field(DEFAULT_COSTS["FX"].commission_bp, ge=0, description="FX: commission")
    fx_half_spread_bp: float = Field(DEFAULT_COSTS["FX"].half_spread_bp, ge=0, description="FX: half the quoted spread")
    fx_slippage_bp: float = Field(DEFAULT_COSTS["FX"].slippage_bp, ge=0, description="FX: slippage beyond the touch")
    future_commission_bp: float = Field(
        DEFAULT_COSTS["FUTURE"].commission_bp, ge=0, description="CME micro futures: commission and exchange fees"
    )
    future_half_spread_bp: float = Field(
        DEFAULT_COSTS["FUTURE"].half_spread_bp, ge=0, description="CME micro futures: half the quoted spread"
    )
    future_slippage_bp: float = Field(
        DEFAULT_COSTS["FUTURE"].slippage_bp, ge=0, description="CME micro futures: slippage beyond the touch"
    )

    def model(self, asset_class: str) -> CostModel:
        """The cost model of an asset class as named in ``schemas.bars.ASSET_CLASSES`` (UNKNOWN: an equity's)."""
        prefix = "equity" if asset_class == "UNKNOWN" else asset_class.lower()
        if f"{prefix}_commission_bp" not in type(self).model_fields:
            raise ValueError(f"no cost model for asset class {asset_class!r}")
        return CostModel(
            getattr(self, f"{prefix}_commission_bp"),
            getattr(self, f"{prefix}_half_spread_bp"),
            getattr(self, f"{prefix}_slippage_bp"),
        )


class DiscoverySettings(Section):
    """The validation gates a strategy candidate must pass, and how hard each discovery task searches."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_DISCOVERY_")

    min_dsr: float = Field(
        0.95, ge=0, lt=1, description="deflated Sharpe ratio over every trial of the task a candidate needs"
    )
    max_pbo: float = Field(0.2, gt=0, le=1, description="probability of backtest overfitting (CSCV) it must stay under")
    min_oos_sharpe: float = Field(1.0, description="annualised out-of-sample Sharpe ratio, net of costs, it needs")
    max_parameters: int = Field(5, ge=1, le=5, description="free parameters it may have")
    folds: int = Field(5, ge=2, description="walk-forward test folds")
    base_trials: int = Field(8, ge=1, description="Optuna trials of every complexity variant")
    trials_per_parameter: int = Field(8, ge=0, description="more trials per free parameter of a variant")
    cscv_slices: int = Field(16, ge=4, description="CSCV slices for the probability of backtest overfitting (even)")
    capital: float = Field(1_000_000.0, gt=0, description="capital the capacity estimate assumes (account currency)")
    max_queue: int = Field(100, ge=1, description="discovery tasks the planner lets wait before it holds back")
    pause_after_trials: int = Field(
        0, ge=0, description="fault drills only: a worker stops making progress after this many trials of a task"
    )


class LifecycleSettings(Section):
    """When a paper strategy may go live and when a live one retires (the validation gates are discovery's)."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_LIFECYCLE_")

    min_paper_sessions: int = Field(
        20, ge=1, description="sessions a strategy trades on paper before it may go live (asked again after as many)"
    )
    paper_sharpe_band: float = Field(
        2.0,
        gt=0,
        description="standard errors (backtest's and paper record's combined) the paper Sharpe ratio must lie within",
    )
    max_tracking_error: float = Field(
        0.10, gt=0, description="annualised volatility of paper minus backtest returns allowed for going live"
    )
    retire_window_sessions: int = Field(60, ge=1, description="trailing sessions of live performance judged")
    retire_below_sharpe: float = Field(0.0, description="trailing net Sharpe ratio under which a live strategy retires")
    paper_notional: float = Field(
        100_000.0, gt=0, description="capital a strategy's paper profit and loss is counted on (account currency)"
    )
    pause_after_commands: int = Field(
        0, ge=0, description="fault drills only: the lifecycle agent stops answering after this many commands"
    )


class PortfolioSettings(Section):
    """How the portfolio agent weighs the live strategies of its account and when it proposes a rebalance."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_PORTFOLIO_")

    account: str = Field(
        "paper",
        description="account the portfolio is built, rebalanced and tracked for (other accounts' reports are ignored)",
    )
    objective: Literal["max_sharpe", "min_volatility", "efficient_risk", "efficient_return", "min_cvar", "hrp"] = Field(
        "max_sharpe", description="what the optimiser maximises or minimises"
    )
    max_weight: float = Field(0.5, gt=0, le=1, description="largest weight of one strategy")
    min_strategies: int = Field(5, ge=1, description="fewest strategies held; with fewer the targets stay as they were")
    bounds: CommaList = Field(
        default_factory=list, description="user bounds per strategy as ID=LOW:HIGH, comma separated (inside 0..max)"
    )
    capital: float = Field(
        100_000.0, gt=0, description="capital of the simulated account, used while no broker.account report is known"
    )
    lookback_sessions: int = Field(252, ge=2, description="latest sessions of realised returns the optimiser sees")
    min_sessions: int = Field(20, ge=2, description="sessions of realised returns a live strategy needs to be weighted")
    refresh_every_s: float = Field(
        900.0, gt=0, description="seconds between refreshes of the strategy correlations and the weights"
    )
    market_hours_only: bool = Field(True, description="refresh only while the NYSE session is open")
    rebalance_band: float = Field(
        0.05, ge=0, description="a refresh proposes new targets only when a weight moved by more than this"
    )
    correlation_threshold: float = Field(
        0.8, gt=-1, le=1, description="correlation between two held strategies above which an alert is raised"
    )
    pause_after_targets: int = Field(
        0, ge=0, description="fault drills only: the portfolio agent stops after publishing this many targets"
    )

    _lists = field_validator("bounds", mode="before")(_split)


class AlpacaSettings(Section):
    """The Alpaca account the broker connector trades; without a key the simulated broker is used."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_ALPACA_")

    key_id: SecretStr | None = Field(None, description="API key id (a secret: never logged)")
    secret_key: SecretStr | None = Field(None, description="API secret key (a secret: never logged)")
    paper: bool = Field(
        True, description="paper endpoint; false trades real money and also needs `tidemark broker run --live`"
    )
    rest_url: str | None = Field(None, description="REST base URL override (default: alpaca-py's paper or live URL)")
    stream_url: str | None = Field(None, description="trade_updates WebSocket URL override")


class BrokerSettings(Section):
    """How orders are formed, approved, paced and reconciled, whichever broker takes them."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_BROKER_")

    kind: Literal["auto", "simulated", "alpaca"] = Field(
        "auto", description="broker: auto is alpaca when TIDEMARK_ALPACA_KEY_ID is set, else simulated"
    )
    cash: float = Field(100_000.0, gt=0, description="starting cash of the simulated broker")
    participation: float = Field(
        0.1, gt=0, le=1, description="simulated broker: largest share of a bar's volume one order fills in that bar"
    )
    allow_short: bool = Field(
        True, description="orders may open short positions (the simulated broker; Alpaca's fractional orders cannot)"
    )
    auto_approve: bool = Field(False, description="send a rebalance's orders at once, without `rebalance approve`")
    min_order_notional: float = Field(1.0, ge=0, description="smallest order, in the account currency")
    no_trade_band: float = Field(
        0.005, ge=0, description="a symbol whose change is below this fraction of capital is not traded"
    )
    rate_limit_per_min: int = Field(200, ge=1, description="broker requests per minute the connector stays within")
    reconcile_every_s: float = Field(
        30.0, gt=0, description="seconds between reconciliations of the broker's positions with the tracker's"
    )
    pause_after_orders: int = Field(
        0, ge=0, description="fault drills only: the broker connector stops after placing this many orders"
    )
    pause_after_intents: int = Field(
        0, ge=0, description="fault drills only: the execution agent stops after sending this many order commands"
    )


class RiskSettings(Section):
    """How risk is measured, the limits no order may breach, and what a breach does."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_RISK_")

    lookback_days: int = Field(250, ge=20, description="daily returns behind the historical, parametric and MC VaR")
    min_observations: int = Field(
        20, ge=10, description="a held symbol with fewer daily returns counts in exposures, not in VaR (reported)"
    )
    paths: int = Field(10_000, ge=1_000, description="Monte Carlo paths from the shrunk covariance")
    seed: int = Field(0, description="Monte Carlo seed: the same inputs give the same figures")
    measure_every_s: float = Field(
        60.0, ge=0, description="market seconds between measurements on price ticks alone (fills: always measured)"
    )
    limit_method: Literal["HISTORICAL", "PARAMETRIC", "CORNISH_FISHER", "MONTE_CARLO"] = Field(
        "HISTORICAL", description="VaR method the VaR limits are checked with"
    )
    limit_level: float = Field(0.99, gt=0.5, lt=1, description="confidence the VaR limits are checked at")
    max_var: float = Field(0.05, gt=0, description="account: largest 1-day VaR as a fraction of equity")
    max_drawdown: float = Field(0.15, gt=0, lt=1, description="account: largest drawdown from peak equity")
    max_gross_leverage: float = Field(1.5, gt=0, description="account: largest gross exposure over equity")
    max_symbol_exposure: float = Field(
        0.6, gt=0, description="account: largest absolute exposure to one symbol, fraction of equity"
    )
    strategy_max_var: float = Field(0.03, gt=0, description="each strategy: largest 1-day VaR, fraction of equity")
    strategy_max_exposure: float = Field(
        0.6, gt=0, description="each strategy: largest gross exposure, fraction of equity"
    )
    strategy_max_drawdown: float = Field(0.25, gt=0, lt=1, description="each strategy: largest drawdown of its book")
    strategy_limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='per-strategy overrides as JSON, e.g. {"<id>": {"max_var": 0.01, "max_exposure": 0.2}}',
    )
    halt_on_breach: bool = Field(True, description="an account limit breach turns the kill switch on")
    flatten_on_breach: bool = Field(False, description="the kill switch a breach turns on also closes every position")
    demote_on_breach: bool = Field(True, description="a live strategy in breach of its limits goes back to Paper")


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "processing": ProcessingSettings,
    "correlation": CorrelationSettings,
    "rotation": RotationSettings,
    "polygon": PolygonSettings,
    "operations": OperationsSettings,
    "patterns": PatternSettings,
    "costs": CostSettings,
    "discovery": DiscoverySettings,
    "lifecycle": LifecycleSettings,
    "portfolio": PortfolioSettings,
    "alpaca": AlpacaSettings,
    "broker": BrokerSettings,
    "risk": RiskSettings,
}


class Settings(BaseSettings):
    """Where Tidemark runs and under which names (top level), and each component's section."""

    model_config = SettingsConfigDict(env_prefix="TIDEMARK_", env_file=".env", extra="ignore")

    context: Context = Field(
        Context.default,
        description="demo: the demo's topics (prefix demo.), app id (tidemark-demo) and database (tidemark_demo) "
        "on the same servers; the same as `tidemark --context demo`",
    )
    postgres_dsn: str = Field("postgresql://tidemark@127.0.0.1:15432/tidemark", description="projections database")
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="latest values and alerts")
    state_dir: Path = Field(PROJECT_ROOT / ".tidemark", description="data, logs and caches of the local stack")
    app_id: str = Field(
        "tidemark",
        description="consumer group of the analytics runner (-projections for the sink) and its transactional id "
        "prefix (-analytics)",
    )
    topic_prefix: str = Field("", description="prepended to every topic name, to share a cluster")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    correlation: CorrelationSettings = Field(default_factory=CorrelationSettings)
    rotation: RotationSettings = Field(default_factory=RotationSettings)
    polygon: PolygonSettings = Field(default_factory=PolygonSettings)
    operations: OperationsSettings = Field(default_factory=OperationsSettings)
    patterns: PatternSettings = Field(default_factory=PatternSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    alpaca: AlpacaSettings = Field(default_factory=AlpacaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)

    @model_validator(mode="after")
    def _demo_names(self) -> Settings:
        """The demo context overrides the names, so `--context demo` finds what `tidemark demo` left."""
        if self.context is Context.demo:
            self.topic_prefix = "demo."
            self.app_id = "tidemark-demo"
            self.postgres_dsn = with_database(self.postgres_dsn, DEMO_DATABASE)
        return self

    def changed(self, **changes: Any) -> Settings:
        """A copy with some values changed; ``section__field=value`` changes a section's field."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                if section not in SECTIONS or name not in SECTIONS[section].model_fields:
                    raise KeyError(f"no setting {key}")
                nested.setdefault(section, {})[name] = value
            elif key in type(self).model_fields and key not in SECTIONS:
                top[key] = value
            else:
                raise KeyError(f"no setting {key}")
        for section, values in nested.items():
            top[section] = {**getattr(self, section).model_dump(), **values}
        return type(self).model_validate({**self.model_dump(), **top})

    def environment(self) -> dict[str, str]:
        """This process's environment with every setting pinned, so a child (worker, CLI) uses exactly these."""
        env = dict(os.environ)
        for variable, value in self.variables().items():
            if value is None:
                env.pop(variable, None)
            else:
                env[variable] = value
        return env

    def variables(self) -> dict[str, str | None]:
        """Every setting as the variable that sets it and its text (None: unset)."""
        pairs: list[tuple[str, object]] = [
            (f"TIDEMARK_{name.upper()}", getattr(self, name))
            for name in type(self).model_fields
            if name not in SECTIONS
        ]
        for section in SECTIONS:
            values = getattr(self, section)
            pairs += [(type(values).variable(name), getattr(values, name)) for name in type(values).model_fields]
        return {variable: _text(value) for variable, value in pairs}

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: object = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, Path):
        value = ".tidemark" if value == PROJECT_ROOT / ".tidemark" else value
    text = _text(value)
    if not text:
        return "unset"
    if value == DEFAULT_UNIVERSE:
        return "SPY, 11 sector ETFs, 28 FX pairs, 6 micro futures"
    if isinstance(value, list) and len(text) > 40:
        return f"{len(value)} symbols ({text[:24]}...)"
    return f"`{text}`"


def settings_table() -> str:
    """The README's configuration table, generated so that it cannot drift from the settings."""
    rows = ["| variable | section | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name not in SECTIONS:
            rows.append(f"| `TIDEMARK_{name.upper()}` | | {_default(field)} | {field.description} |")
    for title, section in SECTIONS.items():
        for name, field in section.model_fields.items():
            rows.append(f"| `{section.variable(name)}` | {title} | {_default(field)} | {field.description} |")
    return "\n".join(rows) + "\n"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


if __name__ == "__main__":
    print(settings_table(), end="")
