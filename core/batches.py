"""Batch handling shared by the analytics runner and the projection sink: retries for outages, dead letters for the
rest."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from redis import exceptions as redis_exceptions

from core.consumed import Consumed

log = logging.getLogger("tidemark.streams")

DeadLetter = Callable[[Sequence[Consumed], Sequence[tuple[int, str]], str, str], Awaitable[None]]
Handler = Callable[[Sequence[Consumed]], Awaitable[None]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
)


async def handle_batch(records: Sequence[Consumed], processor: str, handler: Handler, dead_letter: DeadLetter) -> None:
    """Run ``handler`` on a batch so that it can neither crash its consumer nor lose the batch.

    Outages (connections, timeouts) are retried with capped backoff until they pass; any other failure
    dead-letters the whole batch with the error, so an escaping exception can neither stop the consumer nor,
    once its offsets move on, lose the batch silently.
    """
    for attempt in itertools.count(1):
        try:
            await handler(records)
            return
        except TRANSIENT_ERRORS as exc:
            delay = min(30.0, 0.25 * 2**attempt)
            log.warning("%s: %r; retrying the batch in %.1fs (attempt %d)", processor, exc, delay, attempt)
            await asyncio.sleep(delay)
        except Exception as exc:
            log.exception("%s: batch of %d failed; dead-lettering it", processor, len(records))
            reason = f"processing failed: {exc!r}"
            await dead_letter(records, [(i, reason) for i in range(len(records))], processor, type(exc).__name__)
            return
