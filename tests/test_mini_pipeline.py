"""`make mini` end to end at a toy budget (a few steps per stage), as the Makefile runs it, and resumable:
a second run finds every step done and trains nothing."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest
import transformers
from safetensors import safe_open

from gap_mllm.evaluation import scene_generation
from gap_mllm.processing.box_angles import read_box_angles

from lab.mini import pipeline
from lab.mini.ablation import weights_digest
from lab.mini.arms import MAIN_ARM
from lab.mini.claims import write_claims
from lab.mini.claims_table import CLAIMS_SECTION, QUOTE_BEGIN, QUOTE_END, claims_quote
from lab.mini.export import mini_box_angles, mini_training_record
from lab.mini.markdown_sections import document_section
from lab.mini.report import REFUSED_SECTION

RESULT_KEYS = ("grounding_acc@0.25", "grounding_acc@0.5", "detection_f1@0.25", "captioning_cider@0.5",
               "stage1_point_error_m_median", "stage1_label_accuracy")


def shared_caches(toy_run) -> tuple[str, ...]:
    """Settings that give a run of the tests the fixture run's feature cache and prepared datasets: entries are keyed
    by the frozen weights and the sample (training/feature_cache.py), so a run on the fixture's data with its stage-0
    encoders reuses them instead of running the encoders again; nothing a test checks depends on where they are."""
    return (f"cache.directory={toy_run / 'run' / 'feature_cache'}", f"data.cache_dir={toy_run / 'run' / 'hf_datasets'}")


def run_mini(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "run"), "--budget", "toy", "--device", "cpu", "--export",
                              str(tmp_path / "export"), "--table", str(tmp_path / "RESULTS.md"), *extra])
    assert pipeline.main(args) == 0


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    # one stage's budget, as a GPU run sets it; the main arm scored free and constrained
    run_mini(folder, "--stage-set", "stage1:training.max_steps=3", "--constrained-row")
    return folder


def test_every_stage_ran_and_the_table_has_every_figure(toy_run):
    stages = toy_run / "run" / "stages"
    for stage in ("stage0_geometry", "stage0_cameras", "stage0", f"{MAIN_ARM.name}/stage1", f"{MAIN_ARM.name}/stage2"):
        done = json.loads((stages / stage / pipeline.DONE_MARKER).read_text())
        assert done["global_step"] == (3 if stage.endswith("stage1") else 2), stage  # --stage-set reached stage 1 only
    results = json.loads((toy_run / "run" / "results" / "results.json").read_text())
    row = results["arms"][MAIN_ARM.name]
    assert set(RESULT_KEYS) <= set(row)
    assert row["grounding_num_samples"] > 0 and row["detection_num_samples"] > 0 and row["stage1_num_samples"] > 0
    assert {"constant_mean_box", "best_constant_box", "random_same_category"} <= set(results["baselines"]["grounding"])
    # where grounding fails: the selected frame, the object the box points at, against constant boxes
    assert {"grounding_frame_accuracy", "grounding_identification", "grounding_median_centre_error_m"} <= set(row)
    assert 0.0 <= results["baselines"]["grounding"]["best_constant_box"]["identification"]["identification"] <= 1.0
    assert {"depth_abs_rel", "rotation_error_deg_median"} <= set(results["stage0_geometry"]["model"])
    table = (toy_run / "RESULTS.md").read_text()
    assert table == (toy_run / "run" / "results" / "RESULTS.md").read_text()
    assert f"| {MAIN_ARM.name} |" in table and "| baseline: best_constant_box |" in table
    assert "depth AbsRel" in table and "Grounding, where it fails" in table
    # where each stage ran is part of the results (a mixed GPU / CPU run says so in its table)
    assert {results["stages"][stage]["device"] for stage in ("stage0", f"{MAIN_ARM.name}/stage2")} == {"cpu"}
    assert "Where each stage was trained" in table
    # --constrained-row: the same final model decoding inside each task's grammar, its own row, paired with the free one
    constrained = results["arms"][f"{MAIN_ARM.name}_constrained"]
    assert set(RESULT_KEYS) - {"stage1_point_error_m_median", "stage1_label_accuracy"} <= set(constrained)
    assert constrained["grounding_num_samples"] == row["grounding_num_samples"]
    assert f"| {MAIN_ARM.name}_constrained |" in table
    assert f"{MAIN_ARM.name}_constrained" in results["paired"]["arms"]


def test_a_stage_override_names_a_stage_and_a_value():
    assert pipeline.parse_stage_override("stage2:training.bf16=false") == ("stage2", "training.bf16=false")
    for bad in ("training.max_steps=3", "stage3:training.max_steps=3", "stage1:training.max_steps"):
        with pytest.raises(ValueError, match="expected STAGE:SECTION.KEY=VALUE with STAGE one of geometry, cameras, vision, stage1, stage2"):
            pipeline.parse_stage_override(bad)


def test_the_exported_folder_is_a_hub_folder_with_its_card(toy_run):
    export = toy_run / "export"
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and "GAP-MLLM-Mini" in card and f"| {MAIN_ARM.name} |" in card
    assert (export / "config.json").is_file() and (export / "modeling_gap_mllm.py").is_file()
    assert (export / "processor_config.json").is_file() and (export / "tokenizer.json").is_file()
    size = sum(p.stat().st_size for p in export.rglob("*") if p.is_file())
    assert size < 50 * 1024 * 1024
    shards = sorted(export.glob("model*.safetensors"))
    with safe_open(str(shards[0]), "pt") as handle:
        assert handle.get_tensor(next(iter(handle.keys()))).dtype.is_floating_point
    # the orientations of its training boxes: the toy budget's 3 training scenes (predict notes a box of another)
    assert read_box_angles(export) == mini_box_angles(3)
    # what it trained on, for `evaluate`'s held-out check, and its name and version, for a fine-tune's card
    record = json.loads((export / "gap_mllm_training.json").read_text())
    assert record == mini_training_record((3, 2, 2), weights_digest(export))
    assert record["trained_scenes"][0]["scenes"] == ["synth0000_00", "synth0001_00", "synth0002_00"]


def test_a_second_run_resumes_without_training(toy_run, caplog):
    with caplog.at_level(logging.INFO, logger="lab.mini"):  # the pipeline's and its data check's (synth_data) lines
        run_mini(toy_run)
    assert caplog.text.count("done already") == 5  # stage 0 (three recipes), stage 1, stage 2
    assert "is up to date" in caplog.text


def test_a_stage_stopped_at_its_time_limit_is_not_done_and_the_same_call_resumes_it(toy_run):
    from gap_mllm.training.time_limit import TrainingStoppedAtTimeLimit

    geometry = toy_run / "run" / "stages" / "stage0_geometry"
    output = toy_run / "slot" / "stage0"
    start = [f"model.name_or_path={geometry}"]
    limited = pipeline.MiniRun(out=toy_run / "slot", data=toy_run / "run" / "data", budget="toy", device="cpu",
                               overrides=("time_limit_s=1e-9",))  # `python -m lab.mini --set time_limit_s=...`
    with pytest.raises(TrainingStoppedAtTimeLimit, match="after step 1 of 2"):
        pipeline.train_stage(limited, "mini_stage0_vision.yaml", "vision", output, start)
    assert not pipeline.stage_is_done(output) and (output / "checkpoint-1").is_dir()

    resumed = pipeline.MiniRun(out=toy_run / "slot", data=toy_run / "run" / "data", budget="toy", device="cpu")
    pipeline.train_stage(resumed, "mini_stage0_vision.yaml", "vision", output, start)
    assert json.loads((output / pipeline.DONE_MARKER).read_text())["global_step"] == 2


def test_stage1_arms_on_a_given_stage0_folder(toy_run, tmp_path):
    """`--stage0 DIR --stage1-only`: the arms take DIR's encoders (nothing of stage 0 is trained), stop after
    stage 1 with their marker task scored; the run refuses another DIR afterwards and --export without stage 2."""
    source = toy_run / "run" / "stages" / "stage0"
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    common = ["--out", str(tmp_path / "run"), "--data", str(toy_run / "run" / "data"), "--budget", "toy", "--device", "cpu",
              "--arms", "no_geometry_s0", "--stage1-only"]
    assert pipeline.main(parser.parse_args([*common, "--stage0", str(source)])) == 0
    stages = tmp_path / "run" / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["no_geometry_s0", "stage0"]
    assert sorted(p.name for p in (stages / "no_geometry_s0").iterdir()) == ["stage1"]
    done = json.loads((stages / "stage0" / pipeline.DONE_MARKER).read_text())
    assert done["source"] == str(source) and done["recipe"] == "mini_stage0_vision.yaml"  # what trained the source
    with safe_open(str(source / "model.safetensors"), "pt") as a, safe_open(str(stages / "stage0" / "model.safetensors"), "pt") as b:
        key = next(k for k in a.keys() if "geometry_encoder" in k)
        assert a.get_tensor(key).equal(b.get_tensor(key))
    row = json.loads((tmp_path / "run" / "results" / "results.json").read_text())["arms"]["no_geometry_s0"]
    assert row["stage2_evaluated"] is False and row["stage1_num_samples"] > 0
    with pytest.raises(ValueError, match=r"stage0_cameras: .* already holds"):
        pipeline.main(parser.parse_args([*common, "--stage0", str(toy_run / "run" / "stages" / "stage0_cameras")]))
    moved = tmp_path / "moved" / "stage0"  # the same weights under another path: the same origin
    shutil.copytree(source, moved)
    assert pipeline.main(parser.parse_args([*common, "--stage0", str(moved)])) == 0
    assert json.loads((stages / "stage0" / pipeline.DONE_MARKER).read_text())["source"] == str(source)
    with pytest.raises(ValueError, match=r"was copied from .* \(--stage0\); pass --stage0"):
        pipeline.main(parser.parse_args(common))  # without --stage0 it would train a stage 0 and then ignore it
    with pytest.raises(ValueError, match="--stage1-only does not train"):
        pipeline.main(parser.parse_args([*common, "--stage0", str(source), "--export", str(tmp_path / "export")]))


def test_the_main_arm_continues_stage_2_from_a_given_model(toy_run, tmp_path):
    """`--stage1 DIR`: the main arm's stage 2 starts from DIR (copied, marked with its origin; no stage 1 trained),
    and the stage-2 run is recorded as started from that copy; another DIR is refused afterwards."""
    given = toy_run / "run" / "stages" / MAIN_ARM.name / "final"
    stage0 = toy_run / "run" / "stages" / "stage0"
    run = pipeline.MiniRun(out=tmp_path / "run", data=toy_run / "run" / "data", budget="toy", device="cpu",
                           stage1_from=given, overrides=shared_caches(toy_run))
    final = pipeline.run_arm(run, MAIN_ARM, stage0)
    arm = tmp_path / "run" / "stages" / MAIN_ARM.name
    assert final == arm / "final" and (final / "config.json").is_file()
    done = json.loads((arm / "stage1" / pipeline.DONE_MARKER).read_text())
    assert done["source"] == str(given) and "(--stage1)" in done["note"]
    assert json.loads((arm / "stage2" / "gap_mllm_training.json").read_text())["started_from"] == "stage1"
    with pytest.raises(ValueError, match="already holds"):
        pipeline.run_arm(pipeline.MiniRun(out=tmp_path / "run", data=run.data, budget="toy", device="cpu",
                                          stage1_from=stage0), MAIN_ARM, stage0)
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    with pytest.raises(ValueError, match="--stage1-only would train nothing"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "other"), "--stage1", str(given), "--stage1-only"]))


def test_a_data_folder_of_other_scenes_or_other_files_is_refused_and_kept(toy_run, tmp_path, monkeypatch):
    """`--data` may be the user's own folder: it is never deleted or written into (it was deleted and regenerated
    when its scene counts differed from the budget's)."""
    data = toy_run / "run" / "data"
    info = data / "synthrooms" / "dataset_info.json"
    before = info.read_bytes()
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    other_budget = parser.parse_args(["--out", str(tmp_path / "other"), "--data", str(data), "--budget", "full"])
    with pytest.raises(ValueError, match=rf"^--data {data} holds scenes \{{'train': \d+, 'val': \d+, 'test': \d+\}}; "
                                         r"this budget \(full\) needs the mini preset's scenes \{'train': 1200, 'val': 60, "
                                         r"'test': 240\}\. Give another --data folder"):
        pipeline.main(other_budget)
    assert info.read_bytes() == before and (data / "annotations").is_dir()
    own = tmp_path / "my_scannet"
    (own / "annotations").mkdir(parents=True)
    (own / "annotations" / "mine.json").write_text("[]")
    with pytest.raises(ValueError, match=r"is not empty \(annotations/\) and holds no SynthRooms data"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "other"), "--data", str(own), "--budget", "toy"]))
    assert (own / "annotations" / "mine.json").read_text() == "[]"


