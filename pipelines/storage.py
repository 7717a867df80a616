"""Where Dagster and MLflow keep their records: SQLite files (the default) or one PostgreSQL server.

`VISIONFLOW_STORAGE=postgres` (or `make ui-postgres`) puts Dagster's run, event-log and schedule storage
(dagster-postgres) in database `dagster` and MLflow's backend store in database `mlflow` of the same server;
MLflow's artifacts stay in a folder (`mlartifacts/`, or $VISIONFLOW_MLFLOW_ARTIFACTS: any MLflow artifact
URI). The server is $VISIONFLOW_POSTGRES_URL (postgresql://user:password@host:port, your team's) or, without
it, a local one this module runs from Debian's postgresql in the project folder `.postgres/`: initdb as a
non-root user, a generated password, listening on 127.0.0.1 only, its unix socket in the folder. It keeps
running after the command that started it; `python -m pipelines.storage stop` stops it.

SQLite stores serve one run at a time: runs launched at the same time may find MLflow's database locked.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lightning_modules import tracking
from lightning_modules.errors import ConfigError, VisionflowError

STORAGE_ENV = "VISIONFLOW_STORAGE"
URL_ENV = "VISIONFLOW_POSTGRES_URL"
KINDS = ("sqlite", "postgres")
DATABASES = ("dagster", "mlflow")
# The assets' pools (tests/pipelines/test_postgres.py checks the list against the definitions).
POOLS = ("train", "dvc")
# Pools of size 1: two training steps never share the machine's cores or GPU (pool "train").
BASE_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
MARKER = "# written by visionflow (pipelines/storage.py): rewritten on each start, edits are lost\n"
INSTALL_HINT = "`make test` installs Debian's postgresql when missing (or: apt-get install postgresql)"


class PostgresError(VisionflowError):
    """The PostgreSQL server could not be found, set up, started or reached; the message says what to do."""


def storage_kind(kind: str | None = None) -> str:
    kind = kind or os.environ.get(STORAGE_ENV) or "sqlite"
    if kind not in KINDS:
        raise ConfigError(f"{STORAGE_ENV}={kind!r}: expected 'sqlite' (the default) or 'postgres'")
    return kind


def dagster_yaml(kind: str, postgres_url: str | None = None) -> str:
    """The instance's dagster.yaml: SQLite (Dagster's default storage) or PostgreSQL at `postgres_url`."""
    if kind == "sqlite":
        return BASE_YAML
    if not postgres_url:
        raise ConfigError("the postgres storage needs the URL of its `dagster` database")
    return f'{MARKER}{BASE_YAML}storage:\n  postgres:\n    postgres_url: "{postgres_url}"\n'


def database_url(server_url: str, database: str, driver: str = "+psycopg2") -> str:
    """`server_url` (postgresql://user:password@host:port[/anything][?query]) with its database set, as a
    SQLAlchemy URL naming psycopg2 (SQLAlchemy 2.1's plain postgresql:// means psycopg 3, which we lack);
    driver="" gives the libpq form."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ConfigError(f"{URL_ENV}={_safe(server_url)!r}: expected postgresql://user:password@host:port")
    return urlunsplit((f"postgresql{driver}", parts.netloc, f"/{database}", parts.query, ""))


def _bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version, reverse=True)), None
    )
    if not found:
        raise PostgresError(f"PostgreSQL's {name} is not installed: {INSTALL_HINT}")
    return found


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    """A PostgreSQL server of our own in `folder`: data/, server.log, password, port and the unix socket."""

    folder: Path
    user: str = "visionflow"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def port(self) -> int:
        return int((self.folder / "port").read_text())

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    def server_url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def _as_owner(self) -> list[str]:
        """initdb and pg_ctl refuse root: as root, run them as Debian's `postgres` user (it owns the folder)."""
        if os.geteuid() != 0:
            return []
        try:
            import pwd  # lazy: Unix only, and only root needs it

            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError(f"initdb refuses root and there is no `postgres` user: {INSTALL_HINT}") from None
        return ["runuser", "-u", "postgres", "--"]

    def _run(self, cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._as_owner(), *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text()[-1500:] if self.log.is_file() else ""
            raise PostgresError(f"{what} failed in {self.folder}:\n{(done.stderr or done.stdout).strip()}\n{log}")
        return done

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self, port: int | None = None) -> None:
        """initdb once (a later call reuses the folder): a generated password, 127.0.0.1 only."""
        if self.initialized():
            return
        initdb = _bin("initdb")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / ".gitignore").write_text("*\n")  # nothing here belongs in git
        (self.folder / "port").write_text(str(port or _free_port()))
        pw = self.folder / "password"
        pw.write_text(secrets.token_urlsafe(24))
        pw.chmod(0o600)
        owner = self._as_owner()
        if owner:
            shutil.chown(self.folder, "postgres", "postgres")
            for f in (pw, self.folder / "port"):
                shutil.chown(f, "postgres", "postgres")
            probe = subprocess.run([*owner, "test", "-w", str(self.folder)], capture_output=True)
            if probe.returncode != 0:
                raise PostgresError(f"the `postgres` user cannot reach {self.folder}: allow it in (chmod o+x)")
        self._run(
            [initdb, "-D", str(self.data), "-U", self.user, "--pwfile", str(pw), "--auth=scram-sha-256", "-E", "UTF8"],
            "initdb",
        )
        # The socket path must stay under the kernel's 107 bytes; a deeper folder gets TCP on 127.0.0.1 only.
        sockets = str(self.folder) if len(str(self.folder)) < 80 else ""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# visionflow: loopback only\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{sockets}'\nmax_connections = 200\n"
            )

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        done = subprocess.run(
            [*self._as_owner(), _bin("pg_ctl"), "status", "-D", str(self.data)], capture_output=True, text=True
        )
        return done.returncode == 0

    def start(self) -> bool:
        """Initialise if needed and start; True if this call started it (False: it was already running)."""
        self.init()
        if self.is_running():
            return False
        self._run(
            [_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log)], "pg_ctl start"
        )
        return True

    def stop(self) -> None:
        if self.is_running():
            self._run([_bin("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data)], "pg_ctl stop")


def local_server(root: Path) -> LocalPostgres:
    return LocalPostgres(root / ".postgres")


def ensure_databases(server_url: str) -> None:
    """Create the `dagster` and `mlflow` databases when missing, then MLflow's schema (once, before any run:
    processes that each migrate a fresh schema race)."""
    import psycopg2  # lazy: the [postgres] extra; SQLite users never load it

    try:
        conn = psycopg2.connect(database_url(server_url, "postgres", driver=""), connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise PostgresError(f"cannot connect to PostgreSQL at {_safe(server_url)}: {str(exc).strip()}") from None
    conn.autocommit = True  # CREATE DATABASE refuses a transaction
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    try:
                        cur.execute(f'CREATE DATABASE "{name}"')
                    except psycopg2.errors.InsufficientPrivilege:
                        raise PostgresError(
                            f"database {name!r} is missing on {_safe(server_url)} and this user may not create "
                            f"it: ask for databases {' and '.join(DATABASES)}"
                        ) from None
                    except psycopg2.errors.DuplicateDatabase:
                        pass  # another process created it meanwhile
    finally:
        conn.close()
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import

    MlflowClient(database_url(server_url, "mlflow")).search_experiments(max_results=1)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{parts.username}@{host}" if parts.username else host, parts.path, "", ""))


@dataclass(frozen=True)
class Storage:
    kind: str
    dagster_home: Path
    mlflow_uri: str


def configure(root: Path, kind: str | None = None) -> Storage:
    """Choose the storage for this process and the ones it starts (daemon, webserver, runs, training ranks):
    sets DAGSTER_HOME (writing its dagster.yaml) and, for postgres, MLFLOW_TRACKING_URI."""
    kind = storage_kind(kind)
    if kind == "sqlite":
        home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster_home")))
        _write_yaml(home, BASE_YAML, kind)
        init_pools(home)
        return Storage(kind, home, tracking.default_tracking_uri())
    server = os.environ.get(URL_ENV)
    if not server:
        local = local_server(root)
        if local.start():
            print(
                f"PostgreSQL started in {local.folder} (127.0.0.1:{local.port}); stop: python -m pipelines.storage stop"
            )
        server = local.server_url()
    ensure_databases(server)
    # A Dagster home of its own: the SQLite one (.dagster_home) keeps its runs for when you switch back.
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster_home" / "postgres")))
    _write_yaml(home, dagster_yaml(kind, database_url(server, "dagster")), kind)
    init_pools(home)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("postgresql"):  # yours wins when it is a PostgreSQL store too
        uri = os.environ["MLFLOW_TRACKING_URI"] = database_url(server, "mlflow")
    os.environ.setdefault(tracking.ARTIFACTS_ENV, str(root / "mlartifacts"))
    return Storage(kind, home, uri)


def init_pools(home: Path) -> None:
    """Create the instance's schema and its pools' limit rows now, once: on a fresh instance two runs launched at
    the same time both insert pool "train"'s row and one run fails at its start (a UniqueViolation on
    concurrency_limits, seen on PostgreSQL)."""
    import dagster as dg  # lazy: ~1 s; the command line's stop/status need no Dagster

    with dg.DagsterInstance.from_config(str(home)) as instance:
        existing = instance.event_log_storage.get_concurrency_keys()
        # Only the missing ones: on PostgreSQL, Dagster's initializer fails on a pool that exists (its insert
        # aborts the transaction, then its update runs in the aborted transaction).
        for pool in set(POOLS) - existing:
            instance.event_log_storage.initialize_concurrency_limit_to_default(pool)


def _write_yaml(home: Path, text: str, kind: str) -> None:
    """Write dagster.yaml unless the user wrote their own: ours (the marker, or the old SQLite text) is rewritten;
    theirs is kept, but a postgres choice with a file that names no postgres storage is an error."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    old = path.read_text() if path.is_file() else None
    if old is None or (old.startswith(MARKER) or old == BASE_YAML) and old != text:
        path.write_text(text)
        if kind == "postgres":
            path.chmod(0o600)  # it holds the server's password
    elif kind == "postgres" and "postgres" not in old:
        raise ConfigError(
            f"{path}: a dagster.yaml of your own with no postgres storage, and {STORAGE_ENV}=postgres: "
            "remove it, or point DAGSTER_HOME at another folder"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.storage", description="the project's local PostgreSQL")
    p.add_argument("command", choices=["start", "stop", "status", "url"])
    a = p.parse_args(argv)
    from lightning_modules.paths import project_root  # lazy: only the command line needs the default root

    local = local_server(project_root())
    try:
        if a.command == "start":
            local.start()
            ensure_databases(local.server_url())
        elif a.command == "stop":
            local.stop()
        elif a.command == "url":
            print(local.server_url())
            return 0
        running = local.is_running()
        print(f"PostgreSQL in {local.folder}: {'running on 127.0.0.1:' + str(local.port) if running else 'stopped'}")
        return 0 if running or a.command == "stop" else 1
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
