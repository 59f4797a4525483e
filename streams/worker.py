"""Start a worker process: check topics, pick broker workarounds, run the Faust app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mode
import structlog

from tagger.errors import ConfigError
from tagger.rules.rulebook import Rulebook, load_rulebook
from tagger.streams.app import TaggerRuntime, TaggerWorker, build_app
from tagger.streams.config import Settings
from tagger.streams.end_offsets import broker_cluster_id, needs_probe
from tagger.streams.mirror import MirrorWriter
from tagger.streams.rulebook_versions import VersionGate, rulebook_text
from tagger.streams.topics import check_topics, create_topics

__all__ = ["build_runtime", "run_worker"]

log = structlog.get_logger(__name__)

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

    cluster_id = broker_cluster_id(settings.kafka_bootstrap_servers)
    fix = settings.broker_end_offset_fix
    probe = fix == "on" or (fix == "auto" and needs_probe(cluster_id))
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
    runtime = build_app(settings, rulebook, probe_end_offsets=probe, mirror=mirror, gate=gate)
    gate.on_activated = runtime.processor.reevaluate_all
    late["runtime"] = runtime
    app = runtime.app

    class MirrorService(mode.Service):
        """Starts the mirror writer with the app and flushes it when the app stops."""

        async def on_start(self) -> None:
            mirror.start()
            self.add_future(self._write_rulebook())
            await gate.start()

        async def _write_rulebook(self) -> None:
            # Redis may be down at start; the worker consumes anyway and the
            # labels arrive once Redis answers.
            delay = 1.0
            while not self.should_stop:
                try:
                    await mirror.write_rulebook(rulebook.describe(), rulebook.version)
                except Exception as exc:
                    log.warning(
                        "rulebook labels not written to Redis, retrying",
                        error=repr(exc),
                        retry_in_s=delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                log.info("rulebook labels written to Redis", version=rulebook.version)
                return

        async def on_stop(self) -> None:
            await gate.stop()
            await mirror.stop(flush_timeout=_MIRROR_FLUSH_ON_STOP_S)
            log.info("mirror stopped", pending=mirror.pending_count)

    app.service(MirrorService)
    log.info(
        "worker configured",
        settings=settings.redacted(),
        rulebook_version=rulebook.version,
        rules=len(rulebook.rules),
    )
    return runtime


def run_worker(settings: Settings, rulebook: Rulebook | None = None) -> None:
    """Run a worker until SIGTERM or Ctrl-C; the batch in hand finishes first."""
    runtime = build_runtime(settings, rulebook)
    worker = TaggerWorker(
        runtime.app,
        loglevel=settings.log_level,
        redirect_stdouts=False,
        override_logging=False,
    )
    log.info("worker starting", app_id=settings.app_id, clock_mode=settings.clock_mode)
    try:
        worker.execute_from_commandline()
    finally:
        log.info("worker stopped", app_id=settings.app_id)
