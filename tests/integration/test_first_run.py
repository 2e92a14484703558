"""A new user's first run: a broker that has never run, `tidemark stack up`, then at once the demo, and the
commands the demo suggests typed exactly as printed.

A brand-new broker has no ``__consumer_offsets`` until the first group request creates it, and answers
NOT_COORDINATOR meanwhile; the demo's first step deletes consumer groups, which used to die on that answer.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from core.settings import Settings
from tests.conftest import REPO
from tests.integration.brokers import own_broker

pytestmark = pytest.mark.integration

# Enough minutes of US trading for correlation snapshots (60-bar window, every 15 minutes) and SPY bars.
DEMO_ARGS = ("--symbols", "100", "--hours", "2", "--start", "2025-03-03T14:30:00+00:00")


def _tidemark(settings: Settings, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidemark.cli", *args],
        env=settings.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def fresh_broker(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Nothing but the demo talks to it: its first group request is the demo's."""
    with own_broker(services, tmp_path_factory.mktemp("first-run")) as settings:
        yield settings


@pytest.fixture(scope="module")
def first_demo(fresh_broker: Settings) -> subprocess.CompletedProcess[str]:
    """Each of the demo's waits gives up after ``--timeout`` with the step's name, well before this test does; and
    whatever happens, a failure shows the demo's output and the end of every process log it started."""
    argv = ["demo", *DEMO_ARGS, "--timeout", "420"]
    try:
        done = _tidemark(fresh_broker, *argv, timeout=900)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        done = subprocess.CompletedProcess(argv, -9, output, f"timed out after {exc.timeout:.0f}s")
    if done.returncode != 0:
        done.stderr += "".join(
            f"\n--- {log.name} (end) ---\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted((fresh_broker.state_dir / "logs").glob("demo-*.log"))
        )
    return done


def test_the_demo_runs_first_time_on_a_broker_that_never_ran(
    fresh_broker: Settings, first_demo: subprocess.CompletedProcess[str]
) -> None:
    assert first_demo.returncode == 0, first_demo.stdout[-3000:] + first_demo.stderr
    assert "What the worker found" in first_demo.stdout
    assert (fresh_broker.state_dir / "demo-correlations.png").stat().st_size > 10_000


def _suggested(stdout: str) -> list[str]:
    """The indented command lines the demo ends with."""
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ") and "--context demo" in line]


def test_every_command_the_demo_suggests_shows_the_demos_data(
    fresh_broker: Settings, first_demo: subprocess.CompletedProcess[str]
) -> None:
    assert first_demo.returncode == 0, first_demo.stdout[-3000:] + first_demo.stderr
    commands = _suggested(first_demo.stdout)
    assert len(commands) >= 4, first_demo.stdout[-2000:]
    for command in commands:
        argv = shlex.split(command)
        assert Path(REPO, argv[0]).exists() or argv[0] == "tidemark", command
        # The user's shell: the settings that reach the servers, no context chosen; the command picks it.
        env = {k: v for k, v in fresh_broker.environment().items() if k != "TIDEMARK_CONTEXT"}
        shown = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert shown.returncode == 0, f"{command}: {shown.stderr}"
        assert "nothing yet" not in shown.stdout, f"{command}:\n{shown.stdout}"
        if "bars SPY" in command or "--symbol SPY" in command:
            assert "SPY" in shown.stdout, shown.stdout
        if "--json" in command:
            assert shown.stdout.strip().startswith("[") and len(shown.stdout) > 10, shown.stdout


def test_stack_up_returns_once_the_broker_coordinates_groups(services: Settings, tmp_path: Path) -> None:
    """No retry here: the first group request right after `stack up` must be served."""
    with own_broker(services, tmp_path) as settings:
        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
        described = admin.describe_consumer_groups(["first-request"])["first-request"].result(timeout=10)
        assert described.group_id == "first-request"
