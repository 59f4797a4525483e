"""Summarise a py-spy profile in collapsed-stack form ("frame;frame;... count" per line)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["RECOVERY_INCLUSIVE", "summarise_profile"]

# A py-spy frame: "function (path/to/file.py:line)" or "function (path/to/file.py)".
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")

# Where a sample's innermost frame is, by file path fragment; the first match wins.
_AREAS = (
    ("tagger rules engine", ("/rules/",)),
    ("tagger schemas (decode, validate, encode)", ("/schemas/",)),
    ("tagger processor", ("/streams/processor",)),
    ("tagger mirror", ("/streams/mirror",)),
    ("tagger other", ("/streams/", "/tagger/")),
    ("Faust and mode", ("/faust/", "/mode/")),
    ("aiokafka and kafka-python", ("/aiokafka/", "/kafka/")),
    ("redis client", ("/redis/",)),
    ("prometheus client", ("/prometheus_client/",)),
    ("logging and structlog", ("/logging/", "/structlog/")),
    ("asyncio event loop", ("/asyncio/", "selectors.py")),
    ("JSON and jsonschema", ("/json/", "/jsonschema/", "/referencing/")),
)
# Functions whose inclusive share (samples with the function anywhere on the
# stack) locates the worker's own code within Faust's machinery.
_INCLUSIVE = (
    ("Processor.handle_batch", ("handle_batch", "/streams/processor")),
    ("rules engine (rules/engine.py)", (None, "/rules/engine.py")),
    ("event decoding (schemas/decode.py)", (None, "/schemas/decode.py")),
    ("state encode/decode (rules/state.py)", (None, "/rules/state.py")),
    ("mirror writer (streams/mirror.py)", (None, "/streams/mirror.py")),
    ("Faust table writes (faust/tables)", (None, "/faust/tables/")),
)
# The same for a table recovery from changelogs. The shares nest: the
# recovery loop calls the store, and aiokafka runs in Faust's consumer thread.
RECOVERY_INCLUSIVE = (
    ("aiokafka (fetch, decode records)", (None, "/aiokafka/")),
    ("Faust consumer thread and transport", (None, "/faust/transport/")),
    ("Faust recovery loop (tables/recovery.py)", (None, "/faust/tables/recovery.py")),
    ("store apply_changelog_batch", ("apply_changelog_batch", "/faust/stores/")),
    ("Faust table on_changelog_event", ("on_changelog_event", "/faust/tables/")),
    ("tagger end-offset probe", (None, "/streams/end_offsets.py")),
    ("tagger recovery sampler", (None, "/streams/recovery_progress.py")),
    ("tagger partition assignment (Processor.assign)", ("assign", "/streams/processor")),
)
_TOP_FUNCTIONS = 15


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for text in stack.split(";"):
        match = _FRAME.match(text)
        if match:
            frames.append((match["function"], match["file"]))
        else:
            frames.append((text, ""))
    return frames


def _area(file: str) -> str:
    for name, fragments in _AREAS:
        if any(fragment in file for fragment in fragments):
            return name
    return "other"


def summarise_profile(
    path: Path, *, inclusive: tuple[tuple[str, tuple[str | None, str]], ...] = _INCLUSIVE
) -> dict[str, Any]:
    """Return the share of samples per area (innermost frame), per function and inclusive.

    `inclusive` lists (label, (function name suffix or None, file fragment)).
    """
    areas: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        # py-spy prints paths relative to sys.path entries ("faust/topics.py"),
        # so a leading "/" lets the fragments match at the start of a path.
        frames = [(name, "/" + file) for name, file in frames]
        function, file = frames[-1]
        areas[_area(file)] += count
        functions[f"{function} ({Path(file).name})"] += count
        for label, (wanted_function, fragment) in inclusive:
            if any(
                fragment in frame_file
                and (wanted_function is None or name.endswith(wanted_function))
                for name, frame_file in frames
            ):
                inclusive_counts[label] += count
    if total == 0:
        return {"samples": 0}

    def share(count: int) -> float:
        return round(count / total, 3)

    return {
        "samples": total,
        "self_by_area": {name: share(count) for name, count in areas.most_common()},
        "self_top_functions": {
            name: share(count) for name, count in functions.most_common(_TOP_FUNCTIONS)
        },
        "inclusive": {label: share(inclusive_counts[label]) for label, _ in inclusive},
    }