def test_device_cuda_without_cuda_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.torch.cuda, "is_available", lambda: False)
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    with pytest.raises(ValueError, match=r"^device=cuda, but torch sees no CUDA device \(torch .*\); use --device auto \(or "
                                         r"cpu\) to train on the CPU$"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "run"), "--device", "cuda", "--budget", "toy"]))
    assert not (tmp_path / "run").exists()


def test_an_exported_final_model_taken_as_stage_1_names_the_stages_that_made_it():
    """`--stage1 mini/gap-mllm-mini` takes a released final model: its provenance names the stage 1 and stage 2
    that trained it (the fourth release's, as the fifth release's table shows), and `--stage0` the encoders' note."""
    released = {"stages": {
        "gap_gated_s0/stage1": {"recipe": "mini_stage1.yaml", "global_step": 1000, "device": "cpu"},
        "gap_gated_s0/stage2": {"recipe": "mini_stage2.yaml", "global_step": 800, "device": "cpu"},
        "stage0": {"recipe": "given (--stage0)", "device": "cuda", "note": "copied from runs/stage0 (--stage0)"}}}
    source = Path("mini/gap-mllm-mini")
    stage1 = pipeline.exported_origin(released, source, "--stage1", "stage1")
    assert stage1 == {"recipe": "given (--stage1)", "global_step": None, "device": "cpu", "source": str(source),
                      "note": "copied from mini/gap-mllm-mini (--stage1); an exported final model, made by "
                              "gap_gated_s0/stage1: mini_stage1.yaml, 1000 steps, cpu; "
                              "gap_gated_s0/stage2: mini_stage2.yaml, 800 steps, cpu"}
    stage0 = pipeline.exported_origin(released, source, "--stage0", "stage0")
    assert stage0["recipe"] == "given (--stage0)" and stage0["device"] == "cuda"
    assert stage0["note"] == "copied from mini/gap-mllm-mini (--stage0); its stage0: copied from runs/stage0 (--stage0)"


