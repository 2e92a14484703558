"""What the local stack needs from the machine, checked before anything is installed or started.

Standard library only: ``make`` runs it with the system Python before the virtualenv exists
(``python3 tidemark/preflight.py``), so a missing Java or Maven is reported in a second, naming the package to
install, instead of after a minute of installing and a half-started stack. ``tidemark stack up`` runs the same
checks for the services it is about to start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

MIN_PYTHON = (3, 11)
MIN_JAVA = 17
JARS_STAMP = Path("kafka") / "jars" / ".pom.sha256"  # under the state dir, written once Maven fetched the broker


def is_loopback(host: str) -> bool:
    """Loopback services are the local stack's to run; anything else is an existing deployment."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def postgres_bindir() -> Path | None:
    """The directory holding ``postgres`` and ``initdb``: PATH first, then Debian's newest version."""
    candidates = [Path(p).parent for p in (shutil.which("postgres"),) if p]
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in [*candidates, *versions]:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def _java_major(java: str) -> int | None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=30)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def problems(*, kafka: bool, postgres: bool, redis: bool, jars_ready: bool) -> list[str]:
    """Each missing prerequisite of the services to start locally, as a sentence naming the fix."""
    python: list[str] = []
    found: list[str] = []
    if sys.version_info < MIN_PYTHON:
        python.append(
            f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}: "
            "apt-get install -y python3.11 python3.11-venv"
        )
    if kafka:
        java = shutil.which("java")
        major = _java_major(java) if java else None
        if java is None:
            found.append("Java is missing (Kafka runs on it): apt-get install -y openjdk-17-jre-headless")
        elif major is not None and major < MIN_JAVA:
            found.append(f"Java {major} is too old for Kafka 3.9: apt-get install -y openjdk-17-jre-headless")
        if not jars_ready and shutil.which("mvn") is None:
            found.append(
                "Maven is missing (it fetches the Kafka broker's jars from Maven Central once): "
                "apt-get install -y maven"
            )
    if postgres and postgres_bindir() is None:
        found.append("PostgreSQL server binaries (postgres, initdb) are missing: apt-get install -y postgresql-15")
    if redis and shutil.which("redis-server") is None and not (os.geteuid() == 0 and shutil.which("apt-get")):
        found.append("redis-server is missing (and this user cannot apt-get it): apt-get install -y redis-server")
    if found:
        found.append(
            "or point Tidemark at services you already run: TIDEMARK_KAFKA_BOOTSTRAP, TIDEMARK_POSTGRES_DSN, "
            "TIDEMARK_REDIS_URL (see README, Configuration)"
        )
    return python + found


def _from_environment() -> list[str]:
    """The checks for the services the environment's TIDEMARK_* settings (or their defaults) put on loopback."""
    bootstrap = os.environ.get("TIDEMARK_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    kafka_host = bootstrap.split(",")[0].strip().rpartition(":")[0]
    postgres_host = urlsplit(os.environ.get("TIDEMARK_POSTGRES_DSN", "postgresql://127.0.0.1")).hostname or ""
    redis_host = urlsplit(os.environ.get("TIDEMARK_REDIS_URL", "redis://127.0.0.1")).hostname or ""
    state_dir = Path(os.environ.get("TIDEMARK_STATE_DIR", Path(__file__).resolve().parent.parent / ".tidemark"))
    return problems(
        kafka=is_loopback(kafka_host),
        postgres=is_loopback(postgres_host),
        redis=is_loopback(redis_host),
        jars_ready=(state_dir / JARS_STAMP).is_file(),
    )


if __name__ == "__main__":
    missing = _from_environment()
    for line in missing:
        print(f"tidemark: {line}", file=sys.stderr)
    sys.exit(1 if missing else 0)
