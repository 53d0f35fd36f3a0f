"""The benchmarks' bookkeeping: every ratio printed is a speed against the anchor (higher is faster), the
evaluation row (early stopping: less work) gets no per-call speed or GFLOP/s, only the evaluation's, and the CPU
goals read the right rows. Synthetic rows: no timing here (speed is measured by ``python -m nslib bench``)."""
from __future__ import annotations

import pytest

from nslib.cli import bench_attacks as bench


def _row(variant, img_s, eval_s, robust=0.5, evaluation=False, flops=1e8):
    return dict(model="smallcnn", variant=variant, images_per_s=img_s, eval_s=eval_s, robust_accuracy=robust,
                interval=(0.45, 0.55), evaluation_only=evaluation, compile_s=None, matmul_gflops=150.0,
                gflops=None if evaluation else img_s * flops / 1e9)


def test_attack_rows_are_speeds_against_the_plain_loop_and_the_goals_read_the_evaluation(capsys):
    rows = [_row("plain PyTorch fp32", 100, 10.0), _row("torchattacks fp32", 110, 9.0),
            _row("nslib fp32", 120, 8.0), _row("nslib evaluation (prepared, early stop)", 300, 5.0, 0.49, True)]
    bench._print_attack_rows(rows, "smallcnn", 10, 256, 1e8, None)
    by = {r["variant"]: r for r in rows}
    assert by["nslib fp32"]["ratio_to_anchor"] == pytest.approx(1.2)  # 120 / 100 images/s: faster is > 1
    assert by["nslib fp32"]["eval_speed_to_anchor"] == pytest.approx(10.0 / 8.0)  # time ratio inverted: a speed
    ev = by["nslib evaluation (prepared, early stop)"]
    assert ev["ratio_to_anchor"] is None and ev["gflops"] is None  # its calls do less: no like-for-like speed
    assert ev["eval_speed_to_anchor"] == pytest.approx(2.0) and ev["diff_points"] == pytest.approx(-1.0)
    printed = capsys.readouterr().out
    assert "n/a" in printed and "2.00x" in printed
    bench._cpu_attack_goals(rows)
    goal = capsys.readouterr().out
    assert "met (2.00x)" in goal and "met (1.80x)" in goal  # 9.0 / 5.0 against torchattacks
    assert "12 GFLOP/s" in goal and "150" in goal  # nslib fp32's steps: 120 images/s x 1e8 FLOPs
    slow = [_row("plain PyTorch fp32", 100, 10.0), _row("torchattacks fp32", 110, 9.0), _row("nslib fp32", 120, 8.0),
            _row("nslib evaluation (prepared, early stop)", 300, 9.0, 0.5, True)]
    bench._print_attack_rows(slow, "smallcnn", 10, 256, 1e8, None)
    capsys.readouterr()
    bench._cpu_attack_goals(slow)
    assert "not met (1.11x)" in capsys.readouterr().out