def _fresh_seed_found(ship: bool) -> dict:
    """What `fresh_results` returns (lab/mini/fresh_seeds.py) with a decision that ships or fails one check."""
    cells = {"grounding": {"num_samples": 4, "acc@0.25": 0.25, "acc@0.25_ci95": [0.05, 0.7], "frame_accuracy": 0.5,
                           "frame_accuracy_ci95": [0.2, 0.8]},
             "detection": {"num_samples": 4, "f1@0.25": 0.1, "f1@0.25_ci95": [0.0, 0.2]},
             "captioning": {"num_samples": 4, "cider@0.5": 0.5, "cider@0.5_ci95": [0.2, 0.8]},
             "marker": {"num_samples": 4, "point_error_m_median": 1.0, "point_error_m_median_ci95": [0.5, 1.5]}}
    base = {"grounding": {"num_samples": 4, "candidates": 2, "best_constant_box": {"acc@0.25": 0.0, "acc@0.25_ci95": [0.0, 0.5]},
                          "frame_0": {"frame_accuracy": 0.25, "frame_accuracy_ci95": [0.05, 0.7]}},
            "detection": {"category_mean_boxes": {"f1@0.25": 0.0, "f1@0.25_ci95": [0.0, 0.0]}},
            "captioning": {"constant_caption": {"cider@0.5": 0.1, "cider@0.5_ci95": [0.0, 0.2]}},
            "marker": {"constant_point": {"point_error_m_median": 2.0, "point_error_m_median_ci95": [1.5, 2.5]}}}
    checks = {"grounding Acc@0.25 ≥ 12 %": {"passed": True, "detail": "25.0%"},
              "CIDEr@0.5 not worse": {"passed": ship, "detail": "-0.30 [-0.50, -0.10]"}}
    return {"seeds": [5601], "scenes_per_seed": 1, "models": {MAIN_ARM.name: cells, "release_reference": cells},
            "baselines": base, "candidate": MAIN_ARM.name, "reference": "release_reference",
            "decision": {"ship": ship, "checks": checks}}


