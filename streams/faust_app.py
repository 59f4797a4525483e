"""Faust's App and Worker, adapted: end-offset probing on Tansu, no DEBUG root logger."""

from __future__ import annotations

import logging
from typing import Any

import faust

from tagger.streams.end_offsets import EndOffsetProbingConsumer
from tagger.streams.logs import quiet_libraries

__all__ = ["TaggerApp", "TaggerWorker"]


class TaggerApp(faust.App):
    """A Faust app whose consumer can read changelogs to their true end on Tansu."""

    probe_end_offsets = False

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if self.probe_end_offsets:
            # Faust reads the consumer class from the transport instance.
            transport.Consumer = EndOffsetProbingConsumer  # type: ignore[misc]
        return transport


class TaggerWorker(faust.Worker):
    """Faust's worker without its terminal spinner, which forces the root logger to DEBUG."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        quiet_libraries(level or logging.INFO)
