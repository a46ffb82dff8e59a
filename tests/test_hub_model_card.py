"""The generated model card: metadata, licence consequence of the VGGT weights, evaluation table from
the evaluation runner's summaries, and an offline round trip through `ModelCard.load`."""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from gap_mllm.cli.model_card import build_model_card, geometry_licence, parameter_counts, replace_section
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("card") / "ckpt")


def write_summary(folder, task="detection", value=0.4321, name="f1", description="mean F1 over cate31 (IoU > 0.25)",
                  annotation_file=None):
    """A summary.json in the evaluation runner's format (evaluation/runner.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    annotation_file = annotation_file or {"detection": "scannet_det_val.json"}.get(task, f"scannet_{task}_val.json")
    summary = {"task": task, "annotation_file": annotation_file, "num_samples": 12, "official_compat": True,
               "source": "model", "headline": {"name": name, "description": description, "value": value},
               "metrics": {name: value}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_card_without_results_round_trips_offline(checkpoint, tmp_path):
    card = build_model_card(checkpoint, repo_id="org/gap-mllm")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model == "Qwen/Qwen3-VL-2B-Instruct"
    assert loaded.data.pipeline_tag == "image-text-to-text" and loaded.data.library_name == "transformers"
    assert loaded.data.license == "other" and loaded.data.license_name == "gap-mllm-non-commercial"
    assert "custom_code" in loaded.data.tags and "untrained" not in loaded.data.tags
    assert loaded.data.eval_results is None
    text = loaded.text
    assert "No evaluation results are recorded for this checkpoint yet." in text
    for section in ("## This checkpoint", "## Model", "## Training data", "## Intended use and limitations", "## Licences",
                    "## The GAP-MLLM recipe (paper)", "## Evaluation", "## Citation"):
        assert text.count(section) == 1, section
    assert text.index("## This checkpoint") < text.index("## Model") < text.index("## Training data") < text.index("## Use")
    assert "**non-commercial**" in text and "arXiv:2603.16461" in text


def test_evaluation_table_and_model_index_come_from_summaries(checkpoint, tmp_path):
    det = write_summary(tmp_path / "det")
    grounding = write_summary(tmp_path / "grounding", task="grounding", value=0.5, name="acc@0.25",
                              description="Acc@0.25 (IoU >= 0.25)")
    card = build_model_card(checkpoint, repo_id="org/gap-mllm", eval_summaries=[det, grounding / "summary.json"])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    results = {(r.task_type, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert results == {("3d-object-detection", "f1"): 0.4321, ("3d-visual-grounding", "acc@0.25"): 0.5}
    assert ("| 3D video object detection | not recorded | scannet_det_val.json | 12 | mean F1 over cate31 (IoU > 0.25) | 0.4321 "
            "| True | model |") in loaded.text
    assert "No evaluation results" not in loaded.text


def test_licence_follows_the_recorded_vggt_checkpoint(checkpoint, tmp_path):
    folder = tmp_path / "commercial"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["geometry_config"]["source_checkpoint"] = "facebook/VGGT-1B-Commercial"
    (folder / "config.json").write_text(json.dumps(config))
    card = build_model_card(folder)
    assert card.data.license_name == "gap-mllm-mixed"
    assert "**except military use**" in card.text
    assert geometry_licence("facebook/VGGT-1B")[0] == "non-commercial"
    assert geometry_licence(None)[0] == "unknown"


def test_untrained_marker_and_parameter_counts(checkpoint):
    card = build_model_card(checkpoint, untrained=True)
    assert "untrained" in card.data.tags and "Untrained test model" in card.text
    counts = parameter_counts(checkpoint)
    from gap_mllm import GapMllmForConditionalGeneration

    model = GapMllmForConditionalGeneration.from_pretrained(checkpoint)

    def count(prefix):
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["llm"] == count("model.language_model.") + count("lm_head.")
    assert counts["vision"] == count("model.visual.")
    assert counts["geometry_encoder"] == count("model.geometry_encoder.aggregator.") and counts["geometry_heads"] == 0
    assert counts["mergers"] == count("model.geometry_fusion.mergers.") and counts["fusions"] == count("model.geometry_fusion.fusions.")
    assert counts["other"] == 0


def test_bad_inputs_are_reported(checkpoint, tmp_path):
    (tmp_path / "bogus.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation summary"):
        build_model_card(checkpoint, eval_summaries=[tmp_path / "bogus.json"])
    with pytest.raises(FileNotFoundError, match="template"):
        build_model_card(checkpoint, template_path=tmp_path / "missing.md")


def test_replace_section_replaces_only_its_own_body():
    body = "# T\n\n## A\n\nold a\n\n## B\n\nkeep b\n"
    assert replace_section(body, "A", "new a\n") == "# T\n\n## A\n\nnew a\n\n## B\n\nkeep b\n"
    assert replace_section(body, "C", "c\n").endswith("## C\n\nc\n")


# ------------------------------------------------------------------- what the checkpoint is (issue: a 0.73 M
# model was carded as "new parameters 201.4 M", "LLM 28 layers", trained on "ScanNet (EmbodiedScan)")


def test_every_figure_of_the_model_section_comes_from_the_checkpoint(checkpoint):
    from gap_mllm import GapMllmConfig

    config = GapMllmConfig.from_pretrained(checkpoint)
    counts = parameter_counts(checkpoint)
    text = build_model_card(checkpoint).text
    model = text[text.index("## Model"):text.index("## Training data")]
    llm = config.text_config
    assert f"| LLM | {llm.num_hidden_layers} layers, hidden {llm.hidden_size}," in model
    assert f"| geometry encoder | VGGT aggregator, {config.geometry_config.num_hidden_layers} frame/global block pairs" in model
    new = counts["mergers"] + counts["fusions"]
    assert f"| new parameters | {new / 1e6:.3f} M (mergers {counts['mergers'] / 1e6:.3f} M" in model
    assert f"| total | {counts['total']:,} parameters;" in model
    for stale in ("28 layers", "201.4", "2048", "VGGT-1B aggregator", "ScanNet (EmbodiedScan)"):
        assert stale not in text, stale


def write_record(folder, data_root):
    from gap_mllm.training.config import recipe_from_dict
    from gap_mllm.processing.dataset_identity import TRAINING_RECORD
    from gap_mllm.training.run import training_record

    recipe = recipe_from_dict({"model": {"tiny": "tiny"}, "data": {"data_root": str(data_root), "tasks": ["detection"]}})
    (folder / TRAINING_RECORD).write_text(json.dumps(training_record(recipe, 20)))


def test_training_data_is_what_the_checkpoint_records_or_what_the_caller_says(checkpoint, tmp_path):
    folder = tmp_path / "trained"
    shutil.copytree(checkpoint, folder)
    assert "Not recorded for this checkpoint" in build_model_card(folder).text

    synth = tmp_path / "my_synthrooms"
    (synth / "synthrooms").mkdir(parents=True)
    (synth / "synthrooms" / "dataset_info.json").write_text(json.dumps({"splits": {"train": ["s0", "s1"], "val": ["s2"]}}))
    write_record(folder, synth)
    text = build_model_card(folder).text
    section = text[text.index("## Training data"):text.index("## Use")]
    assert "- data: SynthRooms (synthetic rooms from gap-mllm synth; scenes: 2 train, 1 val), folder `my_synthrooms`" in section
    assert "stage: pretrain; tasks: detection; 20 optimizer steps" in section
    assert "started from: the tiny test model, randomly initialised" in section
    assert str(tmp_path) not in text  # folder names, never machine paths
    assert "ScanNet" not in section

    real = tmp_path / "scannet_like"
    real.mkdir()
    write_record(folder, real)
    assert "- data: data in the ScanNet posed_images layout (official annotation schema), folder `scannet_like`" in \
        build_model_card(folder).text
    given = build_model_card(folder, training_data=["ScanRefer train (official split)", "Scan2Cap train"]).text
    assert "- ScanRefer train (official split)\n- Scan2Cap train\n" in given and "scannet_like" not in given


def test_evaluation_rows_name_the_data_their_summary_records(checkpoint, tmp_path):
    synth = write_summary(tmp_path / "synth")
    summary = json.loads((synth / "summary.json").read_text())
    summary["data"] = {"kind": "synthrooms", "name": "SynthRooms (synthetic rooms from gap-mllm synth; scenes: 1 val)", "folder": "d"}
    (synth / "summary.json").write_text(json.dumps(summary))
    bare = write_summary(tmp_path / "bare", task="grounding", value=0.5, name="acc@0.25", description="Acc@0.25 (IoU >= 0.25)")
    card = build_model_card(checkpoint, eval_summaries=[synth, bare])
    names = {r.task_type: (r.dataset_name, r.dataset_type) for r in card.data.eval_results}
    assert names["3d-object-detection"] == ("SynthRooms (synthetic rooms from gap-mllm synth; scenes: 1 val) (scannet_det_val.json)", "synthrooms")
    assert names["3d-visual-grounding"] == ("data not recorded in the summary (scannet_grounding_val.json)", "unknown")
    assert "| 3D video object detection | SynthRooms (synthetic rooms from gap-mllm synth; scenes: 1 val) |" in card.text
    evaluation = card.text[card.text.index("## Evaluation"):card.text.index("## Citation")]
    assert "ScanNet" not in evaluation and "ScanRefer" not in evaluation and "EmbodiedScan" not in str(card.data.eval_results)


def test_the_evaluation_runner_records_its_data(tmp_path):
    from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
    from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
    from gap_mllm.processing.synth.writer import write_dataset

    root = tmp_path / "data"
    write_dataset(root, SynthRooms(SynthConfig(image_size=(60, 80), num_frames=8, grounding_frames=4, caption_frames=4,
                                               qa_frames=4)), {"val": 1})
    oracle = write_oracle_predictions("detection", root, tmp_path / "oracle.jsonl")
    summary = run_evaluation("detection", root, tmp_path / "out", predictions_file=oracle, plots=False, progress=False)
    assert summary["data"]["kind"] == "synthrooms" and summary["data"]["name"].startswith("SynthRooms")


def test_a_stage0_record_says_which_encoder_trained_and_on_what():
    """A stage-0 run trains one encoder on its own objective: its record names that objective and freezes
    everything else (not the LLM tasks and freezing of the recipe's unused sections)."""
    from gap_mllm.training.config import recipe_from_dict
    from gap_mllm.training.run import training_record

    geometry = recipe_from_dict({"stage": "geometry", "model": {"tiny": "tiny"},
                                 "geometry": {"match_weight": 1.0, "flow_weight": 5.0}})
    record = training_record(geometry, 40)
    assert record["tasks"] == ["stage-0 geometry objective: depth, cameras, cross-view matching, frame-0 offsets"]
    assert [name for name, frozen in record["freezing"].items() if not frozen] == ["freeze_geometry_encoder"]
    assert "freeze_llm" in record["freezing"]
    vision = training_record(recipe_from_dict({"stage": "vision", "model": {"tiny": "tiny"}}), 40)
    assert vision["tasks"] == ["stage-0 vision objective: per-token semantics and position"]
    assert [name for name, frozen in vision["freezing"].items() if not frozen] == ["freeze_vision_tower"]


# ------------------------------------------------------------------- lineage and licence from what the folder records


def fine_tune_of(start, folder, checkpoint):
    """A folder as `gap-mllm train` leaves it after a run that started from `start`: weights (the tiny checkpoint's,
    with `start`'s config when it is a checkpoint copy) and the training record the run writes."""
    from gap_mllm.processing.dataset_identity import TRAINING_RECORD
    from gap_mllm.training.config import recipe_from_dict
    from gap_mllm.training.run import training_record

    shutil.copytree(checkpoint, folder)
    if (Path(start) / "model.safetensors").is_file():  # a checkpoint of ours: its config (and sources) carry over
        shutil.copy(Path(start) / "config.json", folder / "config.json")
    recipe = recipe_from_dict({"model": {"name_or_path": str(start)}, "data": {"tasks": ["detection"]}})
    (folder / TRAINING_RECORD).write_text(json.dumps(training_record(recipe, 4)))
    return folder


def test_a_fine_tune_of_the_mini_is_apache_and_started_from_the_mini_by_name(checkpoint, tmp_path):
    """Was: base_model Qwen/Qwen3-VL-2B-Instruct, gap-mllm-non-commercial, geometry weights "not recorded ... treat as
    non-commercial", and "started from: gap-mllm-mini-<hash>" (the cache folder the Mini is assembled in)."""
    from gap_mllm.mini import default_model_path

    mini = default_model_path()
    record = json.loads((mini / "gap_mllm_training.json").read_text())
    version = record["version"]
    assert record["model_name"] == "GAP-MLLM-Mini" and record["license"] == "apache-2.0"
    folder = fine_tune_of(mini, tmp_path / "first-finetune", checkpoint)
    card = build_model_card(folder, repo_id="newcomer/x")
    assert card.data.license == "apache-2.0" and card.data.license_name is None and card.data.base_model is None
    text = card.text
    section = text[text.index("## This checkpoint"):text.index("## Model")]
    assert f"| started from | GAP-MLLM-Mini (version {version}) |" in section
    assert "| base model | none (no third-party LLM weights recorded) |" in section
    assert "| geometry encoder weights | trained by this package (no third-party weights recorded) |" in section
    assert ("It holds no third-party weights: they were trained from random initialisation by this package. Weights "
            "and code are **Apache-2.0**.") in section
    assert f"- started from: GAP-MLLM-Mini (version {version})" in text
    for false in ("not recorded", "non-commercial", "Qwen/Qwen3-VL", "VGGT-1B"):
        assert false not in section, false
    assert mini.name not in text and "gap-mllm-mini-" not in text  # the cache folder's name
    # the Mini's own folder is the Mini, started from nothing
    own = build_model_card(mini).text
    assert f"| model | GAP-MLLM-Mini (version {version}) |" in own and "| started from |" not in own
    assert f"This is GAP-MLLM-Mini (version {version}) (apache-2.0)." in own
    # a fine-tune of that fine-tune still descends from the Mini, under the same licence
    again = build_model_card(fine_tune_of(folder, tmp_path / "second", checkpoint))
    assert again.data.license == "apache-2.0" and f"GAP-MLLM-Mini (version {version})" in again.text


def test_a_start_holding_vggt_and_qwen_weights_names_them_and_their_licences(checkpoint, tmp_path):
    start = tmp_path / "built"
    shutil.copytree(checkpoint, start)
    config = json.loads((start / "config.json").read_text())
    config["geometry_config"]["source_checkpoint"] = "facebook/VGGT-1B"
    config["text_config"]["_name_or_path"] = "Qwen/Qwen3-VL-2B-Instruct"  # what a start from Qwen3-VL saves
    (start / "config.json").write_text(json.dumps(config))
    card = build_model_card(fine_tune_of(start, tmp_path / "tuned", checkpoint))
    assert card.data.license == "other" and card.data.license_name == "gap-mllm-non-commercial"
    assert card.data.base_model == "Qwen/Qwen3-VL-2B-Instruct"
    section = card.text[card.text.index("## This checkpoint"):card.text.index("## Model")]
    assert "| geometry encoder weights | `facebook/VGGT-1B` (non-commercial) |" in section
    assert "| LLM and vision tower weights | `Qwen/Qwen3-VL-2B-Instruct` (apache-2.0) |" in section
    assert ("It holds the weights of `facebook/VGGT-1B` (geometry encoder: non-commercial), "
            "`Qwen/Qwen3-VL-2B-Instruct` (LLM and vision tower: apache-2.0). **Non-commercial use only**") in section
    # the commercial VGGT checkpoint with Qwen3-VL: commercial use except military use
    config["geometry_config"]["source_checkpoint"] = "facebook/VGGT-1B-Commercial"
    (start / "config.json").write_text(json.dumps(config))
    mixed = build_model_card(fine_tune_of(start, tmp_path / "tuned-commercial", checkpoint))
    assert mixed.data.license == "other" and mixed.data.license_name == "gap-mllm-mixed"


def test_nothing_recorded_is_said_on_the_card_and_by_push_before_uploading(checkpoint, tmp_path, capsys):
    from gap_mllm.cli.main import main as gap_mllm
    from gap_mllm.cli.model_card import lineage_note

    card = build_model_card(checkpoint)
    assert card.data.license_name == "gap-mllm-non-commercial" and card.data.base_model == "Qwen/Qwen3-VL-2B-Instruct"
    assert "`not recorded` (unknown)" in card.text
    assert gap_mllm(["push", "--model", str(checkpoint), "--repo", "newcomer/x", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"gap-mllm push: note: {lineage_note(checkpoint)}\n"
    assert lineage_note(checkpoint).startswith("ckpt records no lineage (no lineage in its gap_mllm_training.json")
    # a run from it records nothing more; a run from the Mini does, and gets no note
    assert lineage_note(fine_tune_of(checkpoint, tmp_path / "tuned", checkpoint)) is not None
    from gap_mllm.mini import default_model_path

    assert lineage_note(fine_tune_of(default_model_path(), tmp_path / "from-mini", checkpoint)) is None


def test_a_recorded_text_with_line_breaks_or_pipes_stays_one_line_of_the_card(checkpoint, tmp_path):
    """A recorded name "x\\n## Licence\\n..." started a heading of its own in the card body, a "\\n| a | b |" a table
    row; each recorded text (training record, evaluation summary, --training-data) is one line, a cell one cell."""
    from gap_mllm.processing.dataset_identity import TRAINING_RECORD

    folder = tmp_path / "trained"
    shutil.copytree(checkpoint, folder)
    clean = build_model_card(folder).text
    forged = "## Licence\nApache-2.0, free for any use"
    (folder / TRAINING_RECORD).write_text(json.dumps({
        "data": {"name": f"SynthRooms\n{forged}", "folder": "d`\n- injected"}, "stage": "pretrain\x1b[31m",
        "tasks": ["detection\n| forged | row |"], "global_step": 20, "started_from": "nothing\r\n## Use"}))
    summary_folder = write_summary(tmp_path / "det", description="mean F1\n| forged | row | of | eight | cells | a | b |")
    summary = json.loads((summary_folder / "summary.json").read_text())
    summary["data"] = {"name": f"rooms | of\n{forged}"}
    (summary_folder / "summary.json").write_text(json.dumps(summary))
    text = build_model_card(folder, eval_summaries=[summary_folder]).text
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [line for line in clean.splitlines() if line.startswith("#")] and "\x1b" not in text
    section = text[text.index("\n## Training data"):text.index("\n## Use")]
    assert section.splitlines()[3:6] == [
        "- data: SynthRooms ## Licence Apache-2.0, free for any use, folder `d' - injected`",
        "- stage: pretrain [31m; tasks: detection | forged | row |; 20 optimizer steps",
        "- started from: nothing ## Use"]
    rows = [line for line in text[text.index("\n## Evaluation"):].splitlines() if line.startswith("| 3D video")]
    assert rows == ["| 3D video object detection | rooms \\| of ## Licence Apache-2.0, free for any use | scannet_det_val.json | 12 | "
                    "mean F1 \\| forged \\| row \\| of \\| eight \\| cells \\| a \\| b \\| | 0.4321 | True | model |"]
    given = build_model_card(folder, training_data=["ScanRefer\n## Forged"]).text
    assert "- ScanRefer ## Forged\n" in given and "\n## Forged" not in given
