"""The worker stage: run `tagger worker` on the input until it has caught up.

With a profile path, the worker runs under py-spy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
import structlog

from bench.kafka_io import ProcessTimes, rss_bytes
from bench.profile import summarise_profile
from tagger.rules import engine_build
from tagger.streams.config import Settings
from tagger.streams.input_guard import GAP_MESSAGE, STALL_MESSAGE
from tagger.streams.worker_process import caught_up_to

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = [
    "counters",
    "get_path",
    "measure_worker",
    "profiled_command",
    "py_spy_path",
    "start_worker",
    "stop_worker",
    "worker_pid",
]

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.1
# py-spy samples this many times a second (its default is 100).
_PROFILE_RATE = 100
# Error lines of the worker log shown when the worker counted errors.
_ERROR_LINES_SHOWN = 5
_COUNTER = re.compile(r"^(tagger_[a-z_]+_total)(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)
_GC_PAUSE_SUM = re.compile(
    r"^tagger_gc_pause_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE
)


def get_path(settings: Settings, path: str) -> bytes | None:
    """Return the body of GET `path` on the worker's web server, or None when it fails."""
    url = f"http://127.0.0.1:{settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, OSError):
        return None


def counters(settings: Settings) -> dict[str, float]:
    """Return the worker's tagger_*_total counters, summed over their labels."""
    return _counters_of(get_path(settings, "/metrics"))


def _counters_of(body: bytes | None) -> dict[str, float]:
    totals: dict[str, float] = {}
    if body is None:
        return totals
    for name, value in _COUNTER.findall(body.decode()):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def _gc_seconds_of(body: bytes | None) -> float | None:
    """Return the seconds of garbage collection in a /metrics body, or None without one."""
    if body is None:
        return None
    return round(sum(float(value) for value in _GC_PAUSE_SUM.findall(body.decode())), 3)


def worker_pid(process: subprocess.Popen[bytes], profiled: bool) -> int | None:
    """Return the pid of the worker itself: py-spy's child when profiling."""
    if not profiled:
        return process.pid
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def measure_worker(
    context: Context, profile_path: Path | None, *, timeout_s: float
) -> dict[str, Any]:
    """Start a worker on the benchmark input and return its events/s and resource figures.

    The rate is the input lag seen at the first /status poll that shows all
    partitions assigned and recovered, divided by the time from that poll to
    the poll that shows every partition caught up and no Redis write pending.
    """
    settings = context.worker_settings("worker")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log_path = context.workdir / "worker.log"
    raw_profile = context.workdir / "worker.pyspy"
    process = start_worker(
        settings, log_path, profile_output=raw_profile if profile_path is not None else None
    )
    try:
        figures = _follow(context, settings, process, profile_path is not None, timeout_s)
    finally:
        stop_worker(process, profile_path is not None)
    errors = figures["counters"].get("tagger_errors_total", 0)
    if errors:
        # The work folder and the worker's log go when the run ends, so show why here.
        log.warning(
            "worker counted errors during the stage",
            errors=int(errors),
            last_lines=_error_lines(log_path)[-_ERROR_LINES_SHOWN:],
        )
    if profile_path is not None:
        profile_path.write_bytes(raw_profile.read_bytes())
        figures["profile"] = summarise_profile(profile_path)
    return figures


def _error_lines(log_path: Path) -> list[str]:
    """Return the worker log's lines of counted errors, in console or JSON form.

    Those are the lines at level error or critical, and the input guard's
    warnings, which the worker also counts in `tagger_errors_total`.
    """
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    marks = (
        "[error",
        "[critical",
        '"level": "error"',
        '"level": "critical"',
        STALL_MESSAGE,
        GAP_MESSAGE,
    )
    return [line for line in text.splitlines() if any(mark in line for mark in marks)]


def py_spy_path() -> str:
    """Return the py-spy executable: beside this Python first, then on PATH.

    Raises `click.ClickException` when neither has it.
    """
    # Empty PATH entries would mean the current folder, so they are left out.
    folders = [str(Path(sys.executable).parent)]
    folders += [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]
    found = shutil.which("py-spy", path=os.pathsep.join(folders))
    if found is None:
        raise click.ClickException(
            "py-spy not found beside this Python or on PATH: run pip install '.[bench]' "
            "in the customer-tagger checkout, or pip install py-spy"
        )
    return found


