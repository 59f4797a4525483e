"""Start a worker process: check topics, pick broker workarounds, run the Faust app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mode
import structlog

from tagger.errors import ConfigError
from tagger.rules import engine_build
from tagger.rules.rulebook import Rulebook, load_rulebook
from tagger.streams.app import TaggerRuntime, TaggerWorker, build_app
from tagger.streams.config import Settings
from tagger.streams.end_offsets import broker_cluster_id, needs_probe
from tagger.streams.gc_pauses import tune_gc, watch_gc
from tagger.streams.mirror import MirrorWriter
from tagger.streams.mirror_marker import MARKER_CHECK_INTERVAL_S, MirrorMarker, marker_key
from tagger.streams.recovery_progress import RecoveryMetrics, RecoveryProgress
from tagger.streams.rulebook_versions import VersionGate, rulebook_text
from tagger.streams.security import kafka_python_args
from tagger.streams.shutdown import ShutdownGuard
from tagger.streams.topics import check_topics, create_topics

__all__ = ["build_runtime", "run_worker"]

log = structlog.get_logger(__name__)

# Maximum wait between marker checks while Redis fails, seconds.
_MARKER_RETRY_MAX_S = 5.0
# How long a stopping worker waits for Redis to confirm the last mirror writes.
_MIRROR_FLUSH_ON_STOP_S = 5.0


def build_runtime(settings: Settings, given_rulebook: Rulebook | None = None) -> TaggerRuntime:
    """Prepare topics and the Redis mirror, and build the Faust app for one worker."""
    rulebook = (
        given_rulebook if given_rulebook is not None else load_rulebook(settings.rulebook_path)
    )
    if settings.wall_clock_offset_ms:
        log.warning(
            "wall clock is shifted for testing",
            offset_ms=settings.wall_clock_offset_ms,
            env="TAGGER_WALL_CLOCK_OFFSET_MS",
        )

    # Faust opens table stores under the data folder and fails on a missing parent.
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    created = create_topics(settings)
    if created:
        log.info("topics created", topics=created)
    problems = check_topics(settings)
    if problems:
        raise ConfigError(
            "topics do not match the settings: "
            + "; ".join(str(problem) for problem in problems)
            + " (fix the topics or TAGGER_PARTITIONS, then start again)"
        )

    cluster_id = broker_cluster_id(settings.kafka_bootstrap_servers, **kafka_python_args(settings))
    fix = settings.broker_end_offset_fix
    tansu = needs_probe(cluster_id)
    probe = fix == "on" or (fix == "auto" and tansu)
    if probe:
        log.info("end offsets will be read to the true end", cluster_id=cluster_id, setting=fix)

    # The mirror's callbacks need the processor, which needs the mirror.
    late: dict[str, TaggerRuntime] = {}

    def on_confirmed(customer_id: str, seq: int) -> None:
        late["runtime"].processor.confirm_mirrored(customer_id, seq)

    def on_outcome(outcome: str, count: int) -> None:
        late["runtime"].metrics.mirror_writes.labels(outcome).inc(count)

    mirror = MirrorWriter(settings, on_confirmed=on_confirmed, on_outcome=on_outcome)
    gate = VersionGate(settings, rulebook, rulebook_text(settings.rulebook_path))
    runtime = build_app(
        settings, rulebook, probe_end_offsets=probe, tansu=tansu, mirror=mirror, gate=gate
    )
    gate.on_activated = runtime.processor.reevaluate_all
    late["runtime"] = runtime
    app = runtime.app

    class MirrorService(mode.Service):
        """Starts the mirror writer with the app, watches Redis for lost data, flushes on stop."""

        async def on_start(self) -> None:
            mirror.start()
            self.add_future(self._watch_mirror())
            await gate.start()

        async def _watch_mirror(self) -> None:
            # Redis may be down at start; the worker consumes anyway, and the
            # labels and the marker arrive once Redis responds.
            marker = MirrorMarker(settings)
            registered = False
            failing = False
            delay = MARKER_CHECK_INTERVAL_S
            try:
                while not self.should_stop:
                    try:
                        if not registered:
                            await _register(marker, first=True)
                            registered = True
                        elif not await marker.intact():
                            await _register(marker, first=False)
                    except Exception as exc:
                        if not failing:
                            log.warning(
                                "mirror marker check failed, retrying",
                                error=repr(exc),
                                retry_in_s=delay,
                            )
                        failing = True
                        await asyncio.sleep(delay)
                        # A short cap: the mirror must notice soon after Redis
                        # returns whether it came back empty.
                        delay = min(delay * 2, _MARKER_RETRY_MAX_S)
                        continue
                    failing = False
                    delay = MARKER_CHECK_INTERVAL_S
                    await asyncio.sleep(MARKER_CHECK_INTERVAL_S)
            finally:
                await marker.close()

        async def on_stop(self) -> None:
            await gate.stop()
            await mirror.stop(flush_timeout=_MIRROR_FLUSH_ON_STOP_S)
            log.info("mirror stopped", pending=mirror.pending_count)

    async def _register(marker: MirrorMarker, *, first: bool) -> None:
        """Write the rulebook hash and this worker's marker field; resync when data was lost."""
        processor = runtime.processor
        await mirror.write_rulebook(rulebook.describe(), rulebook.version)
        outcome = await marker.register()
        if first:
            log.info("rulebook labels written to Redis", version=rulebook.version)
        if first and outcome == "present":
            return
        if first:
            # Partitions assigned before or after this point may have
            # customers Redis no longer holds, including ones it confirmed.
            processor.resubmit_on_assign = True
            log.warning(
                "mirror marker missing or just re-created in Redis (a new Redis, or one "
                "that lost data while no worker ran): re-submitting every customer",
                marker=marker_key(settings.redis_prefix),
                outcome=outcome,
            )
        else:
            log.warning(
                "Redis lost mirror data (marker or rulebook hash missing): "
                "rulebook labels re-written, re-submitting every customer",
                marker=marker_key(settings.redis_prefix),
            )
        runtime.metrics.mirror_resyncs.inc()
        submitted = await processor.resync_mirror()
        log.info("mirror resync submitted", customers=submitted)

    app.service(MirrorService)
    log.info(
        "worker configured",
        settings=settings.redacted(),
        rulebook_version=rulebook.version,
        rules=len(rulebook.rules),
    )
    return runtime