@pytest.mark.parametrize("ship", [False, True])
def test_the_release_rule_decides_the_export(toy_run, tmp_path, monkeypatch, capsys, ship):
    """--release-reference: the fresh-seed rows and the rule's checks are in the table; a candidate that fails the
    rule is not exported (exit status 4, the failed check named) and leaves the rows of --table (the release's table) as they were,
    its own table in the run's results, but for a section of the fresh-seed rows of the release and the candidate
    (replaced by the next refusal); one that passes is exported and its table copied to --table."""
    calls = []

    def fresh_results(out, train_data, models, **kwargs):
        calls.append((set(models), kwargs["candidate"], kwargs["reference"]))
        return _fresh_seed_found(ship)

    monkeypatch.setattr(pipeline, "fresh_results", fresh_results)
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    export = tmp_path / "sixth"
    args = parser.parse_args(["--out", str(toy_run / "run"), "--budget", "toy", "--device", "cpu", "--export", str(export),
                              "--release-reference", str(toy_run / "export"), "--table", str(tmp_path / "RESULTS.md")])
    (tmp_path / "RESULTS.md").write_text("the release's table\n")
    status = pipeline.main(args)
    assert calls == [({MAIN_ARM.name, "release_reference"}, MAIN_ARM.name, "release_reference")]
    table = (toy_run / "run" / "results" / "RESULTS.md").read_text()
    assert "Fresh seeds (5601; 1 scenes each" in table
    assert f"the candidate **{'ships' if ship else 'does not ship'}**" in table
    if ship:
        assert status == 0 and (export / "config.json").is_file()
        assert (tmp_path / "RESULTS.md").read_text() == table
    else:
        assert status == pipeline.RELEASE_REFUSED_STATUS == 4 and not export.exists()
        release = (tmp_path / "RESULTS.md").read_text()
        head, section = release.split(f"\n\n{REFUSED_SECTION}\n\n")
        assert head == "the release's table"  # the release's own rows as they were
        reference = "export (--release-reference)"  # the release folder's name
        assert f"| release: {reference} | 25.0 [5.0, 70.0] | 50.0 [20.0, 80.0] |" in section
        assert f"| candidate: {MAIN_ARM.name} (refused) | 25.0 [5.0, 70.0] |" in section
        assert (f"Release rule (candidate: {MAIN_ARM.name} (refused) against release: {reference}, paired on the same "
                "samples): the candidate **does not ship**.") in section
        assert "| CIDEr@0.5 not worse | no | -0.30 [-0.50, -0.10] |" in section
        error = capsys.readouterr().err
        assert "the release rule failed on the fresh seeds (CIDEr@0.5 not worse)" in error
        assert f"--table {tmp_path / 'RESULTS.md'} keeps the release's rows and gains the fresh-seed rows" in error
        # a second refusal replaces the section of the first, the release's rows still as they were
        assert pipeline.main(args) == 4
        assert (tmp_path / "RESULTS.md").read_text() == release


