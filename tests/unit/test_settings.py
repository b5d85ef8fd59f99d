"""Every CODEPARROT_* variable is one field of one settings object, read when used."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from storage.settings import Settings, SettingsError, current_settings

ROOT = Path(__file__).resolve().parents[2]


def test_variables_are_read_when_used_and_validated():
    assert current_settings({}).io_retry_delays == [5.0, 30.0, 120.0]
    assert current_settings({"CODEPARROT_IO_RETRY_DELAYS": "1, 2"}).io_retry_delays == [1, 2]
    assert current_settings({"CODEPARROT_IO_RETRY_DELAYS": " "}).io_retry_delays == [5, 30, 120]
    assert current_settings({"CODEPARROT_LOCK_TTL_SECONDS": "30"}).lock_ttl_seconds == 30.0
    for name, bad in [
        ("CODEPARROT_IO_RETRY_DELAYS", "5,-1"),
        ("CODEPARROT_IO_RETRY_DELAYS", "soon"),
        ("CODEPARROT_LOCK_TTL_SECONDS", "0"),
        ("CODEPARROT_S3_ADDRESSING_STYLE", "sideways"),
        ("CODEPARROT_DASK_WORKERS", "99999"),
    ]:
        with pytest.raises(SettingsError, match=re.escape(f"${name}={bad!r} is invalid")):
            current_settings({name: bad})


def test_a_retry_delay_change_takes_effect_without_a_reimport(monkeypatch):
    from tasks.filter.task import filter_group

    monkeypatch.setenv("CODEPARROT_IO_RETRY_DELAYS", "7")
    assert len(filter_group.retry_delay_seconds) == 1 and filter_group.retry_delay_seconds[0] == 7
    monkeypatch.setenv("CODEPARROT_IO_RETRY_DELAYS", "2,4")
    assert list(filter_group.retry_delay_seconds) == [2, 4]


def test_no_code_reads_a_codeparrot_variable_outside_the_settings_module():
    found = subprocess.run(
        ["git", "grep", "-nE", r"environ.*CODEPARROT_|getenv\(.CODEPARROT_", "--", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    outside = [line for line in found if not line.startswith(("storage/settings.py", "tests/"))]
    assert outside == []


def test_the_docs_table_of_variables_is_the_settings_model():
    text = (ROOT / "docs" / "operations.md").read_text()
    table = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(CODEPARROT_[A-Z0-9_]+)` \| (.*) \|$", text, re.M)
    }
    assert list(table) == [Settings.variable(name) for name in Settings.model_fields]
    for name, field in Settings.model_fields.items():
        assert table[Settings.variable(name)] == " ".join(field.description.split())


def test_a_bad_variable_is_one_line_from_the_cli(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("CODEPARROT_DASK_WORKERS", "0")
    assert main(["verify", "--store", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "$CODEPARROT_DASK_WORKERS='0' is invalid" in err
