"""End to end on the real samples: replay, then compare with the independent reference."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import orjson

from tagger.streams.config import Settings
from tagger.streams.replay import replay_file
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.helpers import (
    assert_changes_in_sequence,
    fold_changes,
    mirror_members,
    mirror_tags,
    read_topic,
    tag_changes,
)
from tests.reference import hesitant_customers, reference_rees46, reference_uci

_HOUR_MS = 3_600_000


def _rulebook_in(currency: str, folder: Path) -> str:
    """Write the default rulebook with another currency, as a user would for their shop."""
    text = files("tagger.rules").joinpath("default.yaml").read_text(encoding="utf-8")
    path = folder / f"rulebook-{currency}.yaml"
    path.write_text(text.replace("currency: CNY", f"currency: {currency}", 1), encoding="utf-8")
    return str(path)


def _replay_and_wait(settings: Settings, worker: WorkerProcess, path: Path, currency: str) -> int:
    report = replay_file(
        path,
        settings,
        currency=currency,
        end_clock="auto",
        end_clock_span_ms=_HOUR_MS,
        progress=False,
    )
    assert report.end_clock is not None
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up to the end clock",
    )
    return report.end_clock


def test_rees46_matches_reference(
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sample_data: Path,
    tmp_path: Path,
) -> None:
    path = sample_data / "rees46_multicat_2019-10_head.csv"
    replay_settings = replay_settings.with_changes(rulebook_path=_rulebook_in("USD", tmp_path))
    worker = start_worker(replay_settings)

    end_clock = _replay_and_wait(replay_settings, worker, path, "USD")

    expected = {
        customer: tags for customer, tags in reference_rees46(path, end_clock).items() if tags
    }
    published = fold_changes(tag_changes(replay_settings))
    assert published == expected
    assert mirror_tags(replay_settings) == expected
    assert mirror_members(replay_settings) == expected
    assert len(hesitant_customers(published)) == 53
    assert_changes_in_sequence(replay_settings)

    dead = [
        orjson.loads(value)
        for _, value in read_topic(replay_settings, replay_settings.dead_letter_topic)
    ]
    truncated = [d for d in dead if d["reason"] == "wrong_field_count"]
    assert len(truncated) == 1
    assert truncated[0]["source"]["line"] == 17_436


def test_online_retail_matches_reference(
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sample_data: Path,
    tmp_path: Path,
) -> None:
    path = sample_data / "online_retail_customers_sample.csv"
    replay_settings = replay_settings.with_changes(rulebook_path=_rulebook_in("GBP", tmp_path))
    worker = start_worker(replay_settings)

    end_clock = _replay_and_wait(replay_settings, worker, path, "GBP")

    # Customers left with no tag appear in the reference with an empty set.
    expected = {customer: tags for customer, tags in reference_uci(path, end_clock).items() if tags}
    published = fold_changes(tag_changes(replay_settings))
    assert published == expected
    assert mirror_tags(replay_settings) == expected
    assert mirror_members(replay_settings) == expected
    dormant = {customer for customer, tags in expected.items() if "dormant" in tags}
    assert len(dormant) >= 100
