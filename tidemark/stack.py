"""The local service stack without Docker: Kafka (single-node KRaft from Maven Central jars), PostgreSQL and
Redis run as detached processes under ``settings.state_dir``, so tests, the demo and the benchmarks share one
set of real services that outlive any single command. A service configured on a non-loopback host is someone
else's: it is only checked, never started or stopped."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.table import Table

from core.settings import PROJECT_ROOT, Settings, with_database
from tidemark.preflight import JARS_STAMP, is_loopback, postgres_bindir, problems

T = TypeVar("T")

SERVICES: tuple[str, ...] = ("kafka", "postgres", "redis")
START_ORDER: tuple[str, ...] = ("redis", "postgres", "kafka")  # slowest last: the others boot meanwhile
READY_TIMEOUT_S: dict[str, float] = {"kafka": 90.0, "postgres": 60.0, "redis": 30.0}
STOP_SIGNAL: dict[str, signal.Signals] = {
    "kafka": signal.SIGTERM,  # controlled shutdown
    "postgres": signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for every client to leave
    "redis": signal.SIGTERM,
}
STOP_TIMEOUT_S = 30.0
_DAEMONIZE = '"$@" </dev/null 2>&1 & echo $! >&2'  # run argv in the background, report its pid
DEPLOY_KAFKA = PROJECT_ROOT / "deploy" / "kafka"
KAFKA_JVM_OPTS: tuple[str, ...] = (
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
INITDB_OPTIONS: tuple[str, ...] = ("--encoding=UTF8", "--locale=C", "--no-instructions")
POSTGRES_OPTIONS: dict[str, str] = {
    "unix_socket_directories": "",  # TCP only: no dependency on /var/run/postgresql
    "max_connections": "200",
    "timezone": "UTC",
    "shared_buffers": "128MB",
}

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")
_rdkafka_log.addHandler(logging.NullHandler())
_rdkafka_log.propagate = False  # probing a broker that is still starting is expected to fail loudly


class StackError(RuntimeError):
    """A service could not be started or reached; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    managed: bool
    detail: str
    pid: int | None = None


