"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1, a free port, a temp directory.

initdb refuses to run as root, so when the tests run as root the server runs as the unprivileged
`postgres` user (via runuser). Skips with a reason when the server binaries are not installed.
Use the session-scoped `postgres_url` fixture (import it into a test module).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_BIN_DIRS = [Path(os.environ["TTPO_PG_BIN"])] if os.environ.get("TTPO_PG_BIN") else []
PG_BIN_DIRS += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_pg_bin() -> Path | None:
    """The first folder holding initdb and pg_ctl: $TTPO_PG_BIN, /usr/lib/postgresql/*/bin, then $PATH."""
    for folder in PG_BIN_DIRS:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresUnavailable(RuntimeError):
    """No server can be started here (binaries missing, or root without a `postgres` user)."""


def _as_user_prefix() -> tuple[list[str], str]:
    """(command prefix, user name) to run server commands unprivileged."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"], "postgres"
    return ["su", "postgres", "-s", "/bin/sh", "-c"], "postgres"  # pragma: no cover (no runuser)


def _run(prefix: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = prefix + ([" ".join(args)] if prefix[:1] == ["su"] else args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway server; yields the URL of a fresh database; stops it and removes its files at exit.

    PostgresUnavailable when it cannot run here; RuntimeError when initdb / pg_ctl / createdb fail.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql "
                                  "or set TTPO_PG_BIN")
    prefix, user = _as_user_prefix()
    root = Path(tempfile.mkdtemp(prefix="ttpo-pg-"))
    data, sock_dir = root / "data", root / "sock"
    sock_dir.mkdir()
    if user == "postgres":
        shutil.chown(root, "postgres")
        shutil.chown(sock_dir, "postgres")
    root.chmod(0o700)
    port = _free_port()
    result = _run(prefix, [str(bin_dir / "initdb"), "-D", str(data), "-U", "ttpo", "--auth=trust",
                           "--encoding=UTF8", "--no-locale", "--no-sync"])
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {result.stderr or result.stdout}")
    options = f"-h 127.0.0.1 -p {port} -k {sock_dir} -F -c fsync=off -c full_page_writes=off -c max_connections=200"
    result = _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                           "-o", f"'{options}'" if prefix[:1] == ["su"] else options, "-w", "-t", "60", "start"])
    if result.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {result.stderr or result.stdout}\n{log[-2000:]}")
    try:
        result = _run(prefix, [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ttpo", "ttpo"])
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed: {result.stderr}")
        yield f"postgresql+psycopg://ttpo@127.0.0.1:{port}/ttpo"
    finally:
        _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, server stopped and files removed at the end of the session."""
    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)
