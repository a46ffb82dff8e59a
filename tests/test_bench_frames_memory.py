"""The frames-against-memory bench: its fit recovers known lines and curves, the frame count that fits a budget
follows from it, and a point of each kind runs at the small size and reports its memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_frames_memory as bench  # noqa: E402


def test_linear_fit_recovers_the_line_and_no_quadratic_below_four_points():
    fit = bench.fit_memory([4, 8, 16], [6.5 + 0.25 * n for n in (4, 8, 16)])
    assert fit["linear"]["intercept_gib"] == pytest.approx(6.5, abs=1e-9)
    assert fit["linear"]["per_frame_gib"] == pytest.approx(0.25, abs=1e-9)
    assert fit["linear"]["max_residual_gib"] < 1e-9
    assert "quadratic" not in fit


def test_quadratic_fit_recovers_an_attention_term():
    frames = [4, 8, 16, 32, 64]
    fit = bench.fit_memory(frames, [6.0 + 0.1 * n + 0.002 * n * n for n in frames])
    assert fit["quadratic"]["per_frame_squared_gib"] == pytest.approx(0.002, abs=1e-9)
    assert fit["quadratic"]["per_frame_gib"] == pytest.approx(0.1, abs=1e-7)
    assert fit["linear"]["max_residual_gib"] > 0.1  # a line cannot follow the curve


def test_frames_that_fit_a_budget():
    line = {"intercept_gib": 6.0, "per_frame_gib": 0.5}
    assert bench.frames_that_fit(line, 24.0, reserve_gib=1.0) == 34  # (24 - 1 - 6) / 0.5 = 34
    assert bench.frames_that_fit(line, 6.5, reserve_gib=1.0) == 0
    with pytest.raises(ValueError, match="not positive"):
        bench.frames_that_fit({"intercept_gib": 6.0, "per_frame_gib": 0.0}, 24.0)
    with pytest.raises(ValueError, match="two different frame counts"):
        bench.fit_memory([4, 4], [1.0, 1.1])


def test_summary_fits_each_kind_and_the_optimizer_states_added():
    rows = [{"kind": "answer", "frames": n, "peak_gib": 6.0 + 0.5 * n} for n in (4, 8)]
    rows += [{"kind": "train", "frames": n, "peak_gib": 10.0 + n, "peak_with_adamw_gib": 17.0 + n} for n in (4, 8)]
    summary = bench.summarise(rows, [24.0], reserve=1.0)
    assert summary["answer:peak_gib"]["frames_that_fit"] == {"24": 34}
    assert summary["train:peak_with_adamw_gib"]["frames_that_fit"] == {"24": 6}  # (24 - 1 - 17) / 1
    assert summary["train:peak_gib"]["largest_measured_frames"] == 8


def test_summary_fits_each_frame_chunking_apart():
    rows = [{"kind": "encoder", "frames": n, "peak_gib": 4.0 + 0.5 * n} for n in (2, 4)]
    rows += [{"kind": "encoder", "frames": n, "frames_chunk_size": 1, "peak_gib": 4.0 + 0.25 * n} for n in (2, 4)]
    summary = bench.summarise(rows, [24.0], reserve=1.0)
    assert list(summary) == ["encoder:peak_gib", "encoder@chunk1:peak_gib"]
    assert summary["encoder:peak_gib"]["linear"]["per_frame_gib"] == pytest.approx(0.5, abs=1e-9)
    assert summary["encoder@chunk1:peak_gib"]["frames_that_fit"] == {"24": 76}  # (24 - 1 - 4) / 0.25
    measured = dict(rows[2], geometry_tokens=58, weights_gib=3.0, peak_above_weights_gib=1.5, seconds=9.0)
    assert bench.table([measured]).splitlines()[-1] == "| encoder@chunk1 | 2 | 58 | 4.50 | 3.00 | 1.50 |  | 9 |"


def test_quantized_points_are_fitted_apart_and_need_their_weights_folder():
    rows = [{"kind": "answer", "frames": n, "peak_gib": 6.0 + 0.5 * n} for n in (4, 8)]
    rows += [{"kind": "answer", "frames": n, "quantize": "int8", "peak_gib": 5.0 + 0.5 * n} for n in (4, 8)]
    summary = bench.summarise(rows, [24.0], reserve=1.0)
    assert list(summary) == ["answer:peak_gib", "answer[int8]:peak_gib"]
    assert summary["answer[int8]:peak_gib"]["linear"]["intercept_gib"] == pytest.approx(5.0, abs=1e-9)
    for argv in (["--quantize", "int8", "--kinds", "answer"], ["--quantize", "int4", "--weights-folder", "w"]):
        with pytest.raises(SystemExit):  # no folder to load; a training point (not a quantized path users run)
            bench.parse(argv)
    falling = [{"kind": "answer", "frames": n, "quantize": "int8", "peak_gib": 11.0 - 0.4 * n} for n in (4, 8)]
    assert bench.summarise(falling, [24.0], reserve=1.0)["answer[int8]:peak_gib"]["frames_that_fit"].startswith("none")
    args = bench.parse(["--quantize", "int4", "--weights-folder", "w", "--kinds", "answer"])
    assert args.forwarded[args.forwarded.index("--weights-folder") + 1] == "w"


def test_an_encoder_point_runs_its_frames_in_chunks():
    args = bench.parse(["--size", "small", "--dtype", "float32", "--frames-chunk-size", "2"])
    assert args.forwarded[-2:] == ["--frames-chunk-size", "2"] and args.kinds == ["answer", "train"]
    row = bench.run_point(args, "encoder", 3, float("inf"))
    assert "error" not in row, row
    assert row["attn_implementation"] == {"geometry": "sdpa"} and row["frames_chunk_size"] == 2
    assert (row["geometry_tokens"], row["tapped_layers"]) == (3 * (4 * 6 + 5), 4)
    assert row["peak_gib"] >= row["weights_gib"] > 0


@pytest.mark.parametrize("kind", ["answer", "train"])
def test_a_small_point_runs_and_reports_its_memory(kind):
    args = bench.parse(["--size", "small", "--dtype", "float32", "--new-tokens", "2", "--answer-tokens", "2",
                        "--optimizer", "none" if kind == "train" else "adamw"])
    row = bench.run_point(args, kind, 2, float("inf"))  # a fresh process, as the script measures: a worker's memory
    assert "error" not in row, row                    # freed by earlier tests would hide the point's own
    assert row["attn_implementation"] == {"llm": "sdpa", "vision": "sdpa", "geometry": "sdpa"}
    assert row["peak_gib"] >= row["weights_gib"] > 0 and row["visual_tokens_per_frame"] == 6
    if kind == "answer":
        assert row["new_tokens"] == 2
    else:
        assert row["adamw_state_gib"] == pytest.approx(2 * row["trainable_parameters"] * 4 / 2**30)
        assert row["peak_with_adamw_gib"] == pytest.approx(row["peak_gib"] + row["adamw_state_gib"])


def test_rows_are_read_back_from_a_run_file_and_from_point_lines(tmp_path):
    run, point = tmp_path / "run.json", tmp_path / "point.log"
    run.write_text('{"meta": {}, "rows": [{"kind": "answer", "frames": 4, "peak_gib": 6.5}]}')
    point.write_text('warming up\n{"kind": "answer", "frames": 8, "peak_gib": 7.0}\n{}\n')
    rows = [row for path in (run, point) for row in bench.saved_rows(path)]
    assert [(row["frames"], row["peak_gib"]) for row in rows] == [(4, 6.5), (8, 7.0)]
