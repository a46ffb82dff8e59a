"""`gap-mllm export-llm`: the language half as a stock Qwen3-VL folder (serving/export.py), loaded by stock transformers."""

import contextlib
import hashlib
import io
import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
from gap_mllm.cli.main import main
from gap_mllm.speedups import encode_images
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint
from tests.test_engine_contract import as_encoder_outputs, split_like_vllm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny GAP checkpoint, its export through the CLI, and what the command printed."""
    source = save_tiny_checkpoint(tmp_path_factory.mktemp("gap") / "gap", seed=4)
    output = tmp_path_factory.mktemp("export") / "llm"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["export-llm", str(source), str(output)])
    assert status == 0
    return source, output, printed.getvalue()


def test_export_writes_a_stock_qwen3_vl_folder_and_lists_its_files(exported):
    source, output, printed = exported
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    for name in written:
        assert f"  {name}\n" in printed
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json", "gap_export.json",
            "README.md"} <= set(written)
    assert not any(name.endswith(".py") for name in written)  # no remote code: engines load it as stock Qwen3-VL
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    for name in written:
        if name.endswith(".json"):
            text = (output / name).read_text()
            assert "auto_map" not in text, name  # nothing points to remote code
            assert name == "gap_export.json" or "GapMllm" not in text, name


def test_exported_folder_loads_in_stock_transformers_with_the_gap_weights(exported):
    source, output, _ = exported
    stock = AutoModelForImageTextToText.from_pretrained(output)  # no trust_remote_code
    assert type(stock) is Qwen3VLForConditionalGeneration and type(stock.model) is Qwen3VLModel
    gap = GapMllmForConditionalGeneration.from_pretrained(source)
    gap_state, stock_state = gap.qwen3_vl_state_dict(), stock.state_dict()
    assert gap_state.keys() == stock_state.keys()
    assert all(torch.equal(gap_state[name], stock_state[name]) for name in gap_state)  # ViT included


def test_exported_folder_with_gap_embeddings_gives_gap_logits(exported, make_inputs):
    source, output, _ = exported
    stock = AutoModelForImageTextToText.from_pretrained(output).eval()
    gap = GapMllmForConditionalGeneration.from_pretrained(source).eval()
    inputs = make_inputs(view_counts=(3, 2), seed=7)
    with torch.no_grad():
        expected = gap(**inputs).logits
        main_level, deepstack = split_like_vllm(encode_images(gap, **inputs))
        text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
        merge = stock.config.vision_config.spatial_merge_size
        logits = stock(**text_inputs, mm_encoder_outputs=as_encoder_outputs(main_level, deepstack, inputs["image_grid_thw"], merge)).logits
    valid = inputs["attention_mask"].bool()
    assert (logits - expected).abs()[valid].max().item() <= 1e-5


def test_exported_tokenizer_and_processor_configs_match_the_gap_processor(exported):
    source, output, _ = exported
    processor = GapMllmProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.chat_template == processor.chat_template
    text = processor.chat_prompt([None, "Frame-1: ", None, "Where is the chair?"])
    assert tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    image_processor = AutoImageProcessor.from_pretrained(output)
    assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (16, 2, 2)
    assert (image_processor.size.shortest_edge, image_processor.size.longest_edge) == processor.pixel_limits
    video = json.loads((output / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor" and (video["patch_size"], video["merge_size"]) == (16, 2)


def test_export_records_its_source_and_warns_about_image_inputs(exported):
    source, output, _ = exported
    info = json.loads((output / "gap_export.json").read_text())
    assert info["source"] == str(source) and info["use_geometry"] is True and info["fusion_method"] == "gated"
    files = sorted(source.glob("*.safetensors"))
    assert files and info["source_weights_sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    gap = GapMllmForConditionalGeneration.from_pretrained(source)
    hidden = gap.config.vision_config.out_hidden_size
    assert info["embedding_layout"] == {"hidden_size": hidden, "num_deepstack_levels": 3, "width": 4 * hidden,
                                        "order": ["main", "deepstack_0", "deepstack_1", "deepstack_2"]}
    readme = (output / "README.md").read_text()
    assert "must be the GAP-MLLM encoder's embeddings" in readme and "without GAP-MLLM's 3D" in readme


def test_export_refuses_a_folder_that_is_not_empty(exported, tmp_path, capsys):
    source, _, _ = exported
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export-llm", str(source), str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "mine"


def test_export_casts_to_the_requested_dtype(exported, tmp_path):
    source, _, _ = exported
    assert main(["export-llm", str(source), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    stock = AutoModelForImageTextToText.from_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in stock.parameters()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "gap_export.json").read_text())["dtype"] == "bfloat16"


def test_export_names_a_source_that_is_no_gap_checkpoint(tmp_path, capsys):
    """A missing folder, a data folder and another model type are named before anything is written (not a Hub
    repo-id complaint or a missing-weights-file message from transformers)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "frames.txt").write_text("not a checkpoint")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    cases = [(tmp_path / "missing", "no such folder"), (data, "has no config.json"),
             (other, "is a qwen3_vl checkpoint, not a GAP-MLLM one")]
    for source, message in cases:
        output = tmp_path / f"out-{source.name}"
        assert main(["export-llm", str(source), str(output)]) == 2
        err = capsys.readouterr().err
        assert f"SOURCE {source}" in err and message in err, err
        assert not output.exists()
