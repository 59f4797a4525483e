"""Changelog recovery of the worker against faust-streaming's default recovery, in one run.

After the worker stage, `state_stage.measure_recovery` times a worker that
restores its tables from their changelogs. Here a plain Faust app
(`python -m bench.agents recovery`) restores the same customers changelog
with Faust's default recovery, and the two rates and their ratio are
reported. Both are timed by the same sampler of Faust's recovery state
(`RecoveryProgress`, every 0.1 s) from their `recovery finished` log lines.

Variants try one Faust setting at a time on both: an env var that Faust
reads (`CONSUMER_MAX_FETCH_SIZE=8388608`) or the plain app's Table option
`recovery_buffer_size`, which the worker's tables do not expose. With a
profile folder, both recoveries run once more under py-spy.
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import structlog

from bench.kafka_io import ProcessTimes, rss_bytes
from bench.profile import RECOVERY_INCLUSIVE, summarise_profile
from bench.state_stage import (
    dir_bytes,
    measure_recovery,
    recovery_cpu,
    recovery_figures,
    recovery_lines,
    recovery_phases,
)
from bench.worker_stage import profiled_command, stop_worker, worker_pid
from tagger.streams.config import Settings

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = ["Variant", "compare_recovery", "measure_faust_recovery"]

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.1
# The Table option a variant may set; every other name is a Faust env var.
_TABLE_OPTION = "recovery_buffer_size"
# Faust's env var names are upper case: STREAM_BUFFER_MAXSIZE, CONSUMER_MAX_FETCH_SIZE.
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One recovery setting to try: a Faust env var, or the plain app's recovery_buffer_size."""

    name: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Parse `NAME=VALUE`; raise click.BadParameter when it is neither form."""
        name, separator, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not separator or not value:
            raise click.BadParameter(f"invalid recovery setting {text!r}: use NAME=VALUE")
        if name == _TABLE_OPTION:
            if not value.isdigit() or int(value) < 1:
                raise click.BadParameter(f"invalid {_TABLE_OPTION} {value!r}: use 1 or more")
        elif not _ENV_NAME.match(name):
            raise click.BadParameter(
                f"invalid recovery setting name {name!r}: use a Faust env var such as "
                f"CONSUMER_MAX_FETCH_SIZE, or {_TABLE_OPTION}"
            )
        return cls(name, value)

    @property
    def label(self) -> str:
        """The setting as `NAME=VALUE`."""
        return f"{self.name}={self.value}"

    @property
    def env(self) -> dict[str, str]:
        """Env vars to pass to both recovering processes."""
        return {} if self.name == _TABLE_OPTION else {self.name: self.value}

    @property
    def buffer_size(self) -> int | None:
        """The plain app's recovery_buffer_size, or None to keep Faust's default."""
        return int(self.value) if self.name == _TABLE_OPTION else None

    @property
    def applies_to_worker(self) -> bool:
        """True for an env var; the worker's tables take no recovery_buffer_size."""
        return self.name != _TABLE_OPTION


def measure_faust_recovery(
    context: Context,
    settings: Settings,
    *,
    timeout_s: float,
    name: str = "faust-recovery",
    extra_env: dict[str, str] | None = None,
    recovery_buffer_size: int | None = None,
    profile_output: Path | None = None,
) -> dict[str, Any]:
    """Restore the worker's customers table with a plain Faust app and time it.

    `seconds_to_finished` runs from the process start to the `recovery
    finished` line (group join included). The restored count and rate come
    from that line.
    """
    data_dir = context.workdir / f"{name}-data"
    log_path = context.workdir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "bench.agents",
        "recovery",
        "--bootstrap",
        context.bootstrap,
        "--app-id",
        settings.app_id,
        "--partitions",
        str(context.partitions),
        "--store",
        str(settings.extra.get("store", "memory://")),
        "--session-timeout",
        str(settings.broker_session_timeout_s),
        "--data-dir",
        str(data_dir),
    ]
    if recovery_buffer_size is not None:
        command += ["--recovery-buffer-size", str(recovery_buffer_size)]
    profiled = profile_output is not None
    if profile_output is not None:
        command = profiled_command(command, profile_output)
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    log.info("plain Faust recovery started", pid=process.pid, name=name, env=extra_env or {})
    try:
        times = ProcessTimes({"faust": worker_pid(process, profiled), **context.server_pids})
        finished = _wait_finished(process, log_path, started + timeout_s, times)
        seconds = time.monotonic() - started
        cpu = recovery_cpu(times, finished)
        rss = rss_bytes(worker_pid(process, profiled))
    finally:
        stop_worker(process, profiled, label="plain Faust app")
    return {
        "store": str(settings.extra.get("store", "memory://")),
        "seconds_to_finished": round(seconds, 2),
        "cpu_cores_while_recovering": cpu,
        "rss_bytes_after_recovery": rss,
        "data_dir_bytes": dir_bytes(data_dir),
        **recovery_figures(finished),
        "phases": recovery_phases(log_path),
    }


