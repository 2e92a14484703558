"""The downstream Java example (``examples/java-consumer``) reads what our Python producers publish: pattern signals
and alerts, committed in transactions or not, one written with the released v1 schema, decoded by Apache Avro's
single-object decoder from the ``.avsc`` files alone. Aborted transactions are never shown, and a message of an
unknown schema is reported and skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from core.events import alert_record, now_ns
from core.kafka import ReliableProducer, producer_config
from core.settings import Settings
from schemas.codec import RELEASED_ROOT, SchemaRegistry, get_registry
from streams.patterns.processor import signal_event
from streams.patterns.scan import Signal
from streams.processors import Emitted
from tests.integration.kafka_tools import read_all
from tidemark.topics import create_topics

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "java-consumer"
SIGNAL = "tidemark.signals.PatternSignalDetected"
ALERT = "tidemark.risk.AlertRaised"
AS_OF = 1_741_017_600_000_000_000  # 2025-03-03 16:00 UTC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mvn") is None or shutil.which("java") is None, reason="needs mvn and java"),
]


@pytest.fixture(scope="session")
def consumer_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built as a downstream team would (``mvn package``), in a copy: no target/ in the repository."""
    project = tmp_path_factory.mktemp("java-consumer") / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("target"))
    try:
        build = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(project / "pom.xml"), "package"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mvn package did not finish in 600 s:\n{exc.stdout}\n{exc.stderr}")
    if build.returncode != 0:
        pytest.fail(f"mvn package exited {build.returncode}:\n{build.stdout}\n{build.stderr}")
    return project / "target" / "tidemark-consumer.jar"


def pattern(symbols: tuple[str, ...], p_value: float, direction: str = "LONG", minutes: int = 0) -> Emitted:
    family = "PAIRS_MEAN_REVERSION" if len(symbols) == 2 else "MOMENTUM"
    signal = Signal(
        family=family,
        direction=direction,
        symbols=symbols,
        timeframe="15m",
        window_bars=240,
        test="adf" if len(symbols) == 2 else "t_test",
        statistic=-4.25,
        p_value=p_value,
        adjusted_p_value=min(1.0, p_value * 12),
        correction="BENJAMINI_HOCHBERG",
        tests_in_family=12,
        significance=0.05,
        sharpe=1.75,
        sharpe_se=0.31,
        psr=0.987,
        dsr=0.962,
        half_life=14.5 if len(symbols) == 2 else None,
        hurst=0.38,
        params={"lookback": "20", "entry_z": "2.0"},
    )
    return signal_event(signal, AS_OF + minutes * 60_000_000_000)


def alert(severity: str, subject: str, to_value: float) -> dict[str, Any]:
    return alert_record(
        source="risk.monitor",
        ts_event=now_ns(),
        causation_id="",
        event_id=str(uuid.uuid4()),
        kind="risk.var_breach",
        severity=severity,
        subject=subject,
        message=f"1-day VaR of {subject} above its limit",
        details={"limit": "0.02"},
        values=(0.02, to_value),
    )


