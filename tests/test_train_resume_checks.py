"""What a resume must match (training/run_state.py `check_same_settings`, training/checkpoints.py
`checkpoint_problem`): a 6-step `gap-mllm train` run stopped after checkpoint-4, resumed with another recipe or from a
damaged folder. Another setting that changes the numerics, or another task mix, is refused in one line naming the
setting and the checkpoint (exit 2, nothing written), or, with `run_state.accept_other_settings=true`, continued,
said in the plan and recorded in the training record; a setting the checkpoint's optimizer carries (the learning
rate) is refused even then. A checkpoint with a file missing, truncated or edited is skipped by `--resume auto`,
naming it, for the previous complete one (the run ends at the uninterrupted weights), and refused by name when given
as `--resume DIR`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from gap_mllm.cli.errors import run_command
from gap_mllm.training import train_cli
from gap_mllm.training.config import load_recipe
from gap_mllm.training.run import run_training
from gap_mllm.training.run_state import RUN_RECORD_FILE, RunStateError

from .test_train_fixtures import train_data_root  # noqa: F401

RECIPE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "stage1_pretrain.yaml"
SETTINGS = ["model.tiny=tiny", "model.dtype=float32", "cache.enabled=false", "training.use_cpu=true",
            "training.bf16=false", "training.activation_checkpointing=false", "training.dataloader_num_workers=0",
            "training.max_steps=6", "training.save_steps=2", "training.save_total_limit=10", "training.logging_steps=1",
            "training.disable_tqdm=true", "training.per_device_train_batch_size=2",
            "training.gradient_accumulation_steps=1", "training.learning_rate=1e-3"]


def cli(out, data_root, cache_dir, *extra) -> list[str]:
    settings = [*SETTINGS, f"data.cache_dir={cache_dir}", *extra]
    return ["--config", str(RECIPE), "--out", str(out), "--data", str(data_root), "--report-to", "none",
            *sum((["--set", value] for value in settings), [])]


def train(argv: list[str]) -> int:
    def main(args):
        parser = argparse.ArgumentParser()
        train_cli.add_arguments(parser)
        return train_cli.main(parser.parse_args(args))
    return run_command("train", main, argv)


def weights(path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of `folder` but the log (a refused run appends its log line) by its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "train.log"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, train_data_root):  # noqa: F811
    """`(folder, cache dir)`: the uninterrupted 6-step run, checkpoints at steps 2, 4 and 6."""
    tmp = tmp_path_factory.mktemp("resume_checks")
    out, cache = tmp / "full", tmp / "hf"
    assert train(cli(out, train_data_root, cache)) == 0
    return out, cache


@pytest.fixture
def stopped(finished, tmp_path):
    """A copy of the run as a stop after checkpoint-4 leaves it (no checkpoint-6, no final model)."""
    full, _ = finished
    out = tmp_path / "run"
    shutil.copytree(full, out)
    shutil.rmtree(out / "checkpoint-6")
    for final in ("model.safetensors", "gap_mllm_training.json"):
        (out / final).unlink()
    return out


def resume(stopped, finished, train_data_root, *extra, resume_from="auto"):  # noqa: F811
    return train([*cli(stopped, train_data_root, finished[1], *extra), "--resume", str(resume_from)])


def refusal(capsys) -> str:
    """The one line a refused `gap-mllm train` ends its stderr with; the lines before it are the run's plan as far as
    it got (its log file, the checkpoint it resumes), never a traceback or a second error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert not any(line.startswith(("gap-mllm train: error", "Traceback")) for line in err[:-1]), err
    assert all(line.startswith(("log    : ", "resuming from ")) for line in err[:-1]), err
    return err[-1]


def test_the_uninterrupted_run_records_its_settings(finished):
    record = json.loads((finished[0] / RUN_RECORD_FILE).read_text())
    assert record["run"]["training.learning_rate"] == 1e-3 and record["run"]["data.tasks"] == ["reconstruction"]
    assert record["changes"] == []


