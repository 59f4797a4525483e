"""`tagger members` against a Redis holding a mirrored rulebook and no members."""

from __future__ import annotations

import redis
from click.testing import CliRunner, Result

from tagger.rules.rulebook import load_rulebook
from tagger.streams.cli import cli
from tagger.streams.config import Settings
from tagger.streams.mirror import write_rulebook


def _members(settings: Settings, *args: str) -> Result:
    env = {key: value for key, value in settings.to_env().items() if value}
    return CliRunner().invoke(cli, ["members", *args], env=env)


def _mirror_default_rulebook(settings: Settings) -> None:
    rulebook = load_rulebook()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        write_rulebook(client, settings.redis_prefix, rulebook.describe(), rulebook.version)
    finally:
        client.close()


def test_misspelt_tag_fails_with_a_suggestion(settings: Settings) -> None:
    _mirror_default_rulebook(settings)

    result = _members(settings, "hesitnt")

    assert result.exit_code == 2
    assert "the rulebook has no tag 'hesitnt' (did you mean 'hesitant'?)" in result.output


def test_known_tag_without_members_succeeds(settings: Settings) -> None:
    _mirror_default_rulebook(settings)

    result = _members(settings, "hesitant")

    assert result.exit_code == 0, result.output
    assert "0-0 of 0" in result.output
    assert "no tag" not in result.output


def test_without_a_mirrored_rulebook_only_notes(settings: Settings) -> None:
    result = _members(settings, "hesitnt")

    # Nothing to check the tag against: the empty page is printed, with a hint.
    assert result.exit_code == 0, result.output
    assert "no rulebook labels under prefix" in result.output
