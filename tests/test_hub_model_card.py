"""The generated model card: metadata, licence consequence of the VGGT weights, evaluation table from
the evaluation runner's summaries, and an offline round trip through `ModelCard.load`."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from gap_mllm.cli.model_card import build_model_card, geometry_licence, parameter_counts, replace_section
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("card") / "ckpt")


def write_summary(folder, task="det", value=0.4321, name="f1", description="mean F1 over cate31 (IoU > 0.25)"):
    """A summary.json in the evaluation runner's format (evaluation/runner.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"task": task, "annotation_file": f"scannet_{task}_val.json", "num_samples": 12, "official_compat": True,
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
    for section in ("## This checkpoint", "## Model", "## Intended use and limitations", "## Licences",
                    "## Training recipe", "## Evaluation", "## Citation"):
        assert text.count(section) == 1, section
    assert text.index("## This checkpoint") < text.index("## Model")
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
    assert "| 3D video object detection | scannet_det_val.json | 12 | mean F1 over cate31 (IoU > 0.25) | 0.4321 | True | model |" in loaded.text
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
    assert counts["total"] == counts["vlm"] + counts["geometry_encoder"] + counts["fusion"]
    assert min(counts["vlm"], counts["geometry_encoder"], counts["fusion"]) > 0
    from gap_mllm import GapMllmForConditionalGeneration

    model = GapMllmForConditionalGeneration.from_pretrained(checkpoint)
    assert counts["total"] == sum(p.numel() for p in model.parameters())


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
