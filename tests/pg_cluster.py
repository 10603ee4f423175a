"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp folder, ``pg_ctl start`` on
127.0.0.1 (a free port, scram password auth) and on a unix socket inside the folder, ``pg_ctl
stop -m fast`` and the folder removed at the end.

The server binaries are found where PostgreSQL installs them, not on PATH (Debian puts only the
client tools there): ``MLFLOW_RAG_PG_BINDIR``, then ``pg_config --bindir``, then the newest
``/usr/lib/postgresql/*/bin``, then PATH. ``initdb`` and ``postgres`` refuse to run as root, so
under root they run as the ``postgres`` OS user (``nobody`` when there is none), which owns the
folder. The cluster trades durability for speed where a test cannot tell the difference:
``fsync`` is off (a crash of the OS, never of a server process, could lose data), while
``synchronous_commit`` stays on, so a commit a test saw survives ``pg_ctl stop -m immediate``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

BINDIR_ENV = "MLFLOW_RAG_PG_BINDIR"
SUPERUSER = "rag_admin"
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",  # pools of several writer processes and servers at once
    "shared_buffers": "32MB",  # the machine is shared; tests hold small tables
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "log_connections": "off",
    "timezone": "'UTC'",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())

    def version(path: str) -> tuple[int, ...]:
        number = Path(path).parent.name
        return tuple(int(p) for p in number.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) found via $MLFLOW_RAG_PG_BINDIR, "
        "pg_config --bindir, /usr/lib/postgresql/*/bin or PATH; install them: "
        "apt-get install -y postgresql")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_user() -> pwd.struct_passwd | None:
    """The OS user the server binaries run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PgCluster:
    """A running cluster. ``dsn()`` connects over TCP with the password, ``socket_dsn()``
    over the unix socket (trust: the socket's folder is private to the server's user and root);
    ``new_database()`` makes an empty database for one test."""

    root: Path
    bindir: Path
    port: int
    password: str
    user: str = SUPERUSER
    host: str = "127.0.0.1"
    start_seconds: float = 0.0  # initdb + start, for the record
    _os_user: pwd.struct_passwd | None = field(default=None, repr=False)
    _counter: int = field(default=0, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", *, user: str | None = None,
            password: str | None = None) -> str:
        """``postgresql://USER:PASSWORD@127.0.0.1:PORT/DBNAME`` (password auth, scram)."""
        user = user or self.user
        secret = self.password if password is None and user == self.user else password
        auth = quote(user, safe="") + (f":{quote(secret, safe='')}" if secret else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def socket_dsn(self, dbname: str = "postgres", *, user: str | None = None) -> str:
        """A DSN over the unix socket: no password."""
        return (f"postgresql://{quote(user or self.user, safe='')}@/{quote(dbname, safe='')}"
                f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}")

    def sqlalchemy_uri(self, dbname: str = "postgres") -> str:
        """The TCP DSN for SQLAlchemy's psycopg 3 dialect (MLflow's ``--backend-store-uri``)."""
        return "postgresql+psycopg" + self.dsn(dbname).removeprefix("postgresql")

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection (autocommit unless told otherwise) over the socket."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.socket_dsn(dbname), **kwargs)

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database (a copy of template1); returns its name."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        with self.connect() as conn:
            # FILE_COPY (PostgreSQL 15+) copies template1's files under a checkpoint, cheap
            # with fsync off: 17 ms a database here against 95 ms for the WAL_LOG default.
            version = conn.execute("SHOW server_version_num").fetchone()[0]
            strategy = " STRATEGY FILE_COPY" if int(version) >= 150000 else ""
            conn.execute(f'CREATE DATABASE "{name}"{strategy}')
        return name

    # -- server control (a test that stops or restarts the server should use its own cluster)

    def pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args],
                         timeout=timeout)

    def start(self) -> None:
        result = self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path),
                             "-o", f"-p {self.port} -k {self.socket_dir}")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({result.returncode}): {result.stdout}"
                               f"{result.stderr}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def running(self) -> bool:
        return self.pg_ctl("status").returncode == 0

    def server_log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self._os_user is not None:
            extra = {"user": self._os_user.pw_uid, "group": self._os_user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", TZ="UTC")
        # The cwd is the cluster's folder: the server's user may not enter the caller's.
        # stdin/stdout must not be pipes the daemonised server inherits.
        return subprocess.run(args, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False, **extra)


def _init(cluster: PgCluster) -> None:
    pwfile = cluster.root / "pwfile"
    pwfile.write_text(cluster.password + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    if cluster._os_user is not None:
        os.chown(pwfile, cluster._os_user.pw_uid, cluster._os_user.pw_gid)
    try:
        result = cluster._run(
            [str(cluster.bindir / "initdb"), "-D", str(cluster.data_dir), "-U", cluster.user,
             f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            timeout=300)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    settings = "".join(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
    with open(cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write("\n# tests/pg_cluster.py\n" + settings)


FOLDER_PREFIX = "mlflow-rag-pg-"
OWNER_FILE = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def base_dir() -> Path:
    """Where cluster folders go: the temp folder, unless (under root) the server's user could
    not reach it (a private TMPDIR): then /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() == 0 and not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        return Path("/tmp")
    return base


def is_server_of(pid: int, root: Path) -> bool:
    """Whether ``pid`` is a live server of the cluster in ``root`` (a zombie has no cmdline)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(root / "data") in cmdline


def reap_orphans() -> list[Path]:
    """Stop and remove the clusters of test sessions that died without their teardown (a
    killed pytest leaves its server running): folders of ours whose owner process is gone.
    Returns the folders removed."""
    removed = []
    for root in base_dir().glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            server = int((root / "data" / "postmaster.pid").read_text().split()[0])
            # The pid file may be stale and the number reused: signal only that cluster's server.
            if is_server_of(server, root):
                os.kill(server, signal.SIGQUIT)  # immediate shutdown: the data is thrown away
                deadline = time.monotonic() + 10
                while is_server_of(server, root) and time.monotonic() < deadline:
                    time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            removed.append(root)
    return removed


@contextlib.contextmanager
def running_cluster(*, attempts: int = 3) -> Iterator[PgCluster]:
    """Start a cluster in a new temp folder; stop it and remove the folder on exit."""
    bindir = find_bindir()
    os_user = server_user()
    # Not pytest's tmp_path: its parents are private to the caller, and a unix socket path
    # must stay under 108 bytes.
    reap_orphans()
    root = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=base_dir()))
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
    started = time.perf_counter()
    cluster = PgCluster(root=root, bindir=bindir, port=0, password=secrets.token_urlsafe(18),
                        _os_user=os_user)
    try:
        cluster.socket_dir.mkdir(mode=0o700)
        if os_user is not None:
            for path in (root, cluster.socket_dir):
                os.chown(path, os_user.pw_uid, os_user.pw_gid)
        _init(cluster)
        for attempt in range(attempts):
            cluster.port = free_port()  # another process may take it first: then try another
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        cluster.start_seconds = time.perf_counter() - started
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            if cluster.port and cluster.running():
                cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