def test_the_java_example_prints_every_committed_event_decoded(isolated: Settings, consumer_jar: Path) -> None:
    create_topics(isolated)
    bootstrap = isolated.kafka.bootstrap
    registry = get_registry()
    signals_topic, alerts_topic = isolated.topic("signals.patterns"), isolated.topic("alerts")
    committed: dict[str, bytes] = {}  # event id -> the bytes published

    def encode(schema: str, event: dict[str, Any], codec: SchemaRegistry = registry) -> bytes:
        value = codec.encode(schema, event)
        committed[event["event_id"]] = value
        return value

    # As the analytics runner publishes: transactions, one of them aborted.
    # commit_transaction flushes and raises unless every message of the transaction was delivered.
    kafka = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{isolated.app_id}-java-test"})
    kafka.init_transactions(30)
    first, second, pair = pattern(("SPY",), 0.0012), pattern(("XLK",), 0.004, "SHORT"), pattern(("EWA", "EWC"), 1e-5)
    kafka.begin_transaction()
    for emitted in (first, second, pair):
        kafka.produce(signals_topic, encode(SIGNAL, emitted.event), emitted.key)
    kafka.produce(alerts_topic, encode(ALERT, alert("WARNING", "acct-1", 0.025)), b"acct-1")
    kafka.commit_transaction(30)
    # Aborted: never shown. A committed signal with the same key (so the same partition) follows it, and the alert
    # after it too, so a consumer that showed aborted records would print them before reaching all the others.
    aborted_signal, aborted_alert = pattern(("SPY",), 0.03, minutes=15), alert("CRITICAL", "acct-1", 0.9)
    aborted = [registry.encode(SIGNAL, aborted_signal.event), registry.encode(ALERT, aborted_alert)]
    kafka.begin_transaction()
    kafka.produce(signals_topic, aborted[0], aborted_signal.key)
    kafka.produce(alerts_topic, aborted[1], b"acct-1")
    assert kafka.flush(30) == 0  # on the broker before the abort (abort_transaction drops what is still queued)
    kafka.abort_transaction(30)
    later = pattern(("SPY",), 0.0007, minutes=30)
    kafka.begin_transaction()
    kafka.produce(signals_topic, encode(SIGNAL, later.event), later.key)
    kafka.commit_transaction(30)

    # Without a transaction, as the agents publish alerts: one of them of a schema nobody knows, which the consumer
    # reports and skips; and a signal written with the released v1 schema (no sharpe_se, no deflated_sharpe).
    plain = ReliableProducer(producer_config(bootstrap), "java test")
    old = pattern(("GLD", "GDX"), 2e-4, "SHORT", minutes=45)
    v1_event = {k: v for k, v in old.event.items() if k not in ("sharpe_se", "deflated_sharpe")}
    v1_value = encode(SIGNAL, v1_event, SchemaRegistry(RELEASED_ROOT / "v1"))
    assert v1_value[:10] == registry.header(SIGNAL, "v1") != registry.header(SIGNAL)
    plain.produce(signals_topic, v1_value, old.key)
    plain.produce(alerts_topic, encode(ALERT, alert("INFO", "acct-2", 0.011)), b"acct-2")
    unknown = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + committed[first.event["event_id"]][10:]
    plain.produce(alerts_topic, unknown, b"acct-3")
    plain.produce(alerts_topic, encode(ALERT, alert("CRITICAL", "acct-3", 0.05)), b"acct-3")
    plain.flush(30)
    in_the_log = {
        value for topic in (signals_topic, alerts_topic) for *_, value in read_all(bootstrap, topic, 30, False)
    }
    assert set(aborted) <= in_the_log  # the aborted records were written: only read_committed hides them

    run = subprocess.run(
        [
            "java",
            "-jar",
            str(consumer_jar),
            "--bootstrap",
            bootstrap,
            "--prefix",
            isolated.topic_prefix,
            "--schemas",
            str(REPO / "schemas"),
            "--group",
            f"{isolated.app_id}-java",
            "--max-events",
            str(len(committed)),
            "--timeout-s",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"

    printed: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for line in run.stdout.splitlines():
        topic, partition, offset, schema, record = line.split(" ", 4)
        assert partition.startswith("p=") and offset.startswith("o="), line
        event = json.loads(record)
        assert event["event_id"] not in printed, f"printed twice: {line}"
        printed[event["event_id"]] = (topic, schema, event)
    assert set(printed) == set(committed), run.stderr
    assert aborted_signal.event["event_id"] not in printed and aborted_alert["event_id"] not in printed

    # Every field as our own codec decodes the same bytes (a v1 message resolved to the current schema).
    for event_id, value in committed.items():
        topic, schema, event = printed[event_id]
        decoded = registry.decode(value)
        assert schema == decoded.schema
        assert topic == (signals_topic if schema == SIGNAL else alerts_topic)
        assert event == decoded.record
    assert printed[pair.event["event_id"]][2]["symbols"] == ["EWA", "EWC"]
    assert printed[pair.event["event_id"]][2]["p_value"] == 1e-5
    assert printed[pair.event["event_id"]][2]["pattern_family"] == "PAIRS_MEAN_REVERSION"
    assert printed[first.event["event_id"]][2]["half_life"] is None
    resolved = printed[old.event["event_id"]][2]
    assert resolved["symbols"] == ["GLD", "GDX"] and resolved["p_value"] == 2e-4
    assert resolved["sharpe_se"] is None and resolved["deflated_sharpe"] is None  # the defaults of v2's new fields
    severities = sorted(event["severity"] for _, schema, event in printed.values() if schema == ALERT)
    assert severities == ["CRITICAL", "INFO", "WARNING"]
    assert "unknown schema fingerprint 0123456789abcdef" in run.stderr
    assert "MissingSchemaException" in run.stderr