def profiled_command(command: list[str], profile_output: Path) -> list[str]:
    """Return `command` run under `py-spy record`, writing collapsed stacks to `profile_output`.

    With the engine compiled, py-spy also samples native frames: the compiled
    functions have no Python frames, so their time would count for the
    Python function that called them.
    """
    native = ["--native"] if engine_build() == "mypyc" else []
    return [
        py_spy_path(),
        "record",
        "--format",
        "raw",
        "--rate",
        str(_PROFILE_RATE),
        *native,
        "--output",
        str(profile_output),
        "--",
        *command,
    ]


def start_worker(
    settings: Settings,
    log_path: Path,
    *,
    profile_output: Path | None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `tagger worker` with `settings`, under py-spy when `profile_output` is set.

    `extra_env` adds environment variables, such as Faust's own settings
    (`CONSUMER_MAX_FETCH_SIZE`), which Faust reads from the environment.
    """
    command = [sys.executable, "-m", "tagger.streams.cli", "worker"]
    if profile_output is not None:
        command = profiled_command(command, profile_output)
    env = {**os.environ, **settings.to_env(), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    log.info(
        "worker started",
        pid=process.pid,
        app_id=settings.app_id,
        data_dir=settings.data_dir,
        profiled=profile_output is not None,
    )
    return process


def _follow(
    context: Context,
    settings: Settings,
    process: subprocess.Popen[bytes],
    profiled: bool,
    timeout_s: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    times: ProcessTimes | None = None
    first_poll: tuple[float, int] | None = None
    rss_at_start: int | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(
                f"worker exited with code {process.returncode}; see {context.workdir}/worker.log"
            )
        body = get_path(settings, "/status")
        status = orjson.loads(body) if body else None
        if times is None and status is not None:
            times = ProcessTimes({"worker": worker_pid(process, profiled), **context.server_pids})
        if times is not None:
            times.sample()
        lag = _input_lag(status, context)
        if first_poll is None and lag is not None:
            first_poll = (time.monotonic(), lag)
            rss_at_start = rss_bytes(worker_pid(process, profiled))
            log.info("worker assigned", lag=lag, join_seconds=round(first_poll[0] - started, 1))
        done = first_poll is not None and status is not None
        if done and caught_up_to(status, end_clock=None, partitions=context.partitions):
            break
        time.sleep(_POLL_INTERVAL_S)
    else:
        raise click.ClickException(f"worker did not catch up within {timeout_s:.0f} s")

    assert first_poll is not None and times is not None
    seconds = time.monotonic() - first_poll[0]
    metrics_body = get_path(settings, "/metrics")
    events = first_poll[1]
    return {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else 0.0,
        "join_seconds": round(first_poll[0] - started, 1),
        "cpu_cores": times.shares(seconds),
        "rss_bytes": rss_bytes(worker_pid(process, profiled)),
        # At the first poll with every partition assigned and recovered, when
        # consuming starts: the process's base, before its tables hold customers.
        "rss_bytes_at_start": rss_at_start,
        "counters": _counters_of(metrics_body),
        # Garbage collection since the worker started, start-up included.
        "gc_seconds": _gc_seconds_of(metrics_body),
    }


def _input_lag(status: dict[str, Any] | None, context: Context) -> int | None:
    """Return the summed input-topic lag once every partition is assigned and recovered."""
    if status is None:
        return None
    partitions = status.get("partitions", {})
    if len(partitions) < context.partitions:
        return None
    total = 0
    for view in partitions.values():
        lag = view["lag"].get(context.topic)
        if not view["index_ready"] or lag is None:
            return None
        total += lag
    return total


def stop_worker(process: subprocess.Popen[bytes], profiled: bool, label: str = "worker") -> None:
    """Stop the worker with SIGTERM (py-spy then writes its profile and exits too).

    `label` names the process in the log lines, for the Faust apps stopped the same way.
    """
    target = worker_pid(process, profiled) if profiled else process.pid
    if target is not None and process.poll() is None:
        os.kill(target, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        log.warning(f"{label} did not stop in time, killing", pid=process.pid)
        process.kill()
        process.wait()
    log.info(f"{label} stopped", pid=process.pid, returncode=process.returncode)
