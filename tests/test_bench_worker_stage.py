"""The worker stage's log reading, without a broker or Redis."""

from __future__ import annotations

from pathlib import Path

from bench.worker_stage import _error_lines
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
