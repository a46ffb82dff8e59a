"""VGGT checkpoint → geometry encoder: key layout, strictness, file formats, round trip, builder, CLI;
`from_qwen3_vl` with the Hub unreachable loads a cached checkpoint or names the missing one, in seconds.

"Reference layout" below means the flat `state_dict` of the reference `VGGT()` as listed in
docs/vggt.md §7: `aggregator.*`, `camera_head.*`, `depth_head.*`, `point_head.*`, `track_head.*`.
Our encoder keeps those names, so a reference-layout dict is built from an encoder with random
weights plus a track-head tensor; the key names themselves are pinned against the documented list.
"""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel

import gap_mllm
from gap_mllm.cli import convert as convert_cli
from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig
from gap_mllm.convert_vggt_to_hf import (
    ConversionError,
    convert_vggt_checkpoint,
    infer_vggt_geometry_config,
    load_vggt_encoder,
    load_vggt_state_dict,
    plan_vggt_conversion,
)
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder

from .test_geometry_heads import TINY_HEADS

TRACK_KEY = "track_head.tracker.corr_mlp.fc1.weight"


def reference_layout_state_dict(seed: int = 0, **overrides) -> tuple[dict, GapMllmGeometryConfig]:
    """A VGGT-layout state dict with random values in every tensor (plus a track-head tensor) and its config."""
    config = GapMllmGeometryConfig(**{**TINY_HEADS, **overrides})
    torch.manual_seed(seed)
    encoder = GapMllmGeometryEncoder(config)
    state_dict = {}
    for key, value in encoder.state_dict().items():
        state_dict[key] = torch.randn_like(value) * (0.2 if value.ndim > 1 else 0.05) + (1.0 if key.endswith(("gamma", "norm.weight")) else 0.0)
    state_dict[TRACK_KEY] = torch.randn(4, 4)
    return state_dict, config


def test_key_layout_matches_vggt_1b():
    """Names and sizes of the documented VGGT-1B layout (docs/vggt.md §6-7), built on the meta device."""
    with torch.device("meta"):
        encoder = GapMllmGeometryEncoder(GapMllmGeometryConfig(use_camera_head=True, use_depth_head=True, use_point_head=True))
    shapes = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert shapes["aggregator.camera_token"] == (1, 2, 1, 1024)
    assert shapes["aggregator.register_token"] == (1, 2, 4, 1024)
    assert shapes["aggregator.patch_embed.pos_embed"] == (1, 1370, 1024)
    assert shapes["aggregator.frame_blocks.23.attn.q_norm.weight"] == (64,)
    assert "aggregator.patch_embed.blocks.0.attn.q_norm.weight" not in shapes
    for key in ("camera_head.empty_pose_tokens", "camera_head.embed_pose.weight", "camera_head.token_norm.weight",
                "camera_head.trunk_norm.weight", "camera_head.poseLN_modulation.1.weight", "camera_head.pose_branch.fc1.weight",
                "camera_head.pose_branch.fc2.weight", "camera_head.trunk.3.attn.qkv.weight", "depth_head.norm.weight",
                "depth_head.resize_layers.0.weight", "depth_head.resize_layers.1.weight", "depth_head.resize_layers.3.weight",
                "depth_head.scratch.layer4_rn.weight", "depth_head.scratch.refinenet1.resConfUnit1.conv1.weight",
                "depth_head.scratch.refinenet4.resConfUnit2.conv2.bias", "depth_head.scratch.output_conv1.weight"):
        assert key in shapes, key
    assert not any(k.startswith(("depth_head.resize_layers.2", "depth_head.scratch.refinenet4.resConfUnit1")) for k in shapes)
    assert "depth_head.scratch.layer1_rn.bias" not in shapes
    assert shapes["depth_head.scratch.output_conv2.2.weight"] == (2, 32, 1, 1)
    assert shapes["point_head.scratch.output_conv2.2.weight"] == (4, 32, 1, 1)
    assert shapes["camera_head.poseLN_modulation.1.weight"] == (6144, 2048)
    assert shapes["camera_head.pose_branch.fc2.weight"] == (9, 1024)

    def millions(prefix):
        return sum(v.numel() for k, v in encoder.state_dict().items() if k.startswith(prefix)) / 1e6

    assert round(millions("aggregator."), 1) == 909.1
    assert round(millions("camera_head."), 1) == 216.2
    assert round(millions("depth_head."), 1) == round(millions("point_head."), 1) == 32.7


