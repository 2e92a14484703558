"""The five fields every event carries, and the ids that make producers idempotent."""

from __future__ import annotations

import time
import uuid
from typing import Any

# uuid5(NAMESPACE_URL, "urn:tidemark:events"). Fixed forever: changing it would change every deterministic
TIDEMARK_NAMESPACE = uuid.UUID("1e518148-2ec1-5c1e-a9f1-3da029baa98d")


def now_ns() -> int:
    """Wall-clock UTC time in nanoseconds, the unit of every timestamp in the contract."""
    return time.time_ns()


def deterministic_event_id(*parts: str | int) -> str:
    """uuid5 of the parts, so the same fact published twice gets the same id and duplicates are recognised.

    Each part is prefixed with its kind and length, so ("a,b",) and ("a", "b"), or 1 and "1", never collide.
    """
    if not parts:
        raise ValueError("deterministic_event_id needs at least one part")
    text = "".join(f"{'i' if isinstance(part, int) else 's'}{len(str(part))}:{part}" for part in parts)
    return str(uuid.uuid5(TIDEMARK_NAMESPACE, text))


def common_fields(
    source: str, ts_event: int, causation_id: str = "", event_id: str | None = None
) -> dict[str, Any]:
    """The common fields of a new event: a random id unless the caller has a deterministic one."""
    return {
        "event_id": event_id if event_id is not None else str(uuid.uuid4()),
        "ts_event": ts_event,
        "ts_ingest": now_ns(),
        "source": source,
        "causation_id": causation_id,
    }
