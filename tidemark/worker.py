"""``tidemark worker``: the analytics runner and the projection sink as child processes, kept running.

Supervision lives here rather than in systemd or Kubernetes so that a worker started by hand, by the demo or by a
test behaves the same: a child that dies is restarted with capped back-off (core/supervision.py), so the worker
never runs on with a dead half; a child that cannot be restarted usefully (fenced by another instance) stops the
whole worker with its exit code, for the outer supervisor, if any, to report. SIGTERM or Ctrl-C stops both
children (each commits what it holds) and the worker exits 0 when both stopped cleanly. The children die with
the worker, even on kill -9 (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from core.settings import Settings
from core.supervision import EXIT_STOP_OVERRAN, RestartPolicy, Watchdog

log = logging.getLogger("tidemark.worker")

_PR_SET_PDEATHSIG = 1
CHILDREN = {"analytics runner": "streams.runner", "projection sink": "projections.sink"}
POLL_S = 0.2


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to the child when the worker that started it dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


@dataclass
class _Child:
    name: str
    module: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)

    def start(self, settings: Settings) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module], env=settings.environment(), preexec_fn=_die_with_parent
        )
        self.started = time.monotonic()
        self.restart_at = None
        log.info("worker: %s started (pid %d)", self.name, self.process.pid)


def supervise(settings: Settings, policy: RestartPolicy = RestartPolicy()) -> int:
    """Run both children until SIGTERM/SIGINT or a child that must not restart; the worker's exit code."""
    ops = settings.operations
    # The worker's own stop: children get stop_within_s, and the worker a little more to reap them.
    watchdog = Watchdog("worker", ops.stop_within_s + 5.0)
    watchdog.install()
    children = [_Child(name, module) for name, module in CHILDREN.items()]
    for child in children:
        child.start(settings)
    code = 0
    while not watchdog.stopping.is_set():
        now = time.monotonic()
        for child in children:
            assert child.process is not None
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start(settings)
                continue
            exit_code = child.process.poll()
            if exit_code is None:
                continue
            child.exit_codes.append(exit_code)
            if not policy.restarts(exit_code):
                log.error("worker: %s exited %d and must not be restarted; stopping the worker", child.name, exit_code)
                code = exit_code
                watchdog.request_stop(f"{child.name} exit {exit_code}")
                break
            child.failures = policy.failures_after(child.failures, now - child.started)
            delay = policy.delay(child.failures)
            log.warning(
                "worker: %s exited %d after %.0fs; restarting it in %.0fs (failure %d in a row)",
                child.name,
                exit_code,
                now - child.started,
                delay,
                child.failures,
            )
            child.restart_at = now + delay
        watchdog.stopping.wait(POLL_S)
    return _stop_children(children, ops.stop_within_s, code)


def _stop_children(children: list[_Child], within_s: float, code: int) -> int:
    running = [c for c in children if c.process is not None and c.restart_at is None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + within_s + 2.0  # each child enforces its own bound; this is the backstop
    for child in running:
        assert child.process is not None
        try:
            exit_code = child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("worker: %s did not stop; killing it", child.name)
            child.process.kill()
            exit_code = EXIT_STOP_OVERRAN
        if exit_code != 0:
            log.warning("worker: %s stopped with exit code %d", child.name, exit_code)
            code = code or exit_code
    return code