def _wait_finished(
    process: subprocess.Popen[bytes], log_path: Path, deadline: float, times: ProcessTimes
) -> list[dict[str, str]]:
    while time.monotonic() < deadline:
        times.sample()
        if process.poll() is not None:
            raise click.ClickException(
                f"plain Faust recovery exited with code {process.returncode}; see {log_path}"
            )
        lines = recovery_lines(log_path)
        if lines:
            return lines
        time.sleep(_POLL_INTERVAL_S)
    raise click.ClickException(f"plain Faust recovery did not finish; see {log_path}")


def compare_recovery(
    context: Context,
    settings: Settings,
    worker_recovery: dict[str, Any],
    customers: int,
    *,
    runs: int,
    variants: list[Variant],
    profile_dir: Path | None,
    timeout_s: float,
) -> dict[str, Any]:
    """Time the plain Faust recovery of the same changelog, then each variant and profile.

    `worker_recovery` contains the figures of the worker's first run (`measure_recovery`).
    With `runs` above 1, both recover that many times in turns, and the
    figures are medians. Each variant runs as often. Its `change` is its
    median rate divided by the default median rate of the same process in
    this run, minus one.
    """
    worker_rates = [worker_recovery.get("records_per_s")]
    faust_runs = []
    for run in range(runs):
        if run > 0:
            worker = measure_recovery(
                context, settings, customers, timeout_s=timeout_s, name=f"recovery-run{run}"
            )
            worker_rates.append(worker.get("records_per_s"))
        faust = measure_faust_recovery(
            context, settings, timeout_s=timeout_s, name=f"faust-recovery-run{run}"
        )
        log.info("plain Faust recovery measured", run=run, **faust)
        faust_runs.append(faust)
    worker_rate = _median(worker_rates)
    faust_rate = _median([faust.get("records_per_s") for faust in faust_runs])
    figures: dict[str, Any] = {
        "runs": runs,
        "faust_default": faust_runs[0],
        "worker_records_per_s_runs": worker_rates,
        "faust_records_per_s_runs": [faust.get("records_per_s") for faust in faust_runs],
        "worker_records_per_s": worker_rate,
        "faust_records_per_s": faust_rate,
        "worker_over_faust": _ratio(worker_rate, faust_rate),
    }
    if variants:
        figures["variants"] = [
            _measure_variant(
                context, settings, customers, variant, (worker_rate, faust_rate), runs, timeout_s
            )
            for variant in variants
        ]
    if profile_dir is not None:
        figures["profiles"] = _profile_both(context, settings, customers, profile_dir, timeout_s)
    return figures


def _measure_variant(
    context: Context,
    settings: Settings,
    customers: int,
    variant: Variant,
    defaults: tuple[float | None, float | None],
    runs: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Recover `runs` times with the variant's setting; `defaults` are the worker's and
    the plain app's median rates without it."""
    slug = re.sub(r"[^a-z0-9]+", "-", variant.label.lower())
    worker_rates: list[float | None] = []
    faust_rates: list[float | None] = []
    for run in range(runs):
        faust = measure_faust_recovery(
            context,
            settings,
            timeout_s=timeout_s,
            name=f"faust-recovery-{slug}-run{run}",
            extra_env=variant.env,
            recovery_buffer_size=variant.buffer_size,
        )
        faust_rates.append(faust.get("records_per_s"))
        if variant.applies_to_worker:
            worker = measure_recovery(
                context,
                settings,
                customers,
                timeout_s=timeout_s,
                name=f"recovery-{slug}-run{run}",
                extra_env=variant.env,
            )
            worker_rates.append(worker.get("records_per_s"))
    result: dict[str, Any] = {
        "setting": variant.label,
        "faust_records_per_s_runs": faust_rates,
        "faust_records_per_s": _median(faust_rates),
        "faust_change": _change(_median(faust_rates), defaults[1]),
    }
    if worker_rates:
        result["worker_records_per_s_runs"] = worker_rates
        result["worker_records_per_s"] = _median(worker_rates)
        result["worker_change"] = _change(_median(worker_rates), defaults[0])
    log.info("recovery variant measured", **result)
    return result


def _profile_both(
    context: Context, settings: Settings, customers: int, profile_dir: Path, timeout_s: float
) -> dict[str, Any]:
    """Run both recoveries once more under py-spy; return their rates and profile summaries."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    worker_path = profile_dir / "recovery-worker.pyspy"
    faust_path = profile_dir / "recovery-faust.pyspy"
    worker = measure_recovery(
        context,
        settings,
        customers,
        timeout_s=timeout_s,
        name="recovery-profiled",
        profile_output=worker_path,
    )
    faust = measure_faust_recovery(
        context,
        settings,
        timeout_s=timeout_s,
        name="faust-recovery-profiled",
        profile_output=faust_path,
    )
    return {
        "worker": {
            "path": str(worker_path),
            "records_per_s": worker.get("records_per_s"),
            "summary": summarise_profile(worker_path, inclusive=RECOVERY_INCLUSIVE),
        },
        "faust_default": {
            "path": str(faust_path),
            "records_per_s": faust.get("records_per_s"),
            "summary": summarise_profile(faust_path, inclusive=RECOVERY_INCLUSIVE),
        },
    }


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 1) if known else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def _change(value: float | None, baseline: float | None) -> float | None:
    ratio = _ratio(value, baseline)
    return None if ratio is None else round(ratio - 1, 3)
