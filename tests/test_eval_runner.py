"""Task runners end to end on SynthRooms data: oracle = 100%, tiny-model runs, resume, CLI, evaluate modules; boxes
with negated sizes score as no box by default and as the official code scores them under official_compat."""

import argparse
import json

import pytest

from gap_mllm.cli import evaluate as evaluate_cli
from gap_mllm.cli.errors import UserError
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation import generation
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.tasks_gap_mllm import Box3D, parse_detection, serialize_detection

TASKS = ("detection", "grounding", "captioning", "reconstruction", "spatial_qa")


@pytest.mark.parametrize("task", TASKS)
def test_oracle_predictions_score_100_percent(task, synth_data, tmp_path):
    oracle = write_oracle_predictions(task, synth_data, tmp_path / "oracle.jsonl")
    summary = run_evaluation(task, synth_data, tmp_path / "out", predictions_file=oracle, meteor=False)
    m = summary["metrics"]
    if task == "detection":
        assert summary["headline"]["value"] == 1.0
        assert all(v["f1"] == 1.0 and v["ap50"] == 1.0 for v in m["per_category"].values())
    elif task == "grounding":
        assert m["acc@0.25"] == 1.0 and m["acc@0.5"] == 1.0
        assert m["miou"] > 0.9  # the answer text rounds to 2 decimals, so IoU is just below 1
    elif task == "captioning":
        # Scan2Cap's scores at the 0.5 IoU gate, named with it (C@0.5): the README's and RESULTS' CIDEr@0.5
        assert m["bleu4@0.5"] == pytest.approx(1.0, abs=1e-6) and m["rouge_l@0.5"] == pytest.approx(1.0)
        assert m["cider@0.5"] > 1.0  # CIDEr is unbounded and corpus-dependent
        assert summary["headline"]["name"] == "cider@0.5" and "cider" not in m and "bleu4" not in m
    elif task == "reconstruction":
        assert m["raw"]["overall"] == 0.0 and m["aligned"]["overall"] == pytest.approx(0.0, abs=1e-9)
    else:
        assert summary["headline"]["value"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == summary["num_samples"] > 0
    assert {"id", "index", "raw", "parsed", "score"} <= set(rows[0])


def test_official_compat_oracle_also_scores_on_present_categories(synth_data, tmp_path):
    """Official mode averages over the verbatim cate31 (absent categories count 0), so even an oracle
    scores below 1 on data that lacks most categories; per-category F1 is still 1."""
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")
    summary = run_evaluation("detection", synth_data, tmp_path / "out", predictions_file=oracle, official_compat=True, plots=False)
    per_category = summary["metrics"]["per_category"]
    assert all(v["f1"] == 1.0 for v in per_category.values())
    assert summary["headline"]["value"] < 1.0


def _count_generate_calls(monkeypatch):
    calls = []
    original = generation.BatchGenerator.generate

    def counting(self, requests):
        calls.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(generation.BatchGenerator, "generate", counting)
    return calls


def test_model_run_writes_every_file_and_resumes(synth_data, tiny_checkpoint, tmp_path, monkeypatch):
    calls = _count_generate_calls(monkeypatch)
    out = tmp_path / "det"
    summary = run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, batch_size=2, max_new_tokens=6,
                             limit=2, progress=False)
    assert calls == [2]  # one batch of two, left padded
    for name in ("raw_outputs.rank0.jsonl", "samples.jsonl", "summary.json", "summary.md", "per_category.png", "iou_hist.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "samples").glob("*.png"))) == 2
    assert json.loads((out / "summary.json").read_text())["num_samples"] == 2
    assert "| **f1**" in (out / "summary.md").read_text()

    # crash after the first sample: the torn second line is ignored and only that sample is redone
    raw = out / "raw_outputs.rank0.jsonl"
    lines = raw.read_text().splitlines()
    raw.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    again = run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, batch_size=2, max_new_tokens=6,
                           limit=2, progress=False)
    assert calls == [2, 1]
    assert again["metrics"]["num_samples"] == 2

    # everything done: nothing is generated and the summary is reproduced (the same run: the same token cap;
    # another cap is another run, refused: tests/test_eval_run_fingerprint.py)
    third = run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, limit=2, max_new_tokens=6,
                           progress=False, plots=False)
    assert calls == [2, 1]
    assert third["metrics"] == again["metrics"]


def test_two_stage_grounding_with_tiny_model(synth_data, tiny_checkpoint, tmp_path, monkeypatch):
    calls = _count_generate_calls(monkeypatch)
    summary = run_evaluation("grounding", synth_data, tmp_path / "g", model_dir=tiny_checkpoint, max_new_tokens=4,
                             limit=1, progress=False, plots=False)
    assert calls == [1, 1]  # stage 1 (frame selection), then stage 2 (box)
    row = json.loads((tmp_path / "g" / "samples.jsonl").read_text())
    assert len(row["raw"]) == 2 and row["parsed"]["frame"] == 0  # untrained: parse fails -> frame 0
    assert summary["metrics"]["num_samples"] == 1 and row["score"] == 0.0


