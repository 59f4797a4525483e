"""`tagger members` against a Redis holding a mirrored rulebook and no members.

The command runs as `tagger` does, through `main()` in a process of its
own, so that the exit code is the one a shell gets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from tagger.rules.rulebook import load_rulebook
from tagger.streams.config import Settings
from tagger.streams.mirror import write_rulebook


def _members(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{key: value for key, value in settings.to_env().items() if value}}
    return subprocess.run(
        [sys.executable, "-m", "tagger.streams.cli", "members", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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

    assert result.returncode == 2
    assert "the rulebook has no tag 'hesitnt' (did you mean 'hesitant'?)" in result.stderr


def test_known_tag_without_members_succeeds(settings: Settings) -> None:
    _mirror_default_rulebook(settings)

    result = _members(settings, "hesitant")

    assert result.returncode == 0, result.stderr
    assert "0-0 of 0" in result.stdout
    assert "no tag" not in result.stderr


def test_parameterised_rule_id_gets_a_hint(settings: Settings) -> None:
    _mirror_default_rulebook(settings)

    result = _members(settings, "browsing_interest")

    assert result.returncode == 0, result.stderr
    assert "'browsing_interest' is one tag per value" in result.stderr
    assert "browsing_interest:<value>" in result.stderr


def test_without_a_mirrored_rulebook_only_notes(settings: Settings) -> None:
    result = _members(settings, "hesitnt")

    # Nothing to check the tag against: the empty page is printed, with a hint.
    assert result.returncode == 0, result.stderr
    assert "no rulebook labels under prefix" in result.stderr
