"""Kafka brokers of a test's own (state directory and ports), started the way a user starts one, for tests that
must control a broker's life: a first run on a broker that never ran, or faults (kill -9, SIGSTOP) that would
break every other test if done to the shared one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from tests.conftest import REPO
from tests.services import eventually
from tidemark import stack


def free_port_pair() -> int:
    """A free port whose successor is free too (the broker's controller listens on port + 1), below the ephemeral
    range: a port the system handed out could go to any client's next connection before the broker binds it."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for port in random.Random().sample(range(20_000, min(low, 32_768) - 1), 200):
        if stack.port_free("127.0.0.1", port) and stack.port_free("127.0.0.1", port + 1):
            return port
    raise RuntimeError("no two consecutive free ports on loopback")


def start_broker(settings: Settings) -> None:
    """`tidemark stack up --service kafka`, as a user types it; returns once the broker coordinates groups."""
    up = subprocess.run(
        [sys.executable, "-m", "tidemark.cli", "stack", "up", "--service", "kafka"],
        env=settings.environment(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert up.returncode == 0, up.stdout + up.stderr


@contextmanager
def own_broker(settings: Settings, state_dir: Path) -> Iterator[Settings]:
    """``settings`` pointed at a broker of its own (state directory and ports), stopped at the end."""
    own = settings.changed(kafka__bootstrap=f"127.0.0.1:{free_port_pair()}", state_dir=state_dir)
    try:
        start_broker(own)
        yield own
    finally:
        stack.down(own)


def broker_pid(settings: Settings) -> int:
    pid = stack.service_pid(settings, "kafka")
    assert pid is not None, f"no broker runs for state dir {settings.state_dir}"
    return pid


def kill_broker(settings: Settings) -> None:
    """kill -9, and wait until the process is gone (its port free again)."""
    os.kill(broker_pid(settings), signal.SIGKILL)
    eventually(lambda: stack.service_pid(settings, "kafka") is None, timeout=60, what="the broker gone")


@contextmanager
def broker_paused(settings: Settings) -> Iterator[None]:
    """SIGSTOP for the block: connections stay open and nothing answers, as with a hung host."""
    pid = broker_pid(settings)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
