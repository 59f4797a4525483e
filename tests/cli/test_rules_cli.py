"""`tagger rules check|test|preview` as a user runs them, without a broker."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import orjson

from tagger.streams.simulator import simulate


def _tagger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tagger.streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _default_text() -> str:
    return files("tagger.rules").joinpath("default.yaml").read_text(encoding="utf-8")


def test_check_reports_every_broken_rule(tmp_path: Path) -> None:
    text = _default_text()
    text = text.replace("when: count(purchase, 90d) >= 1", "when: count(purchse, 90d) >= 1", 1)
    text = text.replace("when: net_spend(180d) >= 5000.00", "when: net_spnd(180d) >= 5000.00", 1)
    broken = tmp_path / "broken.yaml"
    broken.write_text(text, encoding="utf-8")

    result = _tagger("rules", "check", str(broken))

    assert result.returncode == 2
    assert "purchse" in result.stderr
    assert "did you mean 'net_spend'" in result.stderr


def test_test_runs_default_fixtures() -> None:
    result = _tagger("rules", "test")

    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_preview_diffs_two_rulebooks(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(
        _default_text().replace("net_spend(180d) >= 1000.00", "net_spend(180d) >= 500.00", 1),
        encoding="utf-8",
    )
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(orjson.dumps(e) for e in simulate(seed=3, customers=80)))
    diff = tmp_path / "diff.jsonl"

    result = _tagger("rules", "preview", str(new), "--history", str(history), "--diff", str(diff))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "medium_value" in result.stdout
    rows = [orjson.loads(line) for line in diff.read_bytes().splitlines()]
    assert rows
    assert {row["tag"] for row in rows} <= {"medium_value", "low_value", "high_value"}
    assert any(row["tag"] == "medium_value" and row["change"] == "added" for row in rows)


def test_preview_names_metrics_without_history(tmp_path: Path) -> None:
    new = tmp_path / "wider.yaml"
    new.write_text(
        _default_text().replace(
            "when: count(campaign_join, 30d) >= 1", "when: count(campaign_join, 60d) >= 1", 1
        ),
        encoding="utf-8",
    )
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(orjson.dumps(e) for e in simulate(seed=3, customers=20)))

    result = _tagger("rules", "preview", str(new), "--history", str(history))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "`count(campaign_join, 60d)` holds only the last 30 days" in result.stdout
