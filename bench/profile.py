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
    # mypyc compiles the engine's modules into one C file, __native_<group>.c.
    ("tagger rules engine", ("/rules/", "/__native_")),
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
    ("compiled rules engine (mypyc)", (None, "/__native_")),
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


# Functions of CPython's garbage collector, in profiles with native frames.
_COLLECTOR_FUNCTIONS = frozenset({"gc_collect_main", "gc_collect_with_callback"})


def _self_area(frames: list[tuple[str, str]]) -> str:
    """Return the area of a sample: its innermost Python or compiled frame's.

    In a profile with native frames (`py-spy --native`), a C function of the
    interpreter (reference counting, dict lookups) counts for the Python or
    compiled function that called it. Garbage collection is an area of its own.
    """
    for function, file in reversed(frames):
        if function in _COLLECTOR_FUNCTIONS:
            return "garbage collection"
        if file.endswith(".py") or "/__native_" in file:
            return _area(file)
    return _area(frames[-1][1])


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
        areas[_self_area(frames)] += count
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