def test_a_shipped_release_gains_its_constrained_row_as_the_pipeline_scores_it(toy_run, tmp_path):
    """lab/mini/constrained_row.py on an exported release without the row: the row it scores on the shipped folder is
    the one `--constrained-row` scored in the run (same model, samples and settings); the folder's results, its
    card and the table gain it, and the table keeps the section a refused candidate added."""
    from lab.mini.constrained_row import add_constrained_row
    from lab.mini.report import arm_results, results_document

    release = tmp_path / "release"
    shutil.copytree(toy_run / "export", release)
    results = json.loads((release / "evaluation_results.json").read_text())
    name = f"{MAIN_ARM.name}_constrained"
    results["arms"].pop(name, None)  # the module's other tests export this folder again, with or without the row
    (release / "evaluation_results.json").write_text(json.dumps(results))
    # the row the run's --constrained-row scored (the fixture's run), from its answers
    run = pipeline.MiniRun(out=toy_run / "run", data=toy_run / "run" / "data", budget="toy")
    expected = arm_results(run, pipeline.constrained_arm(MAIN_ARM))
    refused = f"\n\n{REFUSED_SECTION}\n\nthe refused candidate's fresh-seed rows\n"
    table = tmp_path / "RESULTS.md"
    table.write_text("the release's table" + refused)

    row = add_constrained_row(release, toy_run / "run" / "data", tmp_path / "scored", budget="toy", table=table)
    assert row == expected
    written = json.loads((release / "evaluation_results.json").read_text())
    assert list(written["arms"]) == [MAIN_ARM.name, name] and written["arms"][name] == expected
    assert table.read_text() == results_document(written).rstrip("\n") + refused
    assert f"| {name} |" in table.read_text()
    assert f"| {name} |" in (release / "README.md").read_text()
    with pytest.raises(ValueError, match="evaluated at budget 'toy', not 'full'"):
        add_constrained_row(release, toy_run / "run" / "data", tmp_path / "again", table=table)


