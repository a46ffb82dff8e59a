"""A model folder as the front ends load it (cli/model_source.py, cli/loading.py, the model's and the processor's
`from_pretrained`): a folder whose weights, config.json or processor files cannot give a right answer is refused in
one line naming the folder and what is wrong, by every front end that loads a model; the folder of the tiny test
model, built on the fly, is removed when the process exits."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from gap_mllm.cli import loading, space_backend
from gap_mllm.cli.errors import UserError
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.model_source import check_model_source, load_pretrained
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .conftest import write_small_synth

NAN_TENSOR = "model.language_model.layers.0.mlp.down_proj.weight"
EXAMPLE = ["--example", "synthetic room A", "--task", "detection", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def with_nan_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    weights[NAN_TENSOR][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def with_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def one_layer_fewer(config: dict, *keys: str) -> None:
    section = functools.reduce(dict.get, keys[:-1], config)
    section[keys[-1]] -= 1
    if keys[-1] == "depth":  # the tiny model taps its last block for DeepStack: move that tap down a block
        section["deepstack_visual_indexes"] = [min(i, section["depth"] - 1) for i in section["deepstack_visual_indexes"]]


def text_size(name: str, value: int):
    return lambda config: config["text_config"].__setitem__(name, value)


# damage -> (what it does to the folder, the one line's text after "--model FOLDER" / "FOLDER")
DAMAGES = {
    "nan weights": (with_nan_weights,
                    "{folder}: the weights hold NaN or infinite values (first: " + NAN_TENSOR + "); the checkpoint is "
                    "damaged or was saved from a diverged run: load another one"),
    "weight near the float limit": (
        lambda folder: with_weights(folder, lambda weights: weights[NAN_TENSOR].__setitem__((0, 0), 3e38)),
        "{folder}: the weights hold a value too large to compute with (" + NAN_TENSOR + " holds 3e+38; its square "
        "overflows, a trained weight stays far below 2**64 = 1.84e+19); the checkpoint is damaged or was saved from a "
        "diverged run: load another one"),
    "weights times 1e30": (
        lambda folder: with_weights(folder, lambda weights: weights.update({name: tensor * 1e30 for name, tensor in
                                                                           weights.items()})),
        "{folder}: the weights hold a value too large to compute with (model.visual.blocks.0.norm1.weight holds "
        "1e+30; its square overflows, a trained weight stays far below 2**64 = 1.84e+19); the checkpoint is damaged "
        "or was saved from a diverged run: load another one"),
    "fewer text layers": (
        lambda folder: edit_json(folder / "config.json",
                                 lambda config: one_layer_fewer(config, "text_config", "num_hidden_layers")),
        "{folder}: the weights hold 11 tensor(s) that the model built from config.json has no place for (Qwen3-VL "
        "language model: 11 (e.g. model.language_model.layers.3.input_layernorm.weight)); the config does not "
        "belong to these weights (fewer layers than they hold?): restore the config.json saved with them"),
    "fewer vision blocks": (
        lambda folder: edit_json(folder / "config.json",
                                 lambda config: one_layer_fewer(config, "vision_config", "depth")),
        "{folder}: the weights hold 12 tensor(s) that the model built from config.json has no place for (Qwen3-VL "
        "vision tower: 12 (e.g. model.visual.blocks.2.attn.proj.bias)); the config does not belong to these "
        "weights (fewer layers than they hold?): restore the config.json saved with them"),
    "vocab_size": (lambda folder: edit_json(folder / "config.json", text_size("vocab_size", 800)),
                   "--model {folder}: config.json's text_config.vocab_size is 800 but the weights' "
                   "model.language_model.embed_tokens.weight has 720 (shape [720, 64]); the config does not "
                   "belong to these weights: restore the config.json saved with them"),
    "tokenizer.json": (lambda folder: edit_json(folder / "tokenizer.json", lambda content: content.pop("added_tokens")),
                       "{folder}/tokenizer.json cannot be read as a tokenizer file (no 'added_tokens' list); copy it "
                       "again, or save the processor again"),
    "patch_size": (lambda folder: edit_json(folder / "processor_config.json",
                                            lambda config: config["image_processor"].__setitem__("patch_size", 0)),
                   "{folder}: processor_config.json's image_processor.patch_size must be a positive integer, got 0"),
}


def damaged(checkpoint: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage.replace(" ", "-")
    shutil.copytree(checkpoint, folder)
    DAMAGES[damage][0](folder)
    return folder


def one_line_error(status: int, err: str, command: str) -> str:
    """The text of the one error line a refused command prints."""
    assert status == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"gap-mllm {command}: error: "), err
    return lines[-1].removeprefix(f"gap-mllm {command}: error: ")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_predict_refuses_a_damaged_model_folder_in_one_line(checkpoint, tmp_path, capsys, damage):
    """NaN weights used to answer "parsed: 0 box(es)" with exit status 0; the others ended in a traceback (a page of
    mismatched shapes, KeyError: 'added_tokens', ZeroDivisionError)."""
    folder = damaged(checkpoint, tmp_path, damage)
    status = gap_mllm(["predict", "--model", str(folder), *EXAMPLE])
    captured = capsys.readouterr()
    assert one_line_error(status, captured.err, "predict") == DAMAGES[damage][1].format(folder=folder)
    assert "parsed" not in captured.out


@pytest.mark.parametrize("damage", ["nan weights", "weight near the float limit", "fewer text layers"])
def test_evaluate_and_export_llm_refuse_weights_that_cannot_answer_in_one_line(checkpoint, tmp_path, capsys, damage):
    """The refusal lives in the model's own `from_pretrained`, which every front end loads through."""
    folder = damaged(checkpoint, tmp_path, damage)
    data = write_small_synth(tmp_path / "data", {"val": 1})
    expected = DAMAGES[damage][1].format(folder=folder)
    status = gap_mllm(["evaluate", "--task", "detection", "--model", str(folder), "--data", str(data),
                       "--out", str(tmp_path / "eval"), "--limit", "1", "--no-plots", "--quiet"])
    assert one_line_error(status, capsys.readouterr().err, "evaluate") == expected
    status = gap_mllm(["export-llm", str(folder), str(tmp_path / "llm")])
    assert one_line_error(status, capsys.readouterr().err, "export-llm") == expected
    assert not (tmp_path / "llm").exists()


