"""nslib.progress: bars that also write one status line for the terminal running ``reproduce``."""
from __future__ import annotations

import pytest

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


def test_an_overall_bar_writes_its_share_done_refined_by_the_bars_inside(tmp_path, monkeypatch):
    """Model 2 of 4, epoch 1 of 2, step 3 of 4: (1 + (0 + 3/4) / 2) / 4; a model found trained is taken off the
    total (skip), so the share counts only work really done; no overall bar, no share."""
    path = tmp_path / "status"
    monkeypatch.setenv("NSLIB_PROGRESS_FILE", str(path))
    monkeypatch.setattr(progress, "_INTERVAL_S", 0.0)
    with progress.bar(total=4, desc="models", overall=True) as models:
        assert progress.read_fraction(path) == 0.0
        models.update(1)
        with progress.bar(total=2, desc="epochs") as epochs:
            with progress.bar(total=4, desc="epoch 1") as steps:
                steps.update(3)
                assert progress.fraction() == pytest.approx((1 + (0 + 3 / 4) / 2) / 4)
                assert progress.read_fraction(path) == pytest.approx(progress.fraction(), abs=1e-6)
                line = progress.read_status(path)  # the status line stays the first line
                assert line.startswith("models 1/4") and "| epochs 0/2 | epoch 1 3/4" in line
                steps.update(1)  # finished, not yet closed: its epoch is done, no more
            epochs.update(1)
            assert progress.fraction() == pytest.approx((1 + 1 / 2) / 4)
        models.update(1)
        models.skip(2)  # the last two were found trained: the models that trained are all done
        assert models.total == 2 and progress.fraction() == 1.0
    assert progress.read_fraction(path) is None and progress.fraction() is None
    with progress.bar(total=3, desc="plain"):
        assert progress.fraction() is None  # only an overall bar gives a share
    with progress.bar(total=2, desc="models", overall=True) as models:
        models.skip(2)  # everything cached: nothing to report
        assert progress.fraction() is None
