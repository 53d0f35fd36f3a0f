"""nslib.progress: bars that also write one status line for the terminal running ``reproduce``."""
from __future__ import annotations

from nslib import progress


def test_status_line_names_every_open_bar_and_stage_and_is_written_to_the_file(tmp_path, monkeypatch):
    path = tmp_path / "status"
    monkeypatch.setenv("NSLIB_PROGRESS_FILE", str(path))
    monkeypatch.setattr(progress, "_INTERVAL_S", 0.0)  # write on every step
    seen = []
    with progress.stage("PGD-AT seed 0"):
        for epoch in progress.bar(range(2), desc="epochs"):
            for step in progress.bar(range(3), desc=f"epoch {epoch + 1}", leave=False):
                seen.append(path.read_text())
    assert seen[0].startswith("PGD-AT seed 0 | epochs 0/2")
    assert "| epoch 1 " in seen[0] and seen[-1].startswith("PGD-AT seed 0 | epochs 1/2")
    assert "<" in seen[-1]  # a time-left estimate once a rate is known
    assert path.read_text() == ""  # everything closed: an empty line
    assert progress.read_status(tmp_path / "missing") == ""


def test_without_the_variable_it_is_plain_tqdm(monkeypatch, tmp_path):
    monkeypatch.delenv("NSLIB_PROGRESS_FILE", raising=False)
    assert list(progress.bar(range(4), disable=True)) == [0, 1, 2, 3]
    assert progress.status_line() == ""
    assert not any(tmp_path.iterdir())