def test_a_clean_resume_ends_at_the_uninterrupted_weights(stopped, finished, train_data_root, capsys):  # noqa: F811
    assert resume(stopped, finished, train_data_root) == 0
    expected, got = weights(finished[0] / "checkpoint-6" / "model.safetensors"), weights(stopped / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert "changed_settings" not in json.loads((stopped / "gap_mllm_training.json").read_text())


@pytest.mark.parametrize("change, named", [
    ("training.learning_rate=0.5", "training.learning_rate: 0.001 then, 0.5 now"),
    ("data.tasks=[detection]", "data.tasks: ['reconstruction'] then, ['detection'] now"),
    ("training.seed=1", "training.seed: 0 then, 1 now"),
    ("training.gradient_accumulation_steps=2", "training.gradient_accumulation_steps: 1 then, 2 now"),
])
def test_another_setting_is_refused_in_one_line_naming_it_and_the_checkpoint(stopped, finished, train_data_root,
                                                                              capsys, change, named):  # noqa: F811
    before = snapshot(stopped)
    assert resume(stopped, finished, train_data_root, change) == 2
    assert refusal(capsys).startswith(
        f"gap-mllm train: error: {stopped / 'checkpoint-4'} holds step 4 of another run: its settings differ ({named})")
    assert snapshot(stopped) == before  # nothing written, nothing lost


def test_the_learning_rate_is_refused_even_with_the_opt_in(stopped, finished, train_data_root, capsys):  # noqa: F811
    """Trainer takes the rate from the checkpoint's optimizer and scheduler: printing 0.5 while training at 1e-3 is
    the silent wrong answer this refuses."""
    before = snapshot(stopped)
    assert resume(stopped, finished, train_data_root, "training.learning_rate=0.5",
                  "run_state.accept_other_settings=true") == 2
    err = capsys.readouterr().err
    assert "its settings differ (training.learning_rate: 0.001 then, 0.5 now), which a resume cannot change" in err
    assert snapshot(stopped) == before


def test_the_python_api_goes_through_the_same_rule(stopped, finished, train_data_root):  # noqa: F811
    recipe = load_recipe(RECIPE, [*SETTINGS, f"data.cache_dir={finished[1]}", f"data.data_root={train_data_root}",
                                  f"training.output_dir={stopped}", "training.report_to=none", "training.seed=3"])
    with pytest.raises(RunStateError, match=r"checkpoint-4 holds step 4 of another run: its settings differ "
                                            r"\(training.seed: 0 then, 3 now\)"):
        run_training(recipe, resume_from_checkpoint="auto")
    with pytest.raises(RunStateError, match=r"checkpoint-2 holds step 2 of another run"):
        run_training(recipe, resume_from_checkpoint=str(stopped / "checkpoint-2"))


def test_a_deliberate_change_of_tasks_is_said_in_the_plan_and_recorded(stopped, finished, train_data_root,
                                                                         caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="gap_mllm"):
        assert resume(stopped, finished, train_data_root, "data.tasks=[detection]",
                      "run_state.accept_other_settings=true") == 0
    plan = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume : ")]
    assert plan == [f"resume : from {stopped / 'checkpoint-4'}; settings changed from there on "
                    "(run_state.accept_other_settings): data.tasks: ['reconstruction'] then, ['detection'] now"]
    change = {"at_step": 4, "from": "checkpoint-4",
              "settings": {"data.tasks": {"then": ["reconstruction"], "now": ["detection"]}}}
    record = json.loads((stopped / "gap_mllm_training.json").read_text())
    assert record["tasks"] == ["detection"] and record["changed_settings"] == [change] and record["global_step"] == 6
    assert json.loads((stopped / RUN_RECORD_FILE).read_text())["changes"] == [change]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def edit_step(path):
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "global_step": 2}))


DAMAGES = {
    "optimizer.pt deleted": ("optimizer.pt", lambda p: p.unlink(), "no optimizer.pt"),
    "scheduler.pt deleted": ("scheduler.pt", lambda p: p.unlink(), "no scheduler.pt"),
    "global_step edited": ("trainer_state.json", edit_step,
                           "trainer_state.json says global_step 2, and the folder is the checkpoint of step 4"),
    "model.safetensors truncated": ("model.safetensors", truncate,
                                    "model.safetensors cannot be read (Error while deserializing header"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_auto_skips_a_damaged_checkpoint_naming_it_and_resumes_the_previous_one(stopped, finished, train_data_root,
                                                                                caplog, case):  # noqa: F811
    name, damage, named = DAMAGES[case]
    damage(stopped / "checkpoint-4" / name)
    with caplog.at_level(logging.INFO, logger="gap_mllm"):
        assert resume(stopped, finished, train_data_root) == 0
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipping incomplete checkpoint {stopped / 'checkpoint-4'}: {named}")
    assert f"resume : from {stopped / 'checkpoint-2'}" in [r.getMessage() for r in caplog.records]
    expected, got = weights(finished[0] / "checkpoint-6" / "model.safetensors"), weights(stopped / "model.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_an_explicit_damaged_checkpoint_is_refused_by_name(stopped, finished, train_data_root, capsys, case):  # noqa: F811
    name, damage, named = DAMAGES[case]
    damage(stopped / "checkpoint-4" / name)
    before = snapshot(stopped)
    assert resume(stopped, finished, train_data_root, resume_from=stopped / "checkpoint-4") == 2
    assert refusal(capsys).startswith(
        f"gap-mllm train: error: --resume {stopped / 'checkpoint-4'}: not a complete checkpoint ({named}")
    assert snapshot(stopped) == before


def test_auto_with_no_complete_checkpoint_left_is_refused_and_writes_nothing(stopped, finished, train_data_root,
                                                                             capsys):  # noqa: F811
    (stopped / "checkpoint-4" / "optimizer.pt").unlink()
    truncate(stopped / "checkpoint-2" / "model.safetensors")
    before = snapshot(stopped)
    assert resume(stopped, finished, train_data_root) == 2
    err = capsys.readouterr().err
    assert f"--resume auto: {stopped} holds no complete checkpoint to resume from ({stopped / 'checkpoint-4'}: no " \
           "optimizer.pt" in err
    assert snapshot(stopped) == before
