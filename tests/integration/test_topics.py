"""``tidemark topics create`` makes the catalogue's topics once; ``list`` shows them with their settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from core.settings import Settings
from schemas.catalogue import CATALOGUE

pytestmark = pytest.mark.integration


def test_topics_create_is_idempotent_and_matches_the_catalogue(isolated: Settings, run_cli: Callable[..., Any]) -> None:
    names = {isolated.topic(spec.name) for spec in CATALOGUE}
    first = json.loads(run_cli("topics", "create", "--json").stdout)
    assert set(first["created"]) == names and first["existing"] == []
    second = json.loads(run_cli("topics", "create", "--json").stdout)
    assert second["created"] == [] and set(second["existing"]) == names
    listed = json.loads(run_cli("topics", "list", "--json").stdout)
    assert {row["name"] for row in listed} == names
    assert all(row["exists"] for row in listed)

    admin = AdminClient({"bootstrap.servers": isolated.kafka.bootstrap})
    metadata = admin.list_topics(timeout=30).topics
    for spec in CATALOGUE:
        name = isolated.topic(spec.name)
        expected_partitions = isolated.kafka.topic_partitions if spec.partitions == 8 else spec.partitions
        assert len(metadata[name].partitions) == expected_partitions, name
    dlq = ConfigResource(ConfigResource.Type.TOPIC, isolated.topic("dlq"))
    config = admin.describe_configs([dlq])[dlq].result(timeout=30)
    dlq_spec = next(spec for spec in CATALOGUE if spec.name == "dlq")
    assert config["retention.ms"].value == str(dlq_spec.retention_ms)
    assert config["cleanup.policy"].value == dlq_spec.cleanup_policy
