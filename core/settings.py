"""Typed settings: every value comes from the environment (prefix ``TIDEMARK_``) with the local stack as default,
so pointing Tidemark at an existing cluster is one variable."""

from __future__ import annotations

import os
from enum import Enum, StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDEMARK_", env_file=".env", extra="ignore")

    context: Context = Field(
        Context.default,
        description="demo: the demo's topics (prefix demo.), app id (tidemark-demo) and database (tidemark_demo)",
    )
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, comma separated")
    postgres_dsn: str = Field("postgresql://tidemark@127.0.0.1:15432/tidemark")
    redis_url: str = Field("redis://127.0.0.1:16379/0")
    state_dir: Path = Field(PROJECT_ROOT / ".tidemark", description="data, logs and caches of the local stack")

    app_id: str = Field("tidemark", description="the worker's consumer group and transactional id prefix")
    topic_prefix: str = Field("", description="prepended to every topic name, to share a cluster")
    topic_partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)

    universe: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_UNIVERSE),
        description="symbols of the rolling correlation universe, comma separated",
    )
    universe_name: str = Field("core", description="name the universe's snapshots are published under")
    correlation_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["1m:60", "1m:390", "1d:5", "1d:21"],
        description="rolling correlation windows as TIMEFRAME:BARS (1m or 1d), comma separated",
    )
    correlation_min_coverage: float = Field(
        0.5, gt=0, le=1, description="share of a window's returns a symbol needs to enter its matrix"
    )
    watched_pairs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="correlation alerts, e.g. SPY:XLK>0.9,EURUSD:GBPUSD<0.3"
    )
    alert_hysteresis: float = Field(0.05, ge=0, description="how far back past its threshold a pair re-arms")
    regime_threshold: float = Field(0.1, gt=0, description="distance from the baseline that is a regime change")
    regime_baseline: int = Field(8, ge=1, description="span in snapshots of the correlation baseline")
    regime_metric: str = Field("mad", description="mad (mean absolute difference) or frobenius")
    snapshot_every: int = Field(15, ge=1, description="market minutes between correlation snapshots")
    currency_basket: str = Field("G8", description="name the currency-strength snapshots are published under")
    currency_pairs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [s for s in DEFAULT_UNIVERSE if len(s) == 6 and s.isalpha()],
        description="FX pairs (BASEQUOTE) the currency strengths are computed from, comma separated",
    )
    strength_window: int = Field(60, ge=2, description="bars over which currency strength is measured")
    sector_universe: str = Field("spdr_sectors", description="name the sector-rotation snapshots are published under")
    sector_benchmark: str = Field("SPY", description="the broad market the sectors are measured against")
    sector_etfs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [s for s in DEFAULT_UNIVERSE if s.startswith("XL")],
        description="sector ETFs of the rotation view, comma separated",
    )
    rotation_window: int = Field(60, ge=1, description="bars of relative performance behind the RS-ratio")
    rotation_momentum: int = Field(15, ge=1, description="bars over which the RS-momentum measures the RS-ratio's move")
    rotation_top_k: int = Field(1, ge=1, description="a sector entering or leaving the top k is a rotation signal")
    rotation_band: float = Field(0.25, ge=0, description="RS points around 100 within which a quadrant is kept")
    batch_size: int = Field(5000, ge=1)
    batch_within_s: float = Field(0.5, gt=0)
    checkpoint_every_s: float = Field(
        1.0, gt=0, description="seconds between the analytics runner's checkpoints (each one commits a transaction)"
    )

    polygon_api_key: SecretStr | None = None
    polygon_rest_url: str = Field("https://api.polygon.io", description="Polygon REST base URL")
    polygon_ws_feed: str = Field("socket.polygon.io", description="Polygon WebSocket host[:port] (the client's feed)")
    polygon_ws_secure: bool = Field(True, description="wss:// (True) or ws:// (False) for the WebSocket feed")
    alpaca_api_key: SecretStr | None = None
    alpaca_secret_key: SecretStr | None = None
    alpaca_paper: bool = True

    @field_validator("universe", "currency_pairs", "sector_etfs", "correlation_windows", "watched_pairs", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return [symbol.strip() for symbol in value.split(",") if symbol.strip()]
        return value

    @model_validator(mode="after")
    def _demo_names(self) -> Settings:
        """The demo context overrides the names, so `--context demo` finds what `tidemark demo` left."""
        if self.context is Context.demo:
            self.topic_prefix = "demo."
            self.app_id = "tidemark-demo"
            self.postgres_dsn = with_database(self.postgres_dsn, DEMO_DATABASE)
        return self

    def environment(self) -> dict[str, str]:
        """This process's environment with every setting pinned, so a child (worker, CLI) uses exactly these."""
        env = dict(os.environ)
        for name, value in self.model_dump().items():
            variable = f"TIDEMARK_{name.upper()}"
            if value is None:
                env.pop(variable, None)
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, Enum):
                value = value.value
            env[variable] = ",".join(value) if isinstance(value, list) else str(value)
        return env

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