@pytest.mark.parametrize("keys, value, tensor, held", [
    (("text_config", "hidden_size"), 96, "model.language_model.embed_tokens.weight",
     "64 (shape [720, 64])"),
    (("vision_config", "hidden_size"), 48, "model.visual.patch_embed.proj.weight",
     "32 (shape [32, 3, 2, 16, 16])"),
    (("geometry_config", "hidden_size"), 64, "model.geometry_encoder.aggregator.camera_token", "32 (shape [1, 2, 1, 32])"),
])
def test_a_config_size_that_disagrees_with_the_weights_is_named_with_both_sizes(checkpoint, tmp_path, keys, value,
                                                                                tensor, held):
    folder = tmp_path / "edited"
    shutil.copytree(checkpoint, folder)
    edit_json(folder / "config.json",
              lambda config: functools.reduce(dict.get, keys[:-1], config).__setitem__(keys[-1], value))
    with pytest.raises(UserError) as refused:
        check_model_source(folder)
    assert str(refused.value) == (f"--model {folder}: config.json's {'.'.join(keys)} is {value} but the weights' "
                                  f"{tensor} has {held}; the config does not belong to these weights: restore the "
                                  "config.json saved with them")


def test_any_other_size_that_disagrees_with_the_weights_ends_in_one_line_too(checkpoint, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(checkpoint, folder)
    edit_json(folder / "config.json", text_size("intermediate_size", 256))
    assert check_model_source(folder) == str(folder)  # no size the check reads: transformers finds it
    with pytest.raises(UserError) as refused:
        load_pretrained(AutoModel.from_pretrained, folder, trust_remote_code=True)
    assert str(refused.value) == (f"--model {folder}: the weights' shapes disagree with config.json (the load report "
                                  "above lists them); the config does not belong to these weights: restore the "
                                  "config.json saved with them")


@pytest.mark.parametrize("build, prefix", [(loading.tiny_model_folder, "gap-mllm-tiny-"),
                                           (space_backend.build_space_tiny, "gap-mllm-space-tiny-")])
def test_the_folder_of_a_tiny_model_built_on_the_fly_is_removed_at_exit(tmp_path, monkeypatch, build, prefix):
    """Every `--model tiny` run (predict, the Space) used to leave a 3.5 MB folder in the temporary folder."""
    at_exit, register = [], atexit.register

    def register_removals(function, *args, **kwargs):  # the removals run below; anything else as usual
        if function is not shutil.rmtree:
            return register(function, *args, **kwargs)
        at_exit.append(functools.partial(function, *args, **kwargs))
        return function

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(atexit, "register", register_removals)
    folder = Path(build())
    assert folder.parent == tmp_path and folder.name.startswith(prefix) and (folder / "config.json").is_file()
    for function in at_exit:  # what the interpreter runs as it exits
        function()
    assert list(tmp_path.iterdir()) == []
