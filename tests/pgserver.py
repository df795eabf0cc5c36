"""A real PostgreSQL server for the ledger tests, started in a temporary directory.

Session-scoped: ``initdb`` + ``pg_ctl`` run as an unprivileged user (PostgreSQL refuses
to run as root; under root the server runs as ``nobody``), listening on a free loopback
port with password (SCRAM) authentication, plus a Unix socket in the same directory.
Each test gets a fresh database. Skipped, with the reason, when the server binaries
(PATH, /usr/lib/postgresql/*/bin) or psycopg are not installed.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

import pytest

ADMIN = "stmflash_admin"


def find_bindir() -> str | None:
    on_path = shutil.which("pg_ctl")
    candidates = ([os.path.dirname(on_path)] if on_path else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")
                                                              if x.isdigit()], reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bindir: str
    base: str
    port: int
    password: str
    run_as: tuple[int, int] | None  # (uid, gid) when started by root

    @property
    def data(self) -> str:
        return os.path.join(self.base, "data")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kw = {}
        if self.run_as is not None:
            kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        env = dict(os.environ, HOME=self.base, LC_ALL="C")
        env.pop("PGPASSWORD", None)
        return subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], capture_output=True, text=True,
                              env=env, check=check, timeout=120, **kw)

    def init(self) -> None:
        pwfile = os.path.join(self.base, "pw")
        with open(pwfile, "w") as fh:
            fh.write(self.password + "\n")
        if self.run_as is not None:
            os.chown(pwfile, *self.run_as)
        self._run("initdb", "-D", self.data, "-U", ADMIN, "--pwfile", pwfile, "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        os.unlink(pwfile)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=60")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-o", opts, "-w",
                  "-t", "60", "start")

    def restart(self) -> None:
        # -l again: without it the server would log to (and hold open) our pipe
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-m", "fast", "-w",
                  "-t", "60", "restart")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def url(self, db: str = "postgres", *, password: bool = True) -> str:
        cred = f"{ADMIN}:{self.password}" if password else ADMIN
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str, db: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def new_database(self, template: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name


@pytest.fixture(scope="session")
def pg_server():
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed (pip install 'stmflash[postgres]')")
    base = tempfile.mkdtemp(prefix="stmflash-pg-")
    run_as = None
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        run_as = (nobody.pw_uid, nobody.pw_gid)
        os.chown(base, *run_as)
    os.chmod(base, 0o700)
    server = PgServer(bindir, base, _free_port(), secrets.token_hex(8), run_as)
    try:
        server.init()
        server.start()
    except subprocess.CalledProcessError as exc:
        log = os.path.join(base, "log")
        tail = open(log).read()[-2000:] if os.path.exists(log) else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr}\n{tail}") from None
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the test server, as a postgresql:// URL with its password."""
    return pg_server.url(pg_server.new_database())