def test_cli_oracle_roundtrip(synth_data, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    oracle = tmp_path / "qa.jsonl"
    assert evaluate_cli.main(parser.parse_args(["--task", "spatial_qa", "--data", str(synth_data), "--write-oracle", str(oracle)])) == 0
    args = parser.parse_args(["--task", "spatial_qa", "--data", str(synth_data), "--predictions", str(oracle),
                              "--out", str(tmp_path / "spatial_qa"), "--no-plots", "--quiet"])
    assert evaluate_cli.main(args) == 0
    assert "overall = 1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a source (model / predictions / oracle) is required
        parser.parse_args(["--task", "spatial_qa", "--data", str(synth_data)])


def test_cli_prints_the_headline_rounded_as_the_summary_table(synth_data, tmp_path, capsys, monkeypatch):
    """`gap-mllm evaluate` prints its headline to 4 decimals, as summary.md's table does (no 0.16279069767441862 on
    the terminal); the summary it is given (what summary.json holds) keeps the full float."""
    from gap_mllm.evaluation.reports import markdown_table

    value = 7 / 43  # 0.16279069767441862, the Mini's grounding Acc@0.25 on 43 samples
    summary = {"task": "grounding", "num_samples": 43, "metrics": {"acc@0.25": value},
               "headline": {"name": "acc@0.25", "description": "Acc@0.25", "value": value}}
    monkeypatch.setattr(evaluate_cli, "run_evaluation", lambda *args, **kwargs: summary)
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("")
    out = tmp_path / "scored"
    assert evaluate_cli.main(parser.parse_args(["--task", "grounding", "--data", str(synth_data), "--predictions",
                                                str(predictions), "--out", str(out), "--quiet"])) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"grounding: acc@0.25 = 0.1628  (43 samples) -> {out}"
    assert "| **acc@0.25** (Acc@0.25) | **0.1628** |" in markdown_table(summary, "grounding")
    assert summary["headline"]["value"] == 0.16279069767441862


def test_cli_says_when_limit_is_more_than_the_samples(synth_data, tmp_path, capsys):
    """`--limit` above what the annotation file holds scores all of it, and the printed line says so; a limit that
    cuts the file (or none) prints the plain count."""
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    oracle = tmp_path / "qa.jsonl"
    assert evaluate_cli.main(parser.parse_args(["--task", "spatial_qa", "--data", str(synth_data), "--write-oracle", str(oracle)])) == 0
    total = len(oracle.read_text().splitlines())
    printed = {}
    for limit in (1_000_000, 1):
        args = parser.parse_args(["--task", "spatial_qa", "--data", str(synth_data), "--predictions", str(oracle),
                                  "--out", str(tmp_path / f"limit{limit}"), "--limit", str(limit), "--no-plots", "--quiet"])
        capsys.readouterr()
        assert evaluate_cli.main(args) == 0
        printed[limit] = capsys.readouterr().out.strip().splitlines()[-1]
    assert total > 1 and printed[1_000_000].endswith(
        f"({total} samples: all the annotation file holds, fewer than --limit 1000000) -> {tmp_path / 'limit1000000'}")
    assert printed[1].endswith(f"(1 samples) -> {tmp_path / 'limit1'}")


def test_write_oracle_with_out_is_refused_in_one_line(synth_data, tmp_path, capsys):
    """--out is not passed over in silence (the oracle file written, no folder, exit 0): refused before anything is
    written, by the early check and by `python -m gap_mllm.cli.evaluate` alike."""
    oracle, out = tmp_path / "oracle.jsonl", tmp_path / "out"
    line = (f"--write-oracle writes the predictions file {oracle} and no folder, so --out {out} would be passed "
            f"over: leave --out out (then score the file with --predictions {oracle} --out {out})")
    argv = ["evaluate", "--task", "detection", "--data", str(synth_data), "--write-oracle", str(oracle),
            "--out", str(out)]
    assert gap_mllm(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"gap-mllm evaluate: error: {line}"]
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    with pytest.raises(UserError) as error:
        evaluate_cli.main(parser.parse_args(argv[1:]))
    assert str(error.value) == line
    assert not oracle.exists() and not out.exists()


def test_evaluate_local_metric_modules():
    evaluate = pytest.importorskip("evaluate")
    from gap_mllm.evaluation.metric_modules import metric_module_path

    detection = evaluate.load(metric_module_path("gap_detection"))
    text = '```json\n[\n\t{"label": "chair", "bbox_3d": [0, 0, 0, 2, 2, 2, 0, 0, 0]}\n]```'
    gt = [[{"label": "chair", "bbox_3d": [0, 0, 0, 2, 2, 2, 0, 0, 0]}, {"label": "bed", "bbox_3d": [5, 0, 0, 1, 1, 1, 0, 0, 0]}]]
    out = detection.compute(predictions=[text], references=gt)
    assert out["per_category"]["chair"]["f1"] == 1.0 and out["per_category"]["bed"]["recall"] == 0.0
    grounding = evaluate.load(metric_module_path("gap_grounding"))
    identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    out = grounding.compute(predictions=['{"bbox_3d": [0, 0, 0, 1, 1, 2, 0, 0, 0]}', "no box"],
                            references=[{"gt_bbox": [0, 0, 0, 2, 2, 2, 0, 0, 0], "camera_to_world": identity}] * 2)
    assert out["acc@0.25"] == 0.5 and out["miou"] == 0.125
    qa = evaluate.load(metric_module_path("gap_spatial_qa"))
    assert qa.compute(predictions=["A."], references=["A"], question_types=["object_rel_distance"])["overall"] == 1.0


def test_cli_evaluates_the_embedded_mini_like_predict_and_demo(synth_data, tmp_path, capsys, monkeypatch):
    """`gap-mllm evaluate --model mini` resolves to the embedded GAP-MLLM-Mini's folder, as `--model mini` does
    for predict and demo (cli/loading.py resolve_model_source)."""
    from gap_mllm.mini import default_model_path

    used, original = [], evaluate_cli.run_evaluation
    monkeypatch.setattr(evaluate_cli, "run_evaluation", lambda *a, **k: used.append(k["model_dir"]) or original(*a, **k))
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    args = parser.parse_args(["--task", "reconstruction", "--model", "mini", "--data", str(synth_data), "--out",
                              str(tmp_path / "mini"), "--limit", "1", "--max-new-tokens", "8", "--no-plots", "--quiet"])
    assert evaluate_cli.main(args) == 0
    assert used == [str(default_model_path())]
    assert json.loads((tmp_path / "mini" / "summary.json").read_text())["num_samples"] == 1
    assert "(1 samples) ->" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- negated box sizes


def negated(box: list) -> list:
    return [*box[:3], *(-v for v in box[3:6]), *box[6:]]


def negated_oracle(task, data, path):
    """The oracle predictions of `task` with every box size negated."""
    from gap_mllm.evaluation.runner import write_oracle_predictions

    oracle = write_oracle_predictions(task, data, path)
    rows = [json.loads(line) for line in oracle.read_text().splitlines()]
    for row in rows:
        if task == "grounding":
            box = json.loads(row["raw"][1])["bbox_3d"]
            row["raw"][1] = json.dumps({"bbox_3d": negated(box)})
        else:
            boxes = parse_detection(row["raw"][0]).boxes
            row["raw"][0] = serialize_detection([Box3D.from_list(negated(b.to_list()), label=b.label) for b in boxes])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_negated_sizes_do_not_score_as_perfect_in_the_default_mode(synth_data, tmp_path):
    from gap_mllm.evaluation.runner import run_evaluation

    grounding = run_evaluation("grounding", synth_data, tmp_path / "g", plots=False,
                               predictions_file=negated_oracle("grounding", synth_data, tmp_path / "g.jsonl"))["metrics"]
    assert grounding["acc@0.25"] == 0.0 and grounding["unscored"] == {"no box in the answer": grounding["num_samples"]}
    rows = [json.loads(line) for line in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    assert all(r["parse_error"].startswith("bbox_3d has a negative size") for r in rows)
    detection = run_evaluation("detection", synth_data, tmp_path / "d", plots=False,
                               predictions_file=negated_oracle("detection", synth_data, tmp_path / "d.jsonl"))["metrics"]
    total_gt = sum(c["fn"] for c in detection["per_category"].values())
    assert detection["f1"] == 0.0 and detection["dropped_predictions"] == total_gt > 0


def test_negated_sizes_score_as_the_official_code_scores_them_in_official_compat(synth_data, tmp_path):
    """The official IoU (pytorch3d on the corners) orients faces by the box centre: a negated size is the
    same box there, so the official evaluator scores this oracle as perfect, and official_compat does too."""
    from gap_mllm.evaluation.runner import run_evaluation

    grounding = run_evaluation("grounding", synth_data, tmp_path / "g", plots=False, official_compat=True,
                               predictions_file=negated_oracle("grounding", synth_data, tmp_path / "g.jsonl"))["metrics"]
    assert grounding["acc@0.25"] == 1.0 and grounding["unscored"] == {}
    detection = run_evaluation("detection", synth_data, tmp_path / "d", plots=False, official_compat=True,
                               predictions_file=negated_oracle("detection", synth_data, tmp_path / "d.jsonl"))["metrics"]
    assert all(c["f1"] == 1.0 for c in detection["per_category"].values()) and detection["dropped_predictions"] == 0


def test_official_stage2_reading():
    from gap_mllm.processing.tasks.grounding import official_stage2_box

    box = [0.1, 0.2, 1.5, 0.5, 0.6, 0.7, 0.1, 0.0, 0.0]
    assert official_stage2_box("```json\n" + json.dumps({"bbox_3d": box}) + "\n```") == (box, None)
    assert official_stage2_box(json.dumps({"bbox_3d": [*box, 9.0]}))[0] == box  # the official slices take the first 9
    assert official_stage2_box(json.dumps(box))[0] is None  # a bare list: `list["bbox_3d"]` fails officially
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, "1", 0, 0, 0]}')[0] is None
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}')[0] == [0, 0, 1, -1, -1, -1, 0, 0, 0]
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0], }')[0] is not None  # a Python literal
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, true]}')[0] is None  # JSON true: eval fails
