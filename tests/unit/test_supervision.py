"""The watchdog ends a process that is stuck or does not stop, whatever its main thread is blocked in; the restart
policy backs off and never restarts a fenced runner."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from core.kafka import KafkaNotReady, ReliableProducer
from core.supervision import EXIT_FENCED, EXIT_STOP_OVERRAN, EXIT_STUCK, RestartPolicy

# A process whose main thread blocks in os.read on a pipe nobody writes: PEP 475 retries the read after each
# signal handler, so only a thread that does not need the main thread can end it.
BLOCKED = """
import os, sys
from core.supervision import Watchdog, configure_logging
configure_logging("INFO")
watchdog = Watchdog("test process", stop_within_s={stop_within_s})
watchdog.install()
read_end, _write_end = os.pipe()
print("ready", flush=True)
{body}
"""


def _start(body: str, stop_within_s: float = 1.0) -> subprocess.Popen[str]:
    script = BLOCKED.format(stop_within_s=stop_within_s, body=textwrap.dedent(body))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"  # the watchdog is installed: the moment the test acts
    return process


def test_a_bounded_call_that_overruns_ends_the_process_with_exit_75_naming_the_call() -> None:
    process = _start("""
        with watchdog.bounded("reading a pipe nobody writes", 0.5):
            os.read(read_end, 1)
    """)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_STUCK
    assert "stuck for" in stderr and "reading a pipe nobody writes" in stderr


def test_sigterm_while_the_main_thread_is_blocked_ends_the_process_once_the_stop_bound_passes() -> None:
    process = _start("os.read(read_end, 1)")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_STOP_OVERRAN
    assert "SIGTERM received" in stderr and "did not stop within 1s" in stderr


def test_sigterm_is_seen_by_a_main_loop_that_is_free_and_the_process_exits_cleanly() -> None:
    process = _start(
        """
        assert watchdog.stopping.wait(60), "the stop request never arrived"
        print("stopping seen", file=sys.stderr, flush=True)
        """,
        stop_within_s=30.0,
    )
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)  # stdout's "ready" line was read already: the rest goes to stderr
    assert process.returncode == 0
    assert "stopping seen" in stderr


def test_a_bounded_block_that_finishes_in_time_changes_nothing() -> None:
    process = _start("""
        with watchdog.bounded("a quick call", 30.0):
            pass
        print("done", file=sys.stderr, flush=True)
    """)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0 and "done" in stderr


@pytest.mark.parametrize(
    ("failures_in_a_row", "delay"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)],
)
def test_restart_delays_double_up_to_the_cap(failures_in_a_row: int, delay: float) -> None:
    assert RestartPolicy(first_delay_s=1.0, max_delay_s=10.0).delay(failures_in_a_row) == delay


@pytest.mark.parametrize(
    ("failures_before", "ran_for_s", "failures_after"),
    [(0, 0.5, 1), (3, 0.5, 4), (3, 59.9, 4), (3, 60.0, 1), (7, 3600.0, 1)],
)
def test_a_child_that_ran_long_enough_starts_the_back_off_again(
    failures_before: int, ran_for_s: float, failures_after: int
) -> None:
    assert RestartPolicy(stable_after_s=60.0).failures_after(failures_before, ran_for_s) == failures_after


@pytest.mark.parametrize(
    ("exit_code", "restarts"),
    [(1, True), (EXIT_STUCK, True), (-9, True), (EXIT_STOP_OVERRAN, True), (EXIT_FENCED, False)],
)
def test_only_a_fenced_child_is_never_restarted(exit_code: int, restarts: bool) -> None:
    assert RestartPolicy.restarts(exit_code) is restarts


def test_a_producer_whose_queue_stays_full_gives_up_with_a_clear_error_instead_of_waiting_for_ever() -> None:
    """No broker answers at this address, so nothing leaves the one-message local queue."""
    producer = ReliableProducer(
        {"bootstrap.servers": "127.0.0.1:9", "queue.buffering.max.messages": 1, "linger.ms": 0, "log_level": 0},
        "publishing test bars",
        full_queue_timeout_s=0.3,
    )
    producer.produce("t", b"first")
    with pytest.raises(KafkaNotReady, match=r"publishing test bars: the local queue stayed full for 0s; Kafka at "):
        producer.produce_many("t", [None], [b"second"])
