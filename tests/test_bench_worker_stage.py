"""The worker stage's log reading and profiler lookup, without a broker or Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from bench.worker_stage import _error_lines, py_spy_path
from tagger.streams.input_guard import STALL_MESSAGE


def test_error_lines_console_and_json(tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    log_path.write_text(
        "2026-12-05T10:00:00Z [info     ] batch done\n"
        "2026-12-05T10:00:01Z [error    ] mirror write failed customer_id=c1\n"
        '{"level": "critical", "event": "batch failed"}\n'
        '{"level": "warning", "event": "slow"}\n'
    )

    lines = _error_lines(log_path)

    assert len(lines) == 2
    assert "mirror write failed" in lines[0]
    assert "batch failed" in lines[1]


def test_error_lines_input_stall_warning(tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    log_path.write_text(
        "2026-12-05T10:00:00Z [info     ] batch done\n"
        f"2026-12-05T10:00:01Z [warning  ] {STALL_MESSAGE} partition=3 offset=120\n"
        "2026-12-05T10:00:02Z [warning  ] producer buffer full\n"
    )

    lines = _error_lines(log_path)

    assert len(lines) == 1
    assert "partition=3" in lines[0]


def test_error_lines_missing_log(tmp_path: Path) -> None:
    assert _error_lines(tmp_path / "absent.log") == []


def test_py_spy_found_beside_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "python").touch()
    py_spy = tmp_path / "py-spy"
    py_spy.write_text("#!/bin/sh\n")
    py_spy.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "")

    assert py_spy_path() == str(py_spy)


def test_py_spy_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "")

    with pytest.raises(click.ClickException, match="pip install"):
        py_spy_path()


def test_py_spy_not_taken_from_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "py-spy").write_text("#!/bin/sh\n")
    (tmp_path / "py-spy").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", "")

    with pytest.raises(click.ClickException, match="not found"):
        py_spy_path()