def test_a_toy_ablation_answers_the_claims_of_the_arms_it_trained(toy_run, tmp_path, monkeypatch):
    """`--ablation` at the toy budget with the main arm and the arm without geometry, as `make mini-ablation` runs it:
    after each arm the claims so far are in the run's claims.json and in --table's claims section (the release's
    rows untouched); the geometry claim is measured on the fresh seeds and the test split, the others are named as
    not evaluated yet. On a fresh machine (--out gone, the run state left) the same command trains nothing and
    answers nothing: every stage comes back from its state and every answer from the arm's kept answers, and the
    claims are the same. There the claims are written once, after the last arm came back: written after the first,
    they would have said "not evaluated yet" of the second until it was back, and a stop in between would have left
    --table and the quotes so."""

    table = tmp_path / "RESULTS.md"
    release = (toy_run / "RESULTS.md").read_text()
    table.write_text(release)
    readme = tmp_path / "README.md"
    readme.write_text(f"# README\n\n{QUOTE_BEGIN}\n{QUOTE_END}\n\nthe rest\n")
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "run"), "--data", str(toy_run / "run" / "data"), "--budget", "toy",
                              "--device", "cpu", "--stage0", str(toy_run / "run" / "stages" / "stage0"), "--ablation",
                              "--arms", "gap_gated_s0", "no_geometry_s0", "--table", str(table),
                              "--quote", str(readme), "--run-state", str(tmp_path / "state"),
                              # float32: the ablation's bf16 autocast is refused on a CPU without native bfloat16
                              # (training/device.py), and the test runs on either kind of CPU
                              "--stage-set", "stage2:cpu_bf16_autocast=false",
                              *(part for setting in shared_caches(toy_run) for part in ("--set", setting))])
    written_over = []  # the arms of each call of write_claims

    def recorded_write_claims(run, arms, *args):
        written_over.append(list(arms))
        return write_claims(run, arms, *args)

    monkeypatch.setattr(pipeline, "write_claims", recorded_write_claims)
    assert pipeline.main(args) == 0
    assert written_over == [["gap_gated_s0"], ["gap_gated_s0", "no_geometry_s0"]]
    first = (tmp_path / "run" / "results" / "claims.json").read_text()
    claims = json.loads(first)
    for where in ("fresh_seeds", "test"):
        geometry, stage1, gated, objective, objective_in_stage2 = claims[where]["claims"]
        assert (geometry["arm"], geometry["without"]) == ("gap_gated_s0", "no_geometry_s0")
        assert set(geometry["paired"]) == {"grounding_acc@0.25", "frame_accuracy", "detection_f1@0.25",
                                           "captioning_cider@0.5", "marker_point_error_m_median"}
        assert geometry["paired"]["grounding_acc@0.25"]["num_groups"] == claims[where]["num_scenes"] > 0
        assert stage1["missing"] == ["gap_gated_stage2_only_s0"] and gated["missing"] == ["gap_add_s0"]
        assert objective["missing"] == ["gap_gated_no_gap_s0"]
        assert objective_in_stage2["missing"] == ["gap_gated_stage2_only_s0", "gap_gated_no_gap_s0"]
    written = table.read_text()
    section = document_section(written, CLAIMS_SECTION)
    assert written.replace(section, "").rstrip("\n") == release.rstrip("\n")
    assert section == (tmp_path / "run" / "results" / "CLAIMS.md").read_text()
    assert "gap_gated_s0 − no_geometry_s0 | " in section and "not evaluated yet: gap_add_s0" in section
    assert readme.read_text() == f"# README\n\n{QUOTE_BEGIN}\n{claims_quote(claims)}{QUOTE_END}\n\nthe rest\n"

    assert sorted(path.name for path in (tmp_path / "state" / "gap_gated_s0").iterdir()) == ["answers", "stage1", "stage2"]
    shutil.rmtree(tmp_path / "run")  # a fresh machine: only the run state is left

    class NoGeneration:
        def __init__(self, *args, **kwargs):
            raise AssertionError("an answer was generated again on the fresh machine")

    def no_training(*args, **kwargs):
        raise AssertionError("a stage trained again on the fresh machine")

    monkeypatch.setattr(scene_generation, "SceneGenerator", NoGeneration)
    monkeypatch.setattr(transformers.Trainer, "train", no_training)
    written_over.clear()
    assert pipeline.main(args) == 0
    assert (tmp_path / "run" / "results" / "claims.json").read_text() == first
    assert written_over == [["gap_gated_s0", "no_geometry_s0"]]


