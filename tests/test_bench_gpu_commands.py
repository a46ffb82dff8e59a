"""The GPU commands of bench/README.md stay runnable as written: each script parses them (`--help` works) and, on a
machine without CUDA, refuses with one line instead of a traceback. The benches written for the GPU figures that
wait (training arms, VGGT attention arms, ZeRO resumed) run their CPU logic here: the same batches and initial
weights for every arm, the packed arm's loss curve equal to the padded one in float32, kernels that cannot run here
recorded as skipped with the reason, the ZeRO runs' commands and loss comparison."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_geometry_encoder  # noqa: E402
import bench_train_arms  # noqa: E402
import bench_zero_resume  # noqa: E402

from .test_train_fixtures import train_data_root  # noqa: E402,F401  (session fixture of the slow test)

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without a GPU")


def readme_commands() -> list[list[str]]:
    """Every `python bench/<script>.py ...` command of bench/README.md (continued lines joined), as argv lists."""
    text = (BENCH / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip().strip("`")
        if line.startswith("python bench/"):
            commands.append(shlex.split(line.split("` (")[0].split(" && ")[0])[1:])
    return commands


def on_the_cpu(argv: list[str]) -> bool:
    """A command that names `--device cpu`: a CPU figure of a real-size bench, not a GPU command."""
    return "--device" in argv[:-1] and argv[argv.index("--device") + 1] == "cpu"


def gpu_commands() -> list[list[str]]:
    return [argv for argv in readme_commands() if not on_the_cpu(argv) and (
        "cuda" in argv or "--real-size" in argv or any(arg.startswith("--vllm-python") for arg in argv))]


def test_the_readme_names_every_gpu_bench():
    scripts = {Path(argv[0]).name for argv in gpu_commands()}
    assert scripts == {"bench_real_size.py", "bench_frames_memory.py", "bench_eval_scale.py", "bench_engines.py", "bench_geometry_encoder.py",
                       "bench_train_arms.py", "bench_zero_resume.py"}


@NO_GPU
@pytest.mark.parametrize("argv", gpu_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_each_gpu_command_parses_and_refuses_in_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written where the command runs
    module = importlib.import_module(Path(argv[0]).stem)
    with pytest.raises(SystemExit) as help_exit:
        module.main(["--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        module.main(argv[1:])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{Path(argv[0]).name}: ") and "Traceback" not in err
    setup = "make vllm-venv" if argv[0].endswith("bench_engines.py") else "make gpu-venv"  # vLLM has its own environment
    assert f"needs a CUDA device; run on a GPU machine after `{setup}` (torch {torch.__version__} sees none)" in err
    assert not list(tmp_path.iterdir())


def test_training_arms_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "arms.json"
    threads = torch.get_num_threads()
    try:
        code = bench_train_arms.main(["--size", "small", "--device", "cpu", "--steps", "3", "--warmup-steps", "1",
                                      "--threads", "1", "--out", str(out), "--arms", "sdpa", "eager", "sdpa_packed",
                                      "flash_attention_2", "sdpa_liger", "sdpa_compile"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "done; results in" in capsys.readouterr().out
    measured = json.loads(out.read_text())["measurements"]
    assert list(measured) == ["build", "batches", "arm_sdpa", "arm_eager", "arm_sdpa_packed", "arm_flash_attention_2",
                              "arm_sdpa_liger", "arm_sdpa_compile", "loss_curves"]
    assert measured["arm_flash_attention_2"]["skipped"] == ("needs the flash-attn package (not installed) and a CUDA "
                                                            "device (this bench runs on the CPU)")
    assert measured["arm_sdpa_liger"]["skipped"].startswith("needs the liger-kernel package (not installed)")
    assert measured["arm_sdpa_compile"]["skipped"].startswith("this bench compiles on CUDA only")
    curves = {name: measured[f"arm_{name}"]["losses"] for name in ("sdpa", "eager", "sdpa_packed")}
    assert all(len(curve) == 3 for curve in curves.values())
    assert curves["eager"][0] == pytest.approx(curves["sdpa"][0], rel=1e-6)  # every arm starts from the same weights
    assert curves["sdpa"][2] < curves["sdpa"][0]  # and trains
    # packing changes the layout, not the loss: float32, step by step
    assert curves["sdpa_packed"] == pytest.approx(curves["sdpa"], rel=1e-5)
    assert measured["arm_sdpa_packed"]["padding_share"] == 0 < measured["arm_sdpa"]["padding_share"]
    assert measured["arm_sdpa"]["mfu"] is None and measured["arm_sdpa"]["tokens_per_s"] > 0  # no GPU peak on a CPU
    comparison = measured["loss_curves"]
    assert [row["step"] for row in comparison["curves"]] == [1, 2, 3]
    assert comparison["gaps"]["sdpa"]["max_abs_diff"] == 0
    assert measured["arm_sdpa_packed"]["max_abs_diff"] == comparison["gaps"]["sdpa_packed"]["max_abs_diff"] < 1e-4


def test_the_loss_gap_is_judged_against_the_eager_arm():
    gaps = bench_train_arms.loss_gaps({"sdpa": [2.0, 1.5], "eager": [2.0, 1.51], "fast": [2.0, 1.53], "faster": [2.0, 1.52]})
    assert gaps["eager"]["max_abs_diff"] == pytest.approx(0.01)
    assert gaps["fast"]["within_noise"] is False and gaps["faster"]["within_noise"] is True  # 2 × eager's gap
    assert bench_train_arms.loss_gaps({"sdpa": [1.0], "fast": [1.1]})["fast"]["within_noise"] is None  # no reference


def test_vggt_attention_arms_in_one_process():
    args = argparse.Namespace(
        real_size=False, heads=False, device="cpu", dtype="float32", height=56, width=84, repeats=1, threads=0)
    encoder = bench_geometry_encoder.build_encoder(args)
    rows = {arm: bench_geometry_encoder.measure_arm(args, arm, [1, 2], encoder) for arm in ("sdpa", "eager")}
    assert all(row["seconds"] > 0 for arm_rows in rows.values() for row in arm_rows)
    assert encoder.config._attn_implementation == "eager"  # switched per arm
    assert bench_geometry_encoder.unavailable("sdpa_cudnn", "cpu") == "a forced torch sdpa backend is a CUDA kernel"
    assert bench_geometry_encoder.unavailable("flash_attention_4", "cpu").startswith("needs the flash-attn-4 package")
    assert bench_geometry_encoder.unavailable("eager", "cpu") is None


def test_vggt_table_sets_each_arm_beside_the_published_figure():
    args = argparse.Namespace(height=518, width=518)
    lines = bench_geometry_encoder.table(args, [50, 100], {"sdpa": [{"frames": 50, "seconds": 2.08}],
                                                           "flash_attention_2": {"skipped": "needs flash-attn"}})
    assert lines[0] == ("| frames | tokens | sdpa s | flash_attention_2 s | VGGT published s (FA3) | sdpa / published | "
                        "flash_attention_2 / published |")
    assert lines[2] == "| 50 | 68700 | 2.080 | skipped | 1.04 | 2.00 | — |"  # 50 × (37² + 5) tokens
    assert lines[3] == "| 100 | 137400 | — | skipped | 3.12 | — | — |"


def test_zero_runs_are_the_recipe_under_accelerate_and_compared_with_the_plain_run(tmp_path):
    args = argparse.Namespace(
        size="real", data="/data/mini", device="cuda", steps=6, lr=None, seed=0, work=str(tmp_path))
    plain = bench_zero_resume.command(args, "plain", "/models/real", tmp_path / "plain", 6, resume=False)
    assert plain[:4] == [sys.executable, "-m", "gap_mllm.training.train_cli", "--config"]
    assert "--resume" not in plain and "--set" in plain
    zero3 = bench_zero_resume.command(args, "zero3_resumed", "/models/real", tmp_path / "z", 6, resume=True)
    config = bench_zero_resume.ACCELERATE_CONFIGS[3]
    assert zero3[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes"]
    assert zero3[-2:] == ["--resume", "auto"] and zero3[zero3.index("--config") + 1] == str(bench_zero_resume.RECIPE)
    sets = [zero3[i + 1] for i, item in enumerate(zero3) if item == "--set"]
    assert {"model.name_or_path=/models/real", "training.max_steps=6", "training.save_steps=3", "cache.enabled=false",
            "training.lr_scheduler_type=constant", "training.logging_steps=1", "device=cuda"} <= set(sets)
    from gap_mllm.training.config import load_recipe

    load_recipe(bench_zero_resume.RECIPE, sets)  # the overrides are a valid recipe
    assert bench_zero_resume.unavailable("plain_resumed", "cpu") is None
    assert bench_zero_resume.unavailable("zero2_resumed", "cpu").startswith("the ZeRO arms run on CUDA")

    state = tmp_path / "arm" / "checkpoint-2"
    state.mkdir(parents=True)
    state.joinpath("trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 1, "loss": 2.5, "lm_loss": 2.5}, {"step": 2, "loss": 2.25}, {"step": 2, "train_loss": 2.4}]}))
    assert bench_zero_resume.step_losses(tmp_path / "arm", 2) == [2.5, 2.25]
    gap = bench_zero_resume.compare([2.5, 2.25], [2.5, 2.3], tolerance=0.02)
    assert gap["max_abs_diff"] == pytest.approx(0.05) and gap["max_rel_diff"] == pytest.approx(0.05 / 2.25)
    assert gap["within_tolerance"] is False


@pytest.mark.slow
def test_plain_run_resumed_once_has_the_losses_of_the_uninterrupted_run(tmp_path, train_data_root):
    """The CPU mode end to end (three `gap-mllm train` processes): resuming is exact in float32."""
    out = tmp_path / "zero.json"
    bench_zero_resume.main(["--size", "tiny", "--data", str(train_data_root), "--steps", "2", "--work",
                            str(tmp_path / "work"), "--out", str(out), "--arms", "plain_resumed", "zero2_resumed"])
    arms = json.loads(out.read_text())["arms"]
    assert arms["plain_resumed"]["losses"] == arms["plain"]["losses"] and arms["plain_resumed"]["within_tolerance"]
    assert arms["zero2_resumed"]["skipped"].startswith("the ZeRO arms run on CUDA")



def test_a_bench_kernel_arm_is_refused_with_the_training_run_s_words(monkeypatch, capsys):
    """bench/needs_gpu.py takes the requirement and the remedy from training/kernels.py: on a GPU too old for the
    kernel, installing cannot help, so the line says to choose another attention."""
    import needs_gpu

    from gap_mllm.training import kernels

    monkeypatch.setattr(kernels, "installed_version", lambda name: "1.0")
    monkeypatch.setattr(kernels, "cuda_capability", lambda: (8, 6))
    with pytest.raises(SystemExit) as refused:
        needs_gpu.require_kernel("bench_x.py", "--attn", "flash_attention_4", "cuda")
    assert refused.value.code == 2
    assert capsys.readouterr().err == ("bench_x.py: --attn flash_attention_4 needs a Hopper or newer GPU (compute "
                                       "capability 9.0+; this one is 8.6); on this GPU choose an attention it runs "
                                       "(flash_attention_2 from Ampere on, sdpa on any GPU)\n")
    needs_gpu.require_kernel("bench_x.py", "--attn", "flash_attention_2", "cuda")  # Ampere runs flash-attn 2.x
    monkeypatch.setattr(kernels, "installed_version", lambda name: None)
    with pytest.raises(SystemExit):
        needs_gpu.require_kernel("bench_x.py", "--attn", "flash_attention_2", "cuda")
    assert capsys.readouterr().err == ("bench_x.py: --attn flash_attention_2 needs the flash-attn package (not "
                                       "installed); install the GPU extras with `make gpu-venv`\n")
