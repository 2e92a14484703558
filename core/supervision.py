"""Never alive but stuck: bounded blocking calls, a bounded stop, and the restart policy of the worker's supervisor.

librdkafka's ``send_offsets_to_transaction`` ignores its timeout while the transaction coordinator is away (it was
seen blocked for more than 6 minutes after the broker came back; librdkafka issue 5456), and a Python signal handler
only runs once the main thread returns from C, so a SIGTERM during such a call waited as long. The watchdog is a
thread that does not depend on the main thread: it sees signals through the interpreter's wakeup descriptor, and it
ends the process with a clear message when a bounded call or a requested stop overruns. Exactly-once effects do not
depend on a graceful exit (transactions abort, projections store their offsets), so ending the process is safe; the
supervisor (``tidemark worker``) then restarts it from its last commit.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("tidemark.supervision")

# Exit codes the supervisor acts on (sysexits.h meanings).
EXIT_STUCK = 75  # EX_TEMPFAIL: a bounded call overran; restart
EXIT_FENCED = 78  # EX_CONFIG: another instance owns this app id; restarting would only fence it back
EXIT_STOP_OVERRAN = 143  # 128 + SIGTERM: asked to stop, did not finish within the bound, ended
NEVER_RESTART = frozenset({EXIT_FENCED})

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)


def start_process(name: str, log_level: str, stop_within_s: float) -> Watchdog:
    """What every long-running process does first: log at the worker's level, then let a watchdog own its signals."""
    configure_logging(log_level)
    watchdog = Watchdog(name, stop_within_s)
    watchdog.install()
    return watchdog


@dataclass(frozen=True)
class RestartPolicy:
    """Capped exponential back-off; a child that ran ``stable_after_s`` without dying starts the count again."""

    first_delay_s: float = 1.0
    max_delay_s: float = 10.0
    stable_after_s: float = 60.0

    def delay(self, failures_in_a_row: int) -> float:
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** max(failures_in_a_row - 1, 0)))

    def failures_after(self, failures_in_a_row: int, ran_for_s: float) -> int:
        """The count of consecutive failures once a child that ran ``ran_for_s`` has died."""
        return 1 if ran_for_s >= self.stable_after_s else failures_in_a_row + 1

    @staticmethod
    def restarts(exit_code: int) -> bool:
        return exit_code not in NEVER_RESTART


class Watchdog:
    """Stop requests and call deadlines enforced from a thread of its own.

    ``stopping`` is set by SIGTERM/SIGINT even while the main thread is blocked in C; if the process has not ended
    ``stop_within_s`` later, the watchdog ends it (exit 143). A ``bounded`` block that runs past its bound ends the
    process with exit 75 and says which call overran.
    """

    def __init__(self, name: str, stop_within_s: float = 10.0) -> None:
        self.name = name
        self.stop_within_s = stop_within_s
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[str, float, float]] = {}  # token -> (what, started, deadline)
        self._next_token = 0
        self._stop_deadline: float | None = None
        self._receive: socket.socket | None = None

    def install(self) -> None:
        """Take over SIGTERM and SIGINT and start the watching thread (call from the main thread)."""
        receive, send = socket.socketpair()
        send.setblocking(False)
        receive.setblocking(False)
        self._receive = receive
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        # The C-level handler writes the signal number here at once, whatever the main thread is doing.
        signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        self._send = send  # kept open for the life of the process
        threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True).start()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.request_stop(signal.Signals(signum).name)

    def request_stop(self, why: str) -> None:
        with self._lock:
            if self._stop_deadline is None:
                log.info("%s: %s received; stopping (at most %.0fs)", self.name, why, self.stop_within_s)
                self._stop_deadline = time.monotonic() + self.stop_within_s
        self.stopping.set()

    @contextmanager
    def bounded(self, what: str, seconds: float) -> Iterator[None]:
        """The block must finish within ``seconds``, or the process ends (exit 75) naming ``what``."""
        with self._lock:
            token = self._next_token
            self._next_token += 1
            now = time.monotonic()
            self._calls[token] = (what, now, now + seconds)
        try:
            yield
        finally:
            with self._lock:
                del self._calls[token]

    def _watch(self) -> None:
        assert self._receive is not None
        while True:
            readable, _, _ = select.select([self._receive], [], [], 0.25)
            if readable:
                for number in self._receive.recv(64):
                    if number in {int(s) for s in STOP_SIGNALS}:
                        self.request_stop(signal.Signals(number).name)
            self._enforce(time.monotonic())

    def _enforce(self, now: float) -> None:
        with self._lock:
            overrun = [(what, now - started) for what, started, deadline in self._calls.values() if now > deadline]
            stop_overran = self._stop_deadline is not None and now > self._stop_deadline
        if overrun:
            what, waited = overrun[0]
            self._end(
                EXIT_STUCK,
                f"{self.name}: stuck for {waited:.0f}s {what}; exiting so that it restarts from its last commit "
                "(nothing is lost: uncommitted work is redone)",
            )
        if stop_overran:
            self._end(EXIT_STOP_OVERRAN, f"{self.name}: did not stop within {self.stop_within_s:.0f}s; ending it")

    @staticmethod
    def _end(code: int, message: str) -> None:
        log.critical(message)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(code)
