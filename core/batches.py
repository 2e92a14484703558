"""Batch handling shared by the analytics runner and the projection sink: retries for outages, dead letters for the
rest."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from redis import exceptions as redis_exceptions

from core.consumed import Consumed

log = logging.getLogger("tidemark.streams")

# Outages are retried at most this far apart, so work resumes within seconds of the service answering again.
RETRY_CAP_S = 5.0

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


class Interrupted(Exception):
    """Asked to stop while a batch waited out an outage: the batch is not applied, and is redone on restart."""


async def handle_batch(
    records: Sequence[Consumed],
    processor: str,
    handler: Handler,
    dead_letter: DeadLetter,
    stopping: threading.Event | None = None,
) -> None:
    """Run ``handler`` on a batch so that it can neither crash its consumer nor lose the batch.

    Outages (connections, timeouts) are retried with capped backoff until they pass or ``stopping`` is set (then
    Interrupted); any other failure dead-letters the whole batch with the error, so an escaping exception can
    neither stop the consumer nor, once its offsets move on, lose the batch silently.
    """
    for attempt in itertools.count(1):
        try:
            await handler(records)
            return
        except TRANSIENT_ERRORS as exc:
            delay = min(RETRY_CAP_S, 0.25 * 2**attempt)
            log.warning("%s: %r; retrying the batch in %.1fs (attempt %d)", processor, exc, delay, attempt)
            if stopping is None:
                await asyncio.sleep(delay)
            elif await asyncio.to_thread(stopping.wait, delay):
                raise Interrupted(f"{processor}: stopped while waiting out {exc!r}") from exc
        except Exception as exc:
            log.exception("%s: batch of %d failed; dead-lettering it", processor, len(records))
            reason = f"processing failed: {exc!r}"
            await dead_letter(records, [(i, reason) for i in range(len(records))], processor, type(exc).__name__)
            return
