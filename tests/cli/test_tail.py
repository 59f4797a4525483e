"""`tagger tail` on an empty tag-change topic, run as `tagger` runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tagger.streams.config import Settings
from tagger.streams.topics import create_topics


def test_empty_topic_says_so_on_stderr(settings: Settings) -> None:
    create_topics(settings)
    env = {**os.environ, **{key: value for key, value in settings.to_env().items() if value}}

    result = subprocess.run(
        [sys.executable, "-m", "tagger.streams.cli", "tail", "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    # Standard output stays JSON lines only.
    assert result.stdout == ""
    assert f"no tag changes on {settings.tag_change_topic} within 2 s" in result.stderr
    assert "--from-beginning shows earlier ones" in result.stderr