@pytest.mark.parametrize("prefix", ["", "geometry_encoder.vggt."])
def test_round_trip_reference_layout_to_outputs(prefix):
    state_dict, config = reference_layout_state_dict()
    source = GapMllmGeometryEncoder(config).eval()
    source.load_state_dict({k: v for k, v in state_dict.items() if k != TRACK_KEY})
    encoder = load_vggt_encoder({prefix + k: v for k, v in state_dict.items()}, config)
    report = encoder.conversion_report
    assert len(report.mapped) == len(state_dict) - 1
    assert report.skipped == {prefix + TRACK_KEY: "track head (not implemented in gap_mllm)"}
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    images = torch.rand(1, 3, 3, 28, 42)
    with torch.no_grad():
        expected, got = source.reconstruct(images), encoder.reconstruct(images)
    for name in ("pose_encoding", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert all(torch.equal(a, b) for a, b in zip(got.layer_features, expected.layer_features))


def test_config_is_inferred_from_the_weights():
    state_dict, config = reference_layout_state_dict()
    inferred = infer_vggt_geometry_config(state_dict, tapped_layers=[1, 3], dpt_layers=[0, 1, 2, 3],
                                          camera_head_num_attention_heads=4, camera_head_num_iterations=3)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_register_tokens", "patch_size",
                  "image_size", "patch_embed_num_hidden_layers", "patch_embed_num_register_tokens", "mlp_ratio",
                  "use_camera_head", "use_depth_head", "use_point_head", "camera_head_trunk_depth", "dpt_features",
                  "dpt_out_channels"):
        assert getattr(inferred, field) == getattr(config, field), field
    aggregator_only = {k: v for k, v in state_dict.items() if k.startswith("aggregator.")}
    inferred = infer_vggt_geometry_config(aggregator_only, tapped_layers=[1, 3])
    assert not (inferred.use_camera_head or inferred.use_depth_head or inferred.use_point_head)


def test_disabled_heads_are_skipped_and_reported():
    state_dict, config = reference_layout_state_dict()
    aggregator_only = GapMllmGeometryConfig(**{**TINY_HEADS, "use_camera_head": False, "use_depth_head": False, "use_point_head": False})
    encoder = load_vggt_encoder(state_dict, aggregator_only)
    reasons = set(encoder.conversion_report.skipped.values())
    assert reasons == {"camera_head (disabled: geometry_config.use_camera_head=False)",
                       "depth_head (disabled: geometry_config.use_depth_head=False)",
                       "point_head (disabled: geometry_config.use_point_head=False)",
                       "track head (not implemented in gap_mllm)"}
    assert len(encoder.conversion_report.mapped) == len(encoder.state_dict())


def test_missing_key_is_an_error_naming_it():
    state_dict, config = reference_layout_state_dict()
    del state_dict["aggregator.frame_blocks.2.attn.k_norm.bias"]
    with pytest.raises(ConversionError, match=r"missing .*\n  - aggregator\.frame_blocks\.2\.attn\.k_norm\.bias"):
        load_vggt_encoder(state_dict, config)


def test_extra_key_is_an_error_naming_it():
    state_dict, config = reference_layout_state_dict()
    state_dict["aggregator.frame_blocks.9.norm1.weight"] = torch.ones(32)
    with pytest.raises(ConversionError, match=r"aggregator\.frame_blocks\.9\.norm1\.weight: no tensor of this name"):
        load_vggt_encoder(state_dict, config)
    state_dict.pop("aggregator.frame_blocks.9.norm1.weight")
    state_dict["other_model.weight"] = torch.ones(1)
    with pytest.raises(ConversionError, match=r"other_model\.weight: no tensor of this name"):
        load_vggt_encoder(state_dict, config)


def test_mis_shaped_key_is_an_error_naming_it():
    state_dict, config = reference_layout_state_dict()
    state_dict["depth_head.projects.1.weight"] = torch.zeros(16, 64, 1, 2)
    with pytest.raises(ConversionError, match=r"depth_head\.projects\.1\.weight <- depth_head\.projects\.1\.weight: "
                                              r"source shape \(16, 64, 1, 2\) vs expected \(16, 64, 1, 1\)"):
        load_vggt_encoder(state_dict, config)


def test_keys_outside_the_wrapper_prefix_are_errors():
    state_dict, config = reference_layout_state_dict()
    nested = {"vggt." + k: v for k, v in state_dict.items()}
    nested["lm_head.weight"] = torch.ones(2)
    report = plan_vggt_conversion(nested, GapMllmGeometryEncoder(config).state_dict(), config)
    assert report.unexpected == {"lm_head.weight": "outside the VGGT prefix 'vggt.'"}


