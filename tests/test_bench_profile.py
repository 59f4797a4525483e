"""The profile summary's areas, for py-spy stacks with and without native frames."""

from __future__ import annotations

from pathlib import Path

from bench.profile import summarise_profile

_HANDLE = "handle_batch (tagger/streams/processor.py:410)"
_COMPILED = "CPyDef_engine___Engine____evaluate (__native_tagger_engine.c:26680)"


def _summary(tmp_path: Path, lines: list[str]) -> dict[str, float]:
    path = tmp_path / "profile.txt"
    path.write_text("\n".join(lines) + "\n")
    areas: dict[str, float] = summarise_profile(path)["self_by_area"]
    return areas


def test_python_frames_by_innermost_file(tmp_path: Path) -> None:
    areas = _summary(
        tmp_path,
        [
            f"run (faust/agents/agent.py:1);{_HANDLE};apply (tagger/rules/engine.py:200) 3",
            f"run (faust/agents/agent.py:1);{_HANDLE} 1",
        ],
    )

    assert areas["tagger rules engine"] == 0.75
    assert areas["tagger processor"] == 0.25


def test_native_helper_counts_for_caller(tmp_path: Path) -> None:
    areas = _summary(
        tmp_path,
        [
            f"{_HANDLE};{_COMPILED};Py_DECREF (object.h:537) 2",
            f"{_HANDLE};{_COMPILED} 1",
            f"{_HANDLE};PyDict_GetItem (dictobject.c:10) 1",
        ],
    )

    assert areas["tagger rules engine"] == 0.75
    assert areas["tagger processor"] == 0.25


def test_collector_is_own_area(tmp_path: Path) -> None:
    areas = _summary(
        tmp_path,
        [
            f"{_HANDLE};{_COMPILED};gc_collect_main (libpython3.11.so.1.0) 1",
            f"{_HANDLE};{_COMPILED} 3",
        ],
    )

    assert areas["garbage collection"] == 0.25
    assert areas["tagger rules engine"] == 0.75