def test_the_ablation_table_must_be_an_existing_results_file(tmp_path):
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    with pytest.raises(FileNotFoundError, match="--table .*missing.md: with --ablation it names the release's RESULTS.md"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "run"), "--budget", "toy", "--ablation",
                                         "--table", str(tmp_path / "missing.md")]))
    assert not (tmp_path / "run").exists()


def test_an_ablation_over_some_arms_is_refused_a_table_whose_other_arms_answers_are_kept(tmp_path):
    """The claims are written over the run's arms: a run of one arm with --table and --quote, beside a run state that
    keeps another arm's answers (an earlier run answered it), would rewrite that arm's claims as "not evaluated yet".
    Refused by name before anything is written; naming every answered arm, or leaving the outputs out, goes on."""
    from gap_mllm.evaluation.run_fingerprint import RUN_FINGERPRINT_FILE
    from lab.mini.claims import check_no_claims_lost
    from lab.mini.kept_answers import answers_folder

    state = tmp_path / "state"
    answered = answers_folder(state, "gap_gated_s0") / "results" / "grounding"
    answered.mkdir(parents=True)
    (answered / RUN_FINGERPRINT_FILE).write_text("{}")
    (answers_folder(state, "gap_add_s0") / "results").mkdir(parents=True)  # a folder without answers: none kept
    table = tmp_path / "RESULTS.md"
    table.write_text("# results\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{QUOTE_BEGIN}\n{QUOTE_END}\n")
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "run"), "--budget", "toy", "--ablation", "--arms", "no_geometry_s0",
                              "--run-state", str(state), "--table", str(table), "--quote", str(readme)])
    with pytest.raises(ValueError, match=f"^--table {table} and --quote {readme} would be rewritten over no_geometry_s0 "
                                         f"alone, and the claims of gap_gated_s0, whose answers --run-state {state} "
                                         "keeps, would read \"not evaluated yet\": name those arms too"):
        pipeline.main(args)
    assert not (tmp_path / "run").exists() and table.read_text() == "# results\n"
    check_no_claims_lost(state, ["gap_gated_s0", "no_geometry_s0"], [f"--table {table}"])
    check_no_claims_lost(state, ["no_geometry_s0"], [])


def test_a_quoted_file_without_the_block_or_a_quote_without_the_ablation_is_refused_before_any_step(tmp_path):
    plain = tmp_path / "README.md"
    plain.write_text("# no block\n")
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    with pytest.raises(ValueError, match=f"--quote {plain} has no block to rewrite: it needs the line"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "run"), "--budget", "toy", "--ablation",
                                         "--quote", str(plain)]))
    with pytest.raises(ValueError, match="quotes the claims of --ablation, which this run does not train"):
        pipeline.main(parser.parse_args(["--out", str(tmp_path / "run"), "--budget", "toy", "--quote", str(plain)]))
    assert not (tmp_path / "run").exists() and plain.read_text() == "# no block\n"