@pytest.mark.parametrize("layout", ["model.pt", "wrapped.pt", "model.safetensors", "folder"])
def test_checkpoint_files_load(tmp_path, layout):
    state_dict, config = reference_layout_state_dict()
    if layout == "model.pt":
        torch.save(state_dict, tmp_path / layout)
        source = tmp_path / layout
    elif layout == "wrapped.pt":
        torch.save({"model": state_dict}, tmp_path / layout)
        source = tmp_path / layout
    else:
        save_file(state_dict, str(tmp_path / "model.safetensors"))
        source = tmp_path / "model.safetensors" if layout == "model.safetensors" else tmp_path
    loaded = load_vggt_state_dict(source)
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)


def test_converted_folder_and_cli(tmp_path, capsys):
    state_dict, config = reference_layout_state_dict()
    torch.save(state_dict, tmp_path / "model.pt")
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    args = parser.parse_args(["vggt", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--heads", "camera,depth",
                              "--tapped-layers", "1,3", "--dpt-layers", "0,1,2,3", "--no-progress"])
    assert convert_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "mapped" in printed and "point_head (disabled" in printed and "track head" in printed
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["use_camera_head"] and saved["use_depth_head"] and not saved["use_point_head"]
    assert saved["source_checkpoint"].endswith("model.pt")
    reloaded = load_vggt_state_dict(tmp_path / "out")
    assert not any(k.startswith("point_head.") for k in reloaded)
    assert torch.equal(reloaded["camera_head.embed_pose.weight"], state_dict["camera_head.embed_pose.weight"])

    broken = dict(state_dict)
    broken["camera_head.embed_pose.weight"] = torch.zeros(3, 3)
    torch.save(broken, tmp_path / "broken.pt")
    args = parser.parse_args(["vggt", str(tmp_path / "broken.pt"), str(tmp_path / "out2"), "--tapped-layers", "1,3",
                              "--dpt-layers", "0,1,2,3", "--no-progress"])
    assert convert_cli.main(args) == 1
    assert "camera_head.embed_pose.weight" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_convert_vggt_checkpoint_dtype(tmp_path):
    state_dict, config = reference_layout_state_dict()
    report = convert_vggt_checkpoint(state_dict, tmp_path, config=config, dtype=torch.bfloat16)
    assert report.ok
    reloaded = load_vggt_state_dict(tmp_path)
    assert reloaded["aggregator.camera_token"].dtype == torch.bfloat16
    assert torch.equal(reloaded["aggregator.camera_token"], state_dict["aggregator.camera_token"].bfloat16())
    # the encoder's save_pretrained folder: it loads alone through AutoModel
    encoder_class = gap_mllm.GapMllmGeometryEncoder  # its first use registers the Auto classes
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is encoder_class and encoder.dtype == torch.bfloat16
    assert torch.equal(encoder.aggregator.camera_token, state_dict["aggregator.camera_token"].bfloat16())


def test_from_qwen3_vl_loads_vggt_weights(tmp_path, tiny_processor):
    from transformers import Qwen3VLForConditionalGeneration

    from gap_mllm import GapMllmForConditionalGeneration
    from gap_mllm.tiny.tiny_config import build_gap_config

    gap_config = build_gap_config(tiny_processor.tokenizer)
    Qwen3VLForConditionalGeneration(gap_config.to_qwen3_vl_config()).save_pretrained(tmp_path / "qwen")
    geometry = gap_config.geometry_config.to_dict()
    state_dict, _ = reference_layout_state_dict(**{k: geometry[k] for k in ("hidden_size", "num_hidden_layers",
        "num_attention_heads", "patch_embed_num_hidden_layers", "image_size", "tapped_layers")},
        use_camera_head=False, use_depth_head=False, use_point_head=False)
    torch.save(state_dict, tmp_path / "model.pt")
    with pytest.warns(UserWarning, match="geometry mergers") as caught:
        model = GapMllmForConditionalGeneration.from_qwen3_vl(
            tmp_path / "qwen", geometry_config=geometry, geometry_fusion_config=gap_config.geometry_fusion_config.to_dict(),
            vggt_weights=tmp_path / "model.pt",
        )
    assert "geometry encoder" not in str(caught[0].message)
    assert model.missing_weight_groups == ["fusion modules (gates)", "geometry mergers"]
    for key, value in model.geometry_encoder.state_dict().items():
        assert torch.equal(value, state_dict[key].to(value.dtype)), key
    assert model.config.geometry_config.source_checkpoint.endswith("model.pt")
    assert model.vggt_conversion_report.skipped == {TRACK_KEY: "track head (not implemented in gap_mllm)"}