def run_worker(settings: Settings, rulebook: Rulebook | None = None) -> None:
    """Run a worker until SIGTERM or Ctrl-C; the batch in hand finishes first.

    A worker still stopping `settings.shutdown_timeout_s` after the signal
    exits with code 3 (see `tagger.streams.shutdown`).
    """
    _install_uvloop()
    runtime = build_runtime(settings, rulebook)
    tune_gc()
    watch_gc(runtime.metrics.gc_pause_seconds)
    # Faust starts the app's own services only after the first recovery, so
    # the recovery reports run as a service of the worker, started before the app.
    progress = RecoveryProgress(
        runtime.app,
        log_interval_s=settings.recovery_log_interval_s,
        stall_s=settings.recovery_stall_s,
        metrics=RecoveryMetrics.create(runtime.registry),
    )
    guard = ShutdownGuard(runtime, settings.shutdown_timeout_s)
    worker = TaggerWorker(
        runtime.app,
        progress,
        loglevel=settings.log_level,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.on_stop_requested = guard.stop_requested
    log.info(
        "worker starting",
        app_id=settings.app_id,
        clock_mode=settings.clock_mode,
        engine=engine_build(),
    )
    try:
        worker.execute_from_commandline()
    finally:
        guard.stopped()
        seconds = guard.stop_seconds
        log.info(
            "worker stopped",
            app_id=settings.app_id,
            stop_seconds=None if seconds is None else round(seconds, 2),
        )


def _install_uvloop() -> None:
    """Run the worker's event loops, the consumer thread's too, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop not installed, using the default asyncio event loop")
        return
    uvloop.install()
