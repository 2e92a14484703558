"""Where a rebuild writes: the replay schema first on the search path, the rebuilt cache in a Redis database of its
own, the live database recognised whatever the query string says, and each partition read to its furthest end."""

from __future__ import annotations

import pytest

from projections.replay import PartitionPlan, ReplayError, redis_database, same_database, schema_dsn


@pytest.mark.parametrize(
    ("dsn", "schema", "expected"),
    [
        ("postgresql://u@h:5432/db", "replay", "postgresql://u@h:5432/db?search_path=replay%2Cpublic"),
        (
            "postgresql://u@h:5432/db?sslmode=disable",
            "audit_1",
            "postgresql://u@h:5432/db?sslmode=disable&search_path=audit_1%2Cpublic",
        ),
        ("postgresql://u@h/db?search_path=other", "replay", "postgresql://u@h/db?search_path=replay%2Cpublic"),
    ],
)
def test_the_schema_comes_first_on_the_search_path(dsn: str, schema: str, expected: str) -> None:
    assert schema_dsn(dsn, schema) == expected


@pytest.mark.parametrize("schema", ["re play", "x;drop table bars", "1abc", ""])
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(schema: str) -> None:
    with pytest.raises(ReplayError, match="plain identifier"):
        schema_dsn("postgresql://u@h/db", schema)


@pytest.mark.parametrize(
    ("url", "database", "expected"),
    [
        ("redis://127.0.0.1:16379/0", 15, "redis://127.0.0.1:16379/15"),
        ("redis://127.0.0.1:16379", 15, "redis://127.0.0.1:16379/15"),
        ("redis://:secret@host:6379/3", 15, "redis://:secret@host:6379/15"),
    ],
)
def test_the_rebuilt_cache_gets_a_database_of_its_own(url: str, database: int, expected: str) -> None:
    assert redis_database(url, database) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db?search_path=replay", True),
        ("postgresql://u@h:5432/db", "postgresql://other@h:5432/db", True),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db2", False),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5433/db", False),
        ("postgresql://u@h:5432/db", "postgresql://u@elsewhere:5432/db", False),
    ],
)
def test_the_live_database_is_recognised(a: str, b: str, same: bool) -> None:
    assert same_database(a, b) is same


@pytest.mark.parametrize(
    ("start", "ends", "end"),
    [(0, {"projection.bars": 10, "causation": 12}, 12), (5, {}, 5), (3, {"a": 0}, 0), (3, {"a": 7}, 7)],
)
def test_a_partition_is_read_to_the_furthest_end_any_projection_needs(
    start: int, ends: dict[str, int], end: int
) -> None:
    assert PartitionPlan(start, ends).end == end