def test_convert_writes_a_new_or_its_own_folder_never_the_users(tmp_path, capsys):
    """`gap-mllm convert` follows the one ownership rule (processing/output_folder.py): it replaces its own earlier
    output, refuses a folder of the user's files with their bytes kept, and says where it wrote (not its staging)."""
    from gap_mllm.processing.output_folder import OutputFolderRefused

    state_dict, _ = reference_layout_state_dict()
    torch.save(state_dict, tmp_path / "model.pt")
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    argv = ["vggt", str(tmp_path / "model.pt"), None, "--tapped-layers", "1,3", "--dpt-layers", "0,1,2,3",
            "--no-progress"]

    def convert(out):
        return convert_cli.main(parser.parse_args([str(out) if arg is None else arg for arg in argv]))

    assert convert(tmp_path / "out") == 0 and convert(tmp_path / "out") == 0  # the second replaces its own output
    printed = capsys.readouterr().out
    assert f"to {tmp_path / 'out'}" in printed and "gap-mllm-partial" not in printed
    reloaded = load_vggt_state_dict(tmp_path / "out")
    assert torch.equal(reloaded["camera_head.embed_pose.weight"], state_dict["camera_head.embed_pose.weight"])
    users = tmp_path / "users"
    users.mkdir()
    (users / "config.json").write_text('{"mine": true}', encoding="utf-8")
    with pytest.raises(OutputFolderRefused, match=r"OUTPUT_DIR .*users"):
        convert(users)
    assert sorted(path.name for path in users.iterdir()) == ["config.json"]
    assert (users / "config.json").read_text(encoding="utf-8") == '{"mine": true}'


# ----------------------------------------------------------- from_qwen3_vl with the Hub unreachable


FROM_QWEN3_VL_OFFLINE = """
import json, sys, time
from pathlib import Path
from gap_mllm import GapMllmForConditionalGeneration
from gap_mllm.tiny.tiny_model import build_tiny_model

repo, cached = sys.argv[1], sys.argv[2] == "cached"
tiny, _ = build_tiny_model()
if cached:  # a Qwen3-VL in the Hub cache, as a download leaves it (refs/main -> its snapshot)
    import os
    from huggingface_hub import constants
    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    from transformers import Qwen3VLForConditionalGeneration
    stock = Qwen3VLForConditionalGeneration(tiny.config.to_qwen3_vl_config())
    stock.load_state_dict(tiny.qwen3_vl_state_dict())
    stock.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
start = time.monotonic()
try:
    model = GapMllmForConditionalGeneration.from_qwen3_vl(
        repo, geometry_config=tiny.config.geometry_config.to_dict(),
        geometry_fusion_config=tiny.config.geometry_fusion_config.to_dict())
    found = {"loaded": type(model).__name__, "missing": model.missing_weight_groups}
except OSError as error:
    found = {"error": str(error)}
found["seconds"] = time.monotonic() - start
print(json.dumps(found))
"""


@pytest.mark.parametrize("cached", [False, True])
def test_from_qwen3_vl_with_the_hub_unreachable_answers_at_once(cached, tmp_path):
    """A Hub that refuses connections (no retries for a minute): a checkpoint in the local Hub cache loads from it, one
    that is not there is one line naming it, both in seconds."""
    import os

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    env.pop("HF_HUB_CACHE", None)
    repo = "org/tiny-qwen3-vl"
    done = subprocess.run([sys.executable, "-c", FROM_QWEN3_VL_OFFLINE, repo, "cached" if cached else "missing"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["seconds"] < 15, found  # the probe's 5 s timeout at most; refused connections answer at once
    if cached:
        assert found.get("loaded") == "GapMllmForConditionalGeneration", found
        assert all(group.startswith(("geometry", "fusion")) for group in found["missing"]), found
    else:
        assert found["error"].startswith(f"Qwen3-VL {repo}: the Hub (http://127.0.0.1:9) cannot be reached (")
        assert found["error"].endswith(f"and {repo} is not in the local Hub cache; connect to the network, or give a "
                                       "local folder of the checkpoint") and "\n" not in found["error"]
