"""`tagger forget` without a worker: the id check, the missing topic, and the timeout."""

from __future__ import annotations

import orjson
from click.testing import CliRunner, Result

from tagger.streams.cli import cli
from tagger.streams.config import Settings
from tagger.streams.partitioning import partition_for
from tagger.streams.topics import create_topics
from tests.e2e.helpers import read_topic


def _forget(settings: Settings, *args: str) -> Result:
    env = {key: value for key, value in settings.to_env().items() if value}
    return CliRunner().invoke(cli, ["forget", *args], env=env)


def test_forget_rejects_invalid_id(settings: Settings) -> None:
    result = _forget(settings, "has space")

    assert result.exit_code == 2
    assert "invalid_customer_id" not in result.output
    assert "without whitespace" in result.output


def test_forget_reports_missing_topic(settings: Settings) -> None:
    result = _forget(settings, "c1", "--no-wait")

    assert result.exit_code != 0
    assert "run `tagger topics create`" in str(result.exception)


def test_forget_times_out_without_worker(settings: Settings) -> None:
    create_topics(settings)

    result = _forget(settings, "c1", "--timeout", "1")

    assert result.exit_code == 1
    assert "timed out after 1 s" in result.output
    assert "stays queued" in result.output
    assert f"(partition {partition_for(b'c1', settings.partitions)}, offset 0)" in result.output
    records = read_topic(settings, settings.erasure_topic)
    assert len(records) == 1
    key, value = records[0]
    assert key == b"c1"
    request = orjson.loads(value)
    assert request["type"] == "erasure"
    assert request["customer_id"] == "c1"
