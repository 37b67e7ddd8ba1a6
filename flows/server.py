"""One local Prefect API server shared by every prefpipe process using the same PREFECT_HOME.

Without PREFECT_API_URL each process running a flow would start its own ephemeral API server;
several builds at once then time out starting theirs (all on one SQLite file). `ensure_server()`
instead points Prefect at one server, started on demand, in PREFECT_HOME/prefpipe-server/:

- `start.lock` (a file lock) lets exactly one process start the server;
- `state.json` records its URL, port and pid; a server that does not answer GET /api/health is
  replaced (one that answers slowly is waited for, up to the startup timeout);
- every process using the server holds a shared `flock` on `leases` until it exits; the server
  process (`python -m flows.server PORT IDLE_S`: uvicorn running Prefect's app, whose database is
  Prefect's default SQLite file under PREFECT_HOME) stops once it could take that lock exclusively
  for IDLE_S seconds in a row, i.e. when no process has used it for that long;
- `server.log` holds the server's output.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

IDLE_S = 300.0  # default idle time before the server stops ($PREFPIPE_SERVER_IDLE_S)
# What Prefect's own ephemeral server runs with: no UI, only the services in-process runs need.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

_lease = None  # this process's shared lock on the leases file, held until the process exits


class ServerError(RuntimeError):
    """The shared local Prefect server could not be started or reached; the message says why."""


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def server_dir() -> Path:
    return prefect_home() / "prefpipe-server"


def ensure_server(timeout_s: float) -> str | None:
    """Point this process's Prefect client at the shared local server, starting one if none is
    healthy; return its API URL (also set as PREFECT_API_URL, which child processes inherit).

    Does nothing (returns None) when PREFECT_API_URL is set (in the environment or the active
    Prefect profile), or when Prefect is already imported (it has read its settings: too late to
    change its API). `timeout_s` bounds the server's start.
    """
    global _lease
    if _configured_api_url() or "prefect" in sys.modules:
        return None
    directory = server_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if _lease is None:
        _lease = open(directory / "leases", "a")
        fcntl.flock(_lease, fcntl.LOCK_SH)  # waits while an idle server is shutting down
    url = _usable(_read_state(directory), 0)
    if url is None:
        lock = FileLock(str(directory / "start.lock"))
        try:
            with lock.acquire(timeout=2 * timeout_s):
                url = _usable(_read_state(directory), timeout_s) or _start(directory, timeout_s)
        except Timeout:
            raise ServerError(f"another process has been starting the local Prefect server for "
                              f"{2 * timeout_s:.0f} s ({lock.lock_file} is held): wait for it and rerun, "
                              f"or set PREFECT_API_URL to a running server") from None
    os.environ["PREFECT_API_URL"] = url
    return url


def _configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active profile of Prefect's profiles file."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    try:
        profiles = tomllib.loads(Path(os.environ.get("PREFECT_PROFILES_PATH")
                                      or prefect_home() / "profiles.toml").expanduser().read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")


def _read_state(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _health(url: str) -> bool | None:
    """True: healthy; False: nothing listens there; None: no timely or good answer (busy?)."""
    try:
        return httpx.get(f"{url}/health", timeout=15).status_code == 200 or None
    except httpx.ConnectError:
        return False
    except httpx.HTTPError:
        return None


def _usable(state: dict | None, wait_s: float) -> str | None:
    """The URL of the recorded server if it is healthy (waiting up to `wait_s` while it is busy);
    else None, after stopping it when waiting was allowed (it is then replaced)."""
    if not state:
        return None
    deadline = time.monotonic() + wait_s
    while (healthy := _health(state["url"])) is None and time.monotonic() < deadline:
        time.sleep(1)
    if healthy:
        return state["url"]
    if wait_s:
        _stop(state["pid"])
    return None


def _stop(pid: int) -> None:
    """Terminate a stale server process (only if that pid still runs `flows.server`)."""
    try:
        if b"flows.server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a server about to start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(directory: Path, timeout_s: float) -> str:
    """Start a detached server process and wait until it is healthy; record it in state.json."""
    log = directory / "server.log"
    idle_s = os.environ.get("PREFPIPE_SERVER_IDLE_S", str(IDLE_S))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flows.server", str(port), idle_s],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=Path(__file__).resolve().parents[1],
                                    env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
                                    | SERVER_ENV)
        while proc.poll() is None and time.monotonic() < deadline:
            if _health(url):
                state = directory / f".state-{os.getpid()}.json"
                state.write_text(json.dumps({"url": url, "port": port, "pid": proc.pid}))
                os.replace(state, directory / "state.json")
                return url
            time.sleep(0.5)
        if proc.poll() is None:  # alive but not healthy in time
            proc.kill()
    raise ServerError(f"the local Prefect server did not start within {timeout_s:.0f} s (its log: {log}): "
                      f"rerun, or set PREFECT_API_URL to a running server")


def serve(port: int, idle_s: float) -> None:
    """Run Prefect's API on 127.0.0.1:PORT until no process has held a lease for `idle_s` s."""
    import uvicorn

    directory = server_dir()
    server = uvicorn.Server(uvicorn.Config("prefect.server.api.server:create_app", factory=True,
                                           host="127.0.0.1", port=port, log_level="error", lifespan="on"))

    def watch() -> None:
        leases = open(directory / "leases", "a")  # kept open: an exclusive lock lasts until exit
        idle_since = time.monotonic()
        while not server.should_exit:
            time.sleep(1)
            try:
                fcntl.flock(leases, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= idle_s:
                _forget(directory)  # still holding the lock: no process can start using it now
                server.should_exit = True
                return
            fcntl.flock(leases, fcntl.LOCK_UN)

    threading.Thread(target=watch, daemon=True).start()
    # uvicorn re-raises a SIGTERM it handled once it has shut down: exit normally then (the
    # `finally` runs) instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        _forget(directory)


def _forget(directory: Path) -> None:
    """Remove state.json if it records this process."""
    state = _read_state(directory)
    if state and state.get("pid") == os.getpid():
        (directory / "state.json").unlink(missing_ok=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))
