"""What the benchmark scripts share: Daphne as a subprocess, fresh databases, manage.py, tokens, figures.

The scripts are run as `python benchmarks/NAME.py`, which puts this folder first on sys.path: they import
this module as `_common`. It imports only the standard library at the top, so that importing it needs
neither Django's settings nor the repository root on sys.path; psycopg is imported where it is used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432"
PROJECT_APP = "eventbus_project.asgi:application"
# A child process prints its figures as one JSON line after this prefix; whatever else it prints passes.
RESULT_PREFIX = "BENCH-RESULT "

Log = Callable[[str], None]


def positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)  # cheap on the already sorted lists most callers pass
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def result_of(stdout: str) -> dict[str, Any] | None:
    """The figures a child printed after RESULT_PREFIX (its last such line), or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    return None


# Processes.


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def manage(env: dict[str, str] | None, *args: str, timeout_s: float = 120) -> str:
    """`manage.py ARGS` from the repository root (env None: this process's); its stdout, or RuntimeError."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def api_token(env: dict[str, str] | None, username: str, group: str, timeout_s: float = 120) -> str:
    """A new API token of `username` in `group` (`manage.py create_api_token`, which creates both)."""
    output = manage(env, "create_api_token", username, "--group", group, timeout_s=timeout_s)
    return output.strip().splitlines()[-1].strip()  # the token is the last line printed


def tail(path: str, size: int = 2000) -> str:
    """The last `size` bytes of a file, as text."""
    with open(path, "rb") as handle:
        data = handle.read()
    return data[-size:].decode(errors="replace")


def proc_status(pid: int, key: str) -> int:
    """A figure of /proc/PID/status (VmRSS and VmHWM in kB)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` so far (/proc/PID/stat)."""
    # The command name, in parentheses, may hold spaces: the fields are counted after its ")".
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# Daphne.


def healthz(port: int, timeout_s: float) -> int:
    """The status of one `GET /healthz` on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def log_traceback(path: str, log: Log) -> None:
    """Log the end of Daphne's output when it holds a traceback (the server went wrong somewhere)."""
    if "Traceback" in tail(path, 200_000):
        log(f"daphne's output holds a traceback:\n{tail(path)}")


@contextmanager
def daphne(
    env: dict[str, str],
    log: Log,
    *,
    app: str = PROJECT_APP,
    log_prefix: str = "bench_daphne_",
    probe_timeout_s: float = 10,
    stop_timeout_s: float = 30,
    preexec_fn: Callable[[], Any] | None = None,
    check_output: Callable[[str, Log], None] | None = None,
) -> Iterator[tuple[int, int]]:
    """A Daphne serving `app` on a free port, up once /healthz answers 200: (port, pid); SIGTERM at the end.

    `check_output(path, log)` reads its output (stdout and stderr, in a temporary file) once it has stopped.
    """
    port = free_port()
    # A file rather than a pipe: nobody reads Daphne's output while it runs, and a full pipe would block it.
    output = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited with {process.returncode}: {tail(output.name)}")
            try:
                if healthz(port, probe_timeout_s) == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not answer /healthz within 60 s: {tail(output.name)}")
            time.sleep(0.2)
        yield port, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a clean stop drains the bus and commits the store
            try:
                process.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                log(f"daphne did not stop within {stop_timeout_s:g} s of SIGTERM; killed")
                process.kill()
                process.wait()
        if check_output is not None:
            check_output(output.name, log)
        output.close()
        os.unlink(output.name)


# py-spy, for --profile.


def py_spy_path() -> str:
    """py-spy on PATH, else beside this Python (a venv's bin, not on PATH when run as .venv/bin/python)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` into `output`: .json speedscope, .txt collapsed stacks, else a flame graph."""
    spy = subprocess.Popen(
        [py_spy_path(), "record", "--pid", str(pid), "--output", output, "--nonblocking", "--threads"]
        + ["--format", {".json": "speedscope", ".txt": "raw"}.get(Path(output).suffix, "flamegraph")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches
    return spy


def stop_profiler(spy: subprocess.Popen[bytes], log: Log, keep: int) -> None:
    """Stop py-spy (SIGINT: it writes its output then) and log the last `keep` characters it said."""
    spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=60)
        log(f"py-spy: {err.decode(errors='replace').strip()[-keep:]}")
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


# Databases.


@contextmanager
def postgres_database(server: str, name: str) -> Iterator[str]:
    """A new empty database `name` on `server` (a URL with no database): its URL; dropped at the end."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server}/{name}"
    finally:
        drop_postgres(server, name)


def drop_postgres(server: str, name: str) -> None:
    """Drop database `name`, if it exists, whoever is still connected to it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def sqlite_file(prefix: str) -> Iterator[str]:
    """The path of a new SQLite file in a temporary folder of its own; the folder removed at the end."""
    # A folder, not just a file: SQLite puts its -wal and -shm files beside the database.
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        yield os.path.join(directory, "bench.sqlite3")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgres_version(server: str) -> str:
    """The server's "PostgreSQL N.N", from `SELECT version()`."""
    import psycopg

    with psycopg.connect(f"{server}/postgres") as conn:
        row = conn.execute("SELECT version()").fetchone()
    return " ".join(str(row[0] if row else "PostgreSQL ?").split()[:2])
