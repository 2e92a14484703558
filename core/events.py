"""The five fields every event carries, and the ids that make producers idempotent."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

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


def common_fields(source: str, ts_event: int, causation_id: str = "", event_id: str | None = None) -> dict[str, Any]:
    """The common fields of a new event: a random id unless the caller has a deterministic one."""
    return {
        "event_id": event_id if event_id is not None else str(uuid.uuid4()),
        "ts_event": ts_event,
        "ts_ingest": now_ns(),
        "source": source,
        "causation_id": causation_id,
    }


def alert_record(
    source: str,
    ts_event: int,
    causation_id: str,
    event_id: str,
    kind: str,
    severity: str,
    subject: str,
    message: str,
    details: dict[str, str],
    values: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """An ``AlertRaised`` record (``schemas/avro/AlertRaised.avsc``): every producer of alerts builds it here."""
    return {
        **common_fields(source, ts_event, causation_id, event_id),
        "kind": kind,
        "severity": severity,
        "subject": subject,
        "message": message,
        "from_value": values[0],
        "to_value": values[1],
        "since_ns": None,
        "details": details,
    }


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_COLUMNS = np.r_[0:8, 9:13, 14:18, 19:23, 24:36]


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: a bijection on 64 bits that spreads every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_hash(*parts: str) -> int:
    """A stable 64-bit hash of an event stream's identity, e.g. (source, symbol, interval)."""
    text = "".join(f"{len(part)}:{part}" for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, person=b"tidemark-ids").digest(), "little")


def deterministic_event_ids_array(
    streams: npt.NDArray[np.uint64], positions: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """Version-8 UUIDs as canonical ASCII rows (n x 36), one per (stream hash, position), vectorised.

    The hot-path twin of ``deterministic_event_id``: a republished bar (same stream, same start) gets the same
    id, without a uuid5/SHA-1 call per bar.
    """
    with np.errstate(over="ignore"):
        position = positions.astype(np.uint64)
        high = _mix64(streams ^ _mix64(position))
        low = _mix64(high ^ position ^ np.uint64(0x9E3779B97F4A7C15))
    raw = np.empty((len(streams), 16), dtype=np.uint8)
    raw[:, :8] = high.astype(">u8").view(np.uint8).reshape(-1, 8)
    raw[:, 8:] = low.astype(">u8").view(np.uint8).reshape(-1, 8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x80  # version 8: custom
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    nibbles = np.empty((len(streams), 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((len(streams), 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_COLUMNS] = _HEX[nibbles]
    return text
