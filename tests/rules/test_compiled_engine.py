"""The compiled engine (mypyc, see setup.py) decides exactly what the pure Python engine does.

A regular install runs the engine's hot modules as C extensions, and the rest
of the suite tests that build. This test replays simulated shoppers through
it and through the same sources run as plain Python. Then it compares every
tag change and final state byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import tagger
from tagger.rules import engine_build

# Prints the engine build, the number of changes and a digest of every change and final state.
_REPLAY = """
import hashlib
import sys

import orjson

from tagger.rules import engine_build
from tagger.rules.engine import Engine, Position
from tagger.rules.rulebook import load_rulebook
from tagger.rules.state import encode_state
from tagger.schemas.decode import decode_event
from tagger.schemas.tag_change import encode_tag_change
from tagger.streams.simulator import simulate

NOW = 1_800_000_000_000
DAY = 86_400_000
engine = Engine(load_rulebook(None))
states = {}
digest = hashlib.sha256()
changes = 0
last = 0
for offset, raw in enumerate(simulate(seed=int(sys.argv[1]), customers=200)):
    event = decode_event(orjson.dumps(raw), key=None, currency="CNY")
    state = states.get(event.customer_id)
    if state is None:
        state = states[event.customer_id] = engine.new_state(event.customer_id)
    engine.start_batch(state)
    outcome = engine.apply(
        state, event, position=Position("input", 0, offset), clock=event.ts, now=NOW
    )
    last = event.ts
    for change in outcome.changes:
        digest.update(encode_tag_change(change))
        changes += 1
for customer_id in sorted(states):
    state = states[customer_id]
    engine.start_batch(state)
    for change in engine.advance(state, watermark=last + 200 * DAY, now=NOW):
        digest.update(encode_tag_change(change))
        changes += 1
    digest.update(encode_state(state))
print(engine_build(), changes, digest.hexdigest())
"""


def _replay(seed: int, pythonpath: Path | None) -> tuple[str, int, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(
        [sys.executable, "-c", _REPLAY, str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    build, changes, digest = result.stdout.split()
    return build, int(changes), digest


def _pure_copy(target: Path) -> Path:
    """Copy the installed package's Python sources, without its extensions, under `target`."""
    package = Path(tagger.__file__).parent
    shutil.copytree(package, target / "tagger", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    return target


@pytest.mark.skipif(
    engine_build() != "mypyc",
    reason="the engine is pure Python in this install (editable, TAGGER_COMPILE=0, or no compiler)",
)
@pytest.mark.parametrize("seed", [7, 11])
def test_compiled_engine_matches_pure_python(tmp_path: Path, seed: int) -> None:
    compiled = _replay(seed, None)
    pure = _replay(seed, _pure_copy(tmp_path))

    assert compiled[0] == "mypyc"
    assert pure[0] == "python"
    assert compiled[1] > 1_000
    assert compiled[1:] == pure[1:]


def _can_compile() -> bool:
    """Tell whether this install was made by a regular build on a machine that can compile."""
    regular = "site-packages" in Path(tagger.__file__).parts
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    return regular and headers and shutil.which("cc") is not None


@pytest.mark.skipif(
    not _can_compile() or os.environ.get("TAGGER_COMPILE") == "0",
    reason="editable install, TAGGER_COMPILE=0, or no C compiler or Python headers",
)
def test_regular_install_is_compiled() -> None:
    """Pins that setup.py's compile succeeds: a failed one falls back to pure Python silently."""
    assert engine_build() == "mypyc"