@dataclass(frozen=True)
class _Endpoint:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def local(self) -> bool:
        """Loopback services are ours to run; anything else is an existing deployment to use as is."""
        return is_loopback(self.host)

    @property
    def bind_host(self) -> str:
        return "127.0.0.1" if self.host == "localhost" else self.host


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def jars(self) -> Path:
        return self.kafka / "jars"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def server_properties(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.postgres / "data"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def workdir(self, name: str) -> Path:
        """Each service runs with its own directory as cwd, which is how a pid is recognised as ours."""
        return {"kafka": self.kafka, "postgres": self.pg_data, "redis": self.redis}[name]

    def create(self) -> None:
        for directory in (self.kafka, self.postgres, self.redis, self.logs, self.run):
            directory.mkdir(parents=True, exist_ok=True)


def wait_until(
    predicate: Callable[[], T | bool | None], timeout: float, interval: float = 0.25, what: str = "condition"
) -> T:
    """Bounded poll: returns the first truthy value of ``predicate`` or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def endpoints(settings: Settings) -> dict[str, _Endpoint]:
    """Host and port of each service as the settings name them (the first Kafka bootstrap server)."""
    kafka_host, _, kafka_port = settings.kafka.bootstrap.split(",")[0].strip().rpartition(":")
    pg = urlsplit(settings.postgres_dsn)
    rd = urlsplit(settings.redis_url)
    return {
        "kafka": _Endpoint("kafka", kafka_host.strip("[]") or "127.0.0.1", int(kafka_port)),
        "postgres": _Endpoint("postgres", pg.hostname or "127.0.0.1", pg.port or 5432),
        "redis": _Endpoint("redis", rd.hostname or "127.0.0.1", rd.port or 6379),
    }


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when called inside a running loop (async test fixtures)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


# --- processes -------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # reap our own child so it does not linger as a zombie
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _our_pid(paths: _Paths, name: str) -> int | None:
    """The pid in our pid file, if that process is alive and runs in this state dir's service directory."""
    try:
        pid = int(paths.pidfile(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if cwd == paths.workdir(name).resolve() else None


def service_pid(settings: Settings, name: str) -> int | None:
    """The pid of a service this state dir's stack runs (for operators' and fault-injection tools), else None."""
    return _our_pid(_Paths(settings.state_dir), name)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_holder(port: int) -> str:
    ss = shutil.which("ss")
    if ss is None:
        return "another process"
    out = subprocess.run([ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False)
    users = [part for line in out.stdout.splitlines() for part in line.split() if part.startswith("users:")]
    return users[0] if users else "another process"


def _check_ports(endpoint: _Endpoint, ports: Iterable[int]) -> None:
    for port in ports:
        if not port_free(endpoint.bind_host, port):
            raise StackError(
                f"{endpoint.name}: port {endpoint.bind_host}:{port} is taken by {_port_holder(port)}, which "
                f"this stack did not start; stop it, or use it or another port via the TIDEMARK_* settings"
            )


def _spawn(paths: _Paths, name: str, argv: list[str], **kwargs: Any) -> int:
    """Start a service as an orphan in its own session, so it outlives this process and never lingers as
    our zombie; the intermediate shell reports the service's pid, which goes to the pid file."""
    logfile = paths.log(name)
    with logfile.open("ab") as out:
        out.write(f"\n--- tidemark stack: starting {name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        out.flush()
        launcher = subprocess.run(
            ["/bin/sh", "-c", _DAEMONIZE, "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=paths.workdir(name),
            start_new_session=True,
            check=False,
            **kwargs,
        )
    if launcher.returncode != 0:
        raise StackError(f"could not launch {name}: {launcher.stderr.decode(errors='replace').strip()}")
    pid = int(launcher.stderr.split()[-1])
    paths.pidfile(name).write_text(f"{pid}\n")
    return pid


def _run_tool(argv: list[str], what: str, fix: str, **kwargs: Any) -> str:
    out: subprocess.CompletedProcess[str] = subprocess.run(
        argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, **kwargs
    )
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise StackError(f"{what} failed (exit {out.returncode}); {fix}\n{tail}")
    return out.stdout


def _require(tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"`{tool}` not found on PATH: {fix}")
    return path


# --- Kafka -----------------------------------------------------------------------------------------------


def _pom_digest() -> str:
    return hashlib.sha256((DEPLOY_KAFKA / "pom.xml").read_bytes()).hexdigest()


def _jars_current(paths: _Paths) -> bool:
    stamp = paths.root / JARS_STAMP
    return stamp.is_file() and stamp.read_text().strip() == _pom_digest()


def _ensure_kafka_jars(paths: _Paths) -> None:
    """Resolve the broker's jars once per pom version; Maven's own cache makes a re-copy cheap."""
    if _jars_current(paths):
        return
    pom = DEPLOY_KAFKA / "pom.xml"
    mvn = _require("mvn", "install Maven 3.8+ (apt-get install -y maven), or set TIDEMARK_KAFKA_BOOTSTRAP")
    # a version bump must not leave two brokers on the classpath
    shutil.rmtree(paths.jars, ignore_errors=True)
    copy_to = [f"-DoutputDirectory={paths.jars}", "-DincludeScope=runtime"]
    _run_tool(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", *copy_to],
        "downloading the Kafka jars with Maven",
        "check that Maven Central is reachable",
    )
    (paths.root / JARS_STAMP).write_text(_pom_digest() + "\n")


def _kafka_java(paths: _Paths, java: str, main: str, *args: str) -> list[str]:
    log4j = DEPLOY_KAFKA / "log4j.properties"
    return [
        java,
        f"-Dlog4j.configuration=file:{log4j}",
        f"-Dkafka.logs.dir={paths.logs}",
        "-cp",
        f"{paths.jars}/*",
        main,
        *args,
    ]


def _start_kafka(settings: Settings, paths: _Paths, endpoint: _Endpoint) -> int:
    java = _require("java", "install OpenJDK 17 (apt-get install -y openjdk-17-jre-headless)")
    _ensure_kafka_jars(paths)
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    template = Template((DEPLOY_KAFKA / "server.properties").read_text())
    paths.server_properties.write_text(
        template.substitute(
            host=endpoint.bind_host,
            port=endpoint.port,
            controller_port=endpoint.port + 1,
            data_dir=paths.kafka_data,
        )
    )
    if not (paths.kafka_data / "meta.properties").exists():
        tool = "kafka.tools.StorageTool"
        cluster_id = _run_tool(
            _kafka_java(paths, java, tool, "random-uuid"), "kafka-storage random-uuid", "see the output below"
        )
        format_cmd = _kafka_java(paths, java, tool, "format", "-t", cluster_id.strip().splitlines()[-1])
        _run_tool(
            [*format_cmd, "-c", str(paths.server_properties), "--ignore-formatted"],
            "formatting the Kafka storage",
            f"remove {paths.kafka_data} and retry",
        )
    argv = _kafka_java(paths, java, "kafka.Kafka", str(paths.server_properties))
    return _spawn(paths, "kafka", [argv[0], *KAFKA_JVM_OPTS, *argv[1:]])


def _probe_kafka(bootstrap: str, timeout: float) -> str:
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass  # fail fast while the port is closed instead of waiting out a metadata timeout
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _rdkafka_log}
    admin = AdminClient(config)
    metadata = admin.list_topics(timeout=timeout)
    if not metadata.brokers:
        raise ConnectionError("metadata lists no broker yet")
    return f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s)"


def _await_coordinators(settings: Settings) -> None:
    """A broker answers metadata before it can coordinate groups or transactions: a brand-new one creates
    __consumer_offsets and __transaction_state on their first requests and answers NOT_COORDINATOR or
    COORDINATOR_LOAD_IN_PROGRESS meanwhile. Every command after ``up`` needs groups; producers (idempotent or
    transactional) need the transaction coordinator, and would otherwise print librdkafka's retry warnings."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from core.kafka import until_ready

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "logger": _rdkafka_log})
    probe = "tidemark-stack-probe"
    try:
        # Not list_consumer_group_offsets: confluent-kafka 2.16 crashes (SIGSEGV) on a NOT_COORDINATOR answer to it.
        until_ready(
            lambda: admin.describe_consumer_groups([probe])[probe].result(),
            "waiting for the group coordinator",
            settings.kafka.bootstrap,
            READY_TIMEOUT_S["kafka"],
        )
        transactional = Producer(
            {"bootstrap.servers": settings.kafka.bootstrap, "transactional.id": probe, "logger": _rdkafka_log}
        )
        until_ready(
            lambda: transactional.init_transactions(READY_TIMEOUT_S["kafka"]),
            "waiting for the transaction coordinator",
            settings.kafka.bootstrap,
            READY_TIMEOUT_S["kafka"],
        )
    except Exception as exc:  # KafkaNotReady or a refusal: either way the stack is not usable yet
        raise StackError(f"kafka answers but cannot coordinate consumer groups and transactions: {exc}") from exc


# --- PostgreSQL ------------------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    bindir = postgres_bindir()
    if bindir is None:
        raise StackError(
            "PostgreSQL server binaries (postgres, initdb) not found on PATH or in /usr/lib/postgresql/*/bin: "
            "apt-get install -y postgresql-15, or set TIDEMARK_POSTGRES_DSN to an existing server"
        )
    return bindir


def _pg_account() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then it runs as the `postgres` OS user, else as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root needs a `postgres` OS user to run PostgreSQL: useradd --system postgres"
        ) from None


def _grant_traverse(path: Path, account: pwd.struct_passwd) -> None:
    """Let the postgres user reach its data dir through directories root created with a tight umask."""
    for parent in path.parents:
        mode = parent.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & stat.S_IXOTH:
            log.info("chmod o+x %s so that the postgres user can reach its data directory", parent)
            parent.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)


def _start_postgres(settings: Settings, paths: _Paths, endpoint: _Endpoint) -> int:
    bindir = _pg_bindir()
    account = _pg_account()
    as_user: dict[str, Any] = {}
    if account is not None:
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    if not (paths.pg_data / "PG_VERSION").exists():
        shutil.rmtree(paths.pg_data, ignore_errors=True)  # a half-done initdb cannot be resumed
        paths.pg_data.mkdir(mode=0o700, parents=True)
        if account is not None:
            os.chown(paths.pg_data, account.pw_uid, account.pw_gid)
            _grant_traverse(paths.pg_data, account)
        user = urlsplit(settings.postgres_dsn).username or "tidemark"
        _run_tool(
            [str(bindir / "initdb"), "-D", str(paths.pg_data), "-U", user, "--auth=trust", *INITDB_OPTIONS],
            "initdb",
            f"see the output below; the data dir is {paths.pg_data}",
            cwd=paths.postgres,
            **as_user,
        )
    elif account is not None:
        _grant_traverse(paths.pg_data, account)
    options = {**POSTGRES_OPTIONS, "listen_addresses": endpoint.bind_host, "port": str(endpoint.port)}
    argv = [str(bindir / "postgres"), "-D", str(paths.pg_data)]
    for key, value in options.items():
        argv += ["-c", f"{key}={value}"]
    return _spawn(paths, "postgres", argv, **as_user)


async def _pg_select_one(dsn: str, timeout: float) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        version = await conn.fetchval("select current_setting('server_version')")
        await conn.fetchval("select 1")
    finally:
        await conn.close()
    return f"PostgreSQL {version}"


def _probe_postgres(dsn: str, timeout: float) -> str:
    return _run_sync(_pg_select_one(dsn, timeout))


async def _create_database(dsn: str) -> None:
    import asyncpg

    name = urlsplit(dsn).path.lstrip("/") or "postgres"
    conn = await asyncpg.connect(with_database(dsn, "postgres"), timeout=10)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()


def migrate(settings: Settings) -> list[str]:
    """Apply the projection migrations; also used by the tests' container path so both stacks match."""
    try:
        from projections.migrations import apply_migrations
    except ModuleNotFoundError as exc:
        if exc.name != "projections.migrations":
            raise
        warnings.warn("projections.migrations is missing: database migrations skipped", stacklevel=2)
        return []
    applied: list[str] = _run_sync(apply_migrations(settings.postgres_dsn))
    return applied


# --- Redis -----------------------------------------------------------------------------------------------


def _redis_server(paths: _Paths) -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        raise StackError(
            "`redis-server` not found: install it (apt-get install -y redis-server, as root), "
            "or set TIDEMARK_REDIS_URL to an existing server"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing redis-server with apt-get")
    _run_tool([apt, "update", "-q"], "apt-get update", "check the package sources", env=env)
    _run_tool([apt, "install", "-y", "-q", "redis-server"], "apt-get install redis-server", "see below", env=env)
    return _require("redis-server", "apt-get installed redis-server but it is not on PATH")


def _start_redis(settings: Settings, paths: _Paths, endpoint: _Endpoint) -> int:
    server = _redis_server(paths)
    argv = [server, "--bind", endpoint.bind_host, "--port", str(endpoint.port), "--dir", str(paths.redis)]
    argv += ["--daemonize", "no", "--logfile", "", "--save", "", "--appendonly", "yes"]
    argv += ["--appendfsync", "everysec", "--protected-mode", "yes"]
    return _spawn(paths, "redis", argv)


def _probe_redis(url: str, timeout: float) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    finally:
        client.close()
    return f"Redis {version}"


# --- orchestration ---------------------------------------------------------------------------------------

_STARTERS: dict[str, Callable[[Settings, _Paths, _Endpoint], int]] = {
    "kafka": _start_kafka,
    "postgres": _start_postgres,
    "redis": _start_redis,
}


def _probe(settings: Settings, name: str, timeout: float, *, maintenance_db: bool = False) -> str:
    if name == "kafka":
        return _probe_kafka(settings.kafka.bootstrap, timeout)
    if name == "postgres":
        dsn = with_database(settings.postgres_dsn, "postgres") if maintenance_db else settings.postgres_dsn
        return _probe_postgres(dsn, timeout)
    return _probe_redis(settings.redis_url, timeout)


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    """Serialise up/down on one state dir (parallel test sessions, a CLI call meanwhile)."""
    with (paths.run / "stack.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _await_ready(settings: Settings, paths: _Paths, endpoint: _Endpoint, pid: int | None) -> None:
    name = endpoint.name
    managed = endpoint.local
    timeout = READY_TIMEOUT_S[name] if managed else 30.0
    last_error: list[str] = []

    def answers() -> str | None:
        if pid is not None and not _alive(pid):
            raise StackError(
                f"{name} (pid {pid}) exited while starting; last lines of {paths.log(name)}:\n{_tail(paths.log(name))}"
            )
        try:
            return _probe(settings, name, 2.0, maintenance_db=managed)
        except Exception as exc:  # any failure to answer means "not yet"; the last one is reported
            last_error[:] = [f"{type(exc).__name__}: {exc}"]
            return None

    try:
        wait_until(answers, timeout, 0.25, f"{name} at {endpoint.address}")
    except TimeoutError:
        if not managed:
            raise StackError(
                f"{name} at {endpoint.address} (external, not started by Tidemark) did not answer within "
                f"{timeout:.0f}s: {''.join(last_error)}; start it or fix the TIDEMARK_* setting"
            ) from None
        raise StackError(
            f"{name} did not answer at {endpoint.address} within {timeout:.0f}s ({''.join(last_error)}); "
            f"last lines of {paths.log(name)}:\n{_tail(paths.log(name))}"
        ) from None


def up(settings: Settings, *, services: Iterable[str] = SERVICES) -> None:
    """Start whatever of the local stack is not running yet, wait until everything answers, migrate."""
    wanted = set(services)
    if unknown := wanted - set(SERVICES):
        raise StackError(f"unknown service(s) {sorted(unknown)}; choose from {', '.join(SERVICES)}")
    paths = _Paths(settings.state_dir)
    paths.create()
    eps = endpoints(settings)
    with _locked(paths):
        started: dict[str, int] = {}
        local = [n for n in START_ORDER if n in wanted and eps[n].local]
        for name in local:
            if (pid := _our_pid(paths, name)) is not None:
                log.info("%s already running (pid %d)", name, pid)
                started[name] = pid
        to_start = {name for name in local if name not in started}
        missing = problems(
            kafka="kafka" in to_start,
            postgres="postgres" in to_start,
            redis="redis" in to_start,
            jars_ready=_jars_current(paths),
        )
        if missing:
            raise StackError("this machine lacks what the stack needs:\n  - " + "\n  - ".join(missing))
        for name in (n for n in local if n in to_start):
            ports = [eps[name].port, eps[name].port + 1] if name == "kafka" else [eps[name].port]
            _check_ports(eps[name], ports)
            started[name] = _STARTERS[name](settings, paths, eps[name])
        for name in (n for n in START_ORDER if n in wanted):
            _await_ready(settings, paths, eps[name], started.get(name))
            if name == "kafka":
                _await_coordinators(settings)
            if name == "postgres" and eps[name].local:
                _run_sync(_create_database(settings.postgres_dsn))
    if "postgres" in wanted:
        applied = migrate(settings)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))


def down(settings: Settings) -> None:
    """Stop what `up` started in this state dir: a graceful signal first, SIGKILL after a bound."""
    paths = _Paths(settings.state_dir)
    if not paths.run.is_dir():
        return
    with _locked(paths):
        stopping: dict[str, int] = {}
        for name in SERVICES:
            pid = _our_pid(paths, name)
            if pid is None:
                paths.pidfile(name).unlink(missing_ok=True)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, STOP_SIGNAL[name])
            stopping[name] = pid
        try:
            wait_until(
                lambda: not any(_alive(pid) for pid in stopping.values()),
                STOP_TIMEOUT_S,
                0.2,
                "services to stop",
            )
        except TimeoutError:
            for name, pid in stopping.items():
                if _alive(pid):
                    log.warning("%s (pid %d) ignored the stop signal; killing it", name, pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not any(_alive(pid) for pid in stopping.values()), 10.0, 0.2, "killed services")
        for name in stopping:
            paths.pidfile(name).unlink(missing_ok=True)


def status(settings: Settings) -> list[ServiceStatus]:
    """What answers where, and which of it this state dir runs."""
    paths = _Paths(settings.state_dir)
    result = []
    for name, endpoint in endpoints(settings).items():
        pid = _our_pid(paths, name) if endpoint.local else None
        try:
            detail = _probe(settings, name, 2.0)
            running = True
        except Exception as exc:  # the reason it does not answer is the detail shown
            detail = f"not answering: {type(exc).__name__}: {exc}".strip()
            running = False
        if pid is not None:
            detail = f"pid {pid}; {detail}"
        elif running and endpoint.local:
            detail = f"{detail} (not started by this stack)"
        elif not endpoint.local:
            detail = f"external; {detail}"
        result.append(ServiceStatus(name, endpoint.address, running, pid is not None, detail, pid))
    return result


# --- command line ----------------------------------------------------------------------------------------

stack_app = typer.Typer(
    help="Run Kafka, PostgreSQL and Redis locally without Docker (state in TIDEMARK_STATE_DIR).",
    no_args_is_help=True,
)
_console = Console()


def _print_status(rows: list[ServiceStatus]) -> None:
    table = Table(title="tidemark stack")
    for column in ("service", "address", "state", "managed", "detail"):
        table.add_column(column)
    for row in rows:
        state = "[green]up[/green]" if row.running else "[red]down[/red]"
        table.add_row(row.name, row.address, state, "yes" if row.managed else "no", row.detail)
    _console.print(table)


@stack_app.command("up")
def up_command(
    service: Annotated[list[str] | None, typer.Option("--service", "-s", help="only this service (repeatable)")] = None,
) -> None:
    """Start the stack (idempotent) and apply the database migrations."""
    settings = Settings()
    try:
        up(settings, services=service or SERVICES)
    except StackError as exc:
        _console.print(f"[red]stack up failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _print_status(status(settings))


@stack_app.command("down")
def down_command() -> None:
    """Stop the services this state dir started."""
    down(Settings())
    _console.print("stack stopped")


@stack_app.command("status")
def status_command() -> None:
    """Show each service; exit code 1 when any is down."""
    rows = status(Settings())
    _print_status(rows)
    if not all(row.running for row in rows):
        raise typer.Exit(1)


if __name__ == "__main__":
    stack_app()
