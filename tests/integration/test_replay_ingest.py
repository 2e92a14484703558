"""``tidemark ingest replay``: a file's bars reach the topic exactly as written; a bad file publishes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from schemas.bars import ASSET_CLASSES
from schemas.fastbars import decode_bars
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import expected_bars
from tidemark.settings import Settings
from tidemark.topics import message_count

pytestmark = pytest.mark.integration


def bars_file(path: Path, frame: pd.DataFrame) -> Path:
    out = pd.DataFrame(
        {
            "symbol": frame.symbol,
            "timestamp": pd.to_datetime(frame.start_ns, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "open": frame.close,
            "high": frame.close,
            "low": frame.close,
            "close": frame.close,
            "volume": frame.volume,
        }
    )
    if path.suffix == ".parquet":
        out.to_parquet(path)
    else:
        out.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_replayed_file_lands_in_the_topic_bar_for_bar(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path, suffix: str
) -> None:
    run_cli("topics", "create")
    frame = expected_bars().head(5000)
    result = run_cli("ingest", "replay", str(bars_file(tmp_path / f"bars{suffix}", frame)))
    assert "published 5,000 bars" in result.stderr
    values = [value for _, _, _, value in read_all(isolated.kafka_bootstrap, isolated.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    got = pd.DataFrame({"symbol": bars.symbol.astype(str), "start_ns": bars.start_ns, "close": bars.close})
    want = frame[["symbol", "start_ns", "close"]]
    pd.testing.assert_frame_equal(
        got.sort_values(["symbol", "start_ns"], ignore_index=True),
        want.sort_values(["symbol", "start_ns"], ignore_index=True),
        check_dtype=False,
    )
    assert np.all(bars.end_ns - bars.start_ns == 60_000_000_000)


def test_a_bad_file_is_rejected_with_its_row_and_publishes_nothing(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    frame = expected_bars().head(100).reset_index(drop=True)
    path = bars_file(tmp_path / "bars.csv", frame)
    lines = path.read_text().splitlines()
    lines[42] = lines[42].replace(lines[42].split(",")[2], "not-a-price", 1)
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("ingest", "replay", str(path), check=False)
    assert result.returncode == 2
    assert "row 42" in result.stderr.replace("\n", " ")
    assert message_count(isolated.kafka_bootstrap, isolated.topic("md.bars.1m")) == 0


def test_replayed_equity_bars_carry_the_nyse_session_flag(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    stamps = ["2024-11-27T09:29:00-05:00", "2024-11-27T09:30:00-05:00", "2024-11-28T10:00:00-05:00"]  # Thanksgiving
    path = tmp_path / "spy.csv"
    pd.DataFrame({"timestamp": stamps, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 5}).to_csv(
        path, index=False
    )
    run_cli("ingest", "replay", str(path), "--symbol", "SPY", "--asset-class", "equity")
    values = [value for _, _, _, value in read_all(isolated.kafka_bootstrap, isolated.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    order = np.argsort(bars.start_ns)
    assert bars.regular_session[order].tolist() == [False, True, False]
    assert (bars.asset_class == ASSET_CLASSES.index("EQUITY")).all()
