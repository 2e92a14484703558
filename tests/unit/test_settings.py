"""Settings: each component's section reads the variables users already set, the README's table is the code's,
and a child process given ``environment()`` sees exactly the same settings."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr, ValidationError

from core.settings import SECTIONS, Settings, settings_table
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _no_tidemark_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("TIDEMARK_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(REPO / "tests")  # no .env file here


@pytest.mark.parametrize(
    ("variable", "text", "read", "expected"),
    [
        (
            "TIDEMARK_KAFKA_BOOTSTRAP",
            "broker-1:9092,broker-2:9092",
            lambda s: s.kafka.bootstrap,
            "broker-1:9092,broker-2:9092",
        ),
        ("TIDEMARK_TOPIC_PARTITIONS", "12", lambda s: s.kafka.topic_partitions, 12),
        ("TIDEMARK_CHECKPOINT_EVERY_S", "2.5", lambda s: s.processing.checkpoint_every_s, 2.5),
        ("TIDEMARK_SNAPSHOT_EVERY", "5", lambda s: s.processing.snapshot_every, 5),
        ("TIDEMARK_UNIVERSE", " SPY, XLK ,,EURUSD", lambda s: s.correlation.universe, ["SPY", "XLK", "EURUSD"]),
        ("TIDEMARK_CORRELATION_WINDOWS", "1m:30", lambda s: s.correlation.windows, ["1m:30"]),
        ("TIDEMARK_CORRELATION_MIN_COVERAGE", "0.75", lambda s: s.correlation.min_coverage, 0.75),
        ("TIDEMARK_REGIME_METRIC", "frobenius", lambda s: s.correlation.regime_metric, "frobenius"),
        ("TIDEMARK_ROTATION_WINDOW", "30", lambda s: s.rotation.window, 30),
        ("TIDEMARK_ROTATION_TOP_K", "2", lambda s: s.rotation.top_k, 2),
        ("TIDEMARK_SECTOR_ETFS", "XLK,XLE", lambda s: s.rotation.sector_etfs, ["XLK", "XLE"]),
        ("TIDEMARK_POLYGON_REST_URL", "http://127.0.0.1:1", lambda s: s.polygon.rest_url, "http://127.0.0.1:1"),
        ("TIDEMARK_POLYGON_WS_SECURE", "false", lambda s: s.polygon.ws_secure, False),
        ("TIDEMARK_APP_ID", "desk-a", lambda s: s.app_id, "desk-a"),
    ],
)
def test_each_section_reads_the_variables_users_already_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, read: object, expected: object
) -> None:
    monkeypatch.setenv(variable, text)
    assert read(Settings()) == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("TIDEMARK_REGIME_METRIC", "euclid"),
        ("TIDEMARK_TOPIC_PARTITIONS", "0"),
        ("TIDEMARK_CORRELATION_MIN_COVERAGE", "1.5"),
        ("TIDEMARK_CONTEXT", "prod"),
    ],
)
def test_a_value_outside_its_type_is_refused(monkeypatch: pytest.MonkeyPatch, variable: str, text: str) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValidationError):
        Settings()


def test_the_api_key_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEMARK_POLYGON_API_KEY", "pk-live-123")
    settings = Settings()
    assert isinstance(settings.polygon.api_key, SecretStr)
    assert "pk-live-123" not in repr(settings) and "pk-live-123" not in str(settings.model_dump())
    assert settings.environment()["TIDEMARK_POLYGON_API_KEY"] == "pk-live-123"  # a child process still gets it


def test_a_child_given_environment_sees_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings().changed(
        app_id="x", kafka__bootstrap="h:1", rotation__window=9, correlation__universe=["SPY", "XLK"]
    )
    for name, value in parent.environment().items():
        if name.startswith("TIDEMARK_"):
            monkeypatch.setenv(name, value)
    assert Settings() == parent


def test_changed_validates_and_refuses_unknown_names() -> None:
    assert Settings().changed(polygon__api_key="k").polygon.api_key == SecretStr("k")
    with pytest.raises(KeyError, match="no setting rotation__windows"):
        Settings().changed(rotation__windows=3)
    with pytest.raises(KeyError, match="no setting kafka"):
        Settings().changed(kafka={"bootstrap": "h:1"})


def test_every_field_has_a_variable_and_a_description() -> None:
    variables = [section.variable(name) for section in SECTIONS.values() for name in section.model_fields]
    assert len(variables) == len(set(variables))
    assert all(re.fullmatch(r"TIDEMARK_[A-Z0-9_]+", v) for v in variables)
    assert all(f.description for s in SECTIONS.values() for f in s.model_fields.values())


def test_the_readme_configuration_table_is_generated_from_the_settings() -> None:
    readme = (REPO / "README.md").read_text()
    table = re.search(r"<!-- settings table: [^>]*-->\n(.*?)<!-- end of settings table -->", readme, re.S)
    assert table is not None, "README has no generated settings table"
    assert table.group(1) == settings_table(), "README is stale: paste the output of `python -m core.settings`"
