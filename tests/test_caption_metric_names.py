"""One caption metric, one name: Scan2Cap's scores at the 0.5 IoU gate are named with it (`cider@0.5`, `bleu4@0.5`,
`meteor@0.5`, `rouge_l@0.5`) in `gap-mllm evaluate`'s summary and printed line, in the lmms-eval task's metric names
(its table) and in mini/RESULTS.md's CIDEr@0.5; readers of saved summaries accept the names written before."""

import re
from pathlib import Path

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.lmms_eval_plugin import task_yaml
from gap_mllm.evaluation.lmms_eval_plugin.task_functions import METRICS
from gap_mllm.evaluation.tasks import get_task
from gap_mllm.processing.scoring.caption_metrics import gated_name, gated_score

from .conftest import write_small_synth

GATED = {"cider@0.5", "bleu1@0.5", "bleu2@0.5", "bleu3@0.5", "bleu4@0.5", "rouge_l@0.5", "meteor@0.5"}


def test_the_caption_summary_names_every_gated_score_with_its_gate():
    task = get_task("captioning")
    records = [{"id": "a", "annotations": ["a red chair ."], "iou": 1.0},
               {"id": "b", "annotations": ["a wooden table ."], "iou": 0.3}]  # b's caption is gated out
    _, summary = task.evaluate(records, [["a red chair ."], ["a wooden table ."]], meteor=False)
    assert GATED <= set(summary) and not {"cider", "bleu4", "rouge_l", "meteor"} & set(summary)
    assert summary["num_gated"] == 1 and summary["meteor@0.5"] is None
    assert task.headline[0] == "cider@0.5" and set(task.logged_metrics) == {"cider@0.5", "bleu4@0.5"}


def test_saved_summaries_are_read_with_the_old_or_the_new_name():
    assert gated_name("cider") == "cider@0.5" and gated_name("bleu4", 0.25) == "bleu4@0.25"
    assert gated_score({"cider@0.5": 0.33}, "cider") == 0.33
    assert gated_score({"cider": 0.31}, "cider") == 0.31  # a summary written before the scores carried the gate


def test_the_lmms_eval_table_names_the_metrics_as_the_summary_does():
    names = re.findall(r'^  - metric: "([^"]+)"$', task_yaml("gap_scan2cap"), flags=re.MULTILINE)
    assert names == list(METRICS["captioning"]) == ["cider@0.5", "bleu4@0.5", "meteor@0.5", "rouge_l@0.5"]
    assert all(key == name for name, key in METRICS["captioning"].items())  # the summary's own keys


def test_gap_mllm_evaluate_prints_the_gated_name(tmp_path, capsys):
    data = write_small_synth(tmp_path / "data")
    oracle = tmp_path / "oracle.jsonl"
    assert gap_mllm(["evaluate", "--task", "captioning", "--data", str(data), "--write-oracle", str(oracle)]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert gap_mllm(["evaluate", "--task", "captioning", "--data", str(data), "--predictions", str(oracle), "--out",
                     str(out), "--no-meteor", "--no-plots", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"captioning: cider@0\.5 = [0-9.]+  \(\d+ samples\) -> {re.escape(str(out))}", line), line
    # --write-oracle onto an existing file (the user's, or this oracle): refused, the file left byte for byte
    kept = oracle.read_bytes()
    assert gap_mllm(["evaluate", "--task", "captioning", "--data", str(data), "--write-oracle", str(oracle)]) != 0
    assert f"{oracle}: the file exists; oracle predictions go to a new file only" in capsys.readouterr().err
    assert oracle.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval", "oracle.jsonl"]
    table = (out / "summary.md").read_text()
    assert "| **cider@0.5** (CIDEr at the 0.5 IoU gate (Scan2Cap's C@0.5), IDF over the evaluated samples) |" in table
    assert "| bleu4@0.5 |" in table and "| cider |" not in table


def test_results_table_header_is_cider_at_the_gate():
    results = Path(__file__).resolve().parents[1] / "mini" / "RESULTS.md"
    header = next(line for line in results.read_text().splitlines() if line.startswith("| model |"))
    assert "| CIDEr@0.5 |" in header
