"""`make gpu-figures` (bench/gpu_figures.py) on the CPU: its dry run writes the plan without installing or running
anything; the plan fits one device call (budgets, at most 8 flat files back), names every GPU bench arm and the
wheels, and each arm's arguments are accepted by its bench (which then refuses for want of CUDA, in one line)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_figures  # noqa: E402


def test_the_dry_run_writes_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a) or pytest.fail("the dry run started a process"))
    out = tmp_path / "figures"
    assert gpu_figures.main(["--dry-run", "--out", str(out), "--wheels", str(tmp_path / "no-wheels")]) == 0
    assert not ran
    files = sorted(path.name for path in out.iterdir())
    assert files == ["gpu_figures.json", "gpu_figures.log"] and all(re.fullmatch(r"[\w.-]+", f) for f in files)
    plan = json.loads((out / "gpu_figures.json").read_text())
    arms = plan["arms"]
    assert list(arms) == [arm.name for arm in gpu_figures.ARMS]
    planned = {name for name, arm in arms.items() if arm["status"] == "planned"}
    assert {"train_arms", "data", "eval_scale"} <= planned
    assert list(arms)[0] == "train_arms"  # correctness first (every step checked finite), then the figures
    assert "--batch 8" in arms["train_arms"]["command"] and "--steps 30" in arms["train_arms"]["command"]
    for name in ("flash_attention_4", "vllm"):
        assert arms[name]["status"] == "skipped" and arms[name]["reason"]
    assert sum(arm.get("budget_s", 0) for arm in arms.values()) + gpu_figures.INSTALL_BUDGET_S <= 480  # 8 minutes
    outputs = [arm.output for arm in gpu_figures.ARMS if arm.output]
    assert len(outputs) + 2 <= 8 and len(set(outputs)) == len(outputs) and all("/" not in o for o in outputs)
    assert any(w.startswith("transformers==5.23") for w in plan["wheels"])
    assert any(w.startswith("liger-kernel==") for w in plan["wheels"])
    assert "train_arms: planned" in capsys.readouterr().out


def test_a_real_run_without_wheels_refuses_in_one_line(tmp_path, capsys):
    assert gpu_figures.main(["--out", str(tmp_path / "o"), "--wheels", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make gpu-wheels" in err


def test_a_plan_over_the_call_is_refused():
    long_arm = gpu_figures.GpuArm("long", ("x.py",), 600, "long.json")
    with pytest.raises(ValueError, match=r"over the call's 480 s"):
        gpu_figures.check_plan((long_arm,))


def test_the_download_command_fetches_binaries_for_the_gpu_python(tmp_path):
    command = gpu_figures.download_command(tmp_path)
    assert command[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in command and "3.12" in command
    assert command[-len(gpu_figures.WHEELS):] == list(gpu_figures.WHEELS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without a GPU")
@pytest.mark.parametrize("arm", [a for a in gpu_figures.ARMS if a.argv and a.argv[0].startswith("bench/")
                                 and a.argv[0] != "bench/bench_zero_resume.py"], ids=lambda a: a.name)
def test_each_arms_arguments_are_accepted_by_its_bench(arm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(Path(arm.argv[0]).stem)
    argv = [part.format(out=tmp_path, work=tmp_path) for part in arm.argv[1:]]
    with pytest.raises(SystemExit) as refused:
        module.main(argv)
    err = capsys.readouterr().err
    # argparse would say "usage: ..." (also status 2); the bench's own refusal names the missing CUDA device
    assert refused.value.code == 2 and "usage:" not in err and "needs a CUDA device" in err, shlex.join(argv)


def _sparse_wheel(folder: Path, name: str, size: int) -> None:
    with open(folder / name, "wb") as wheel:
        wheel.truncate(size)


def test_a_wheels_folder_over_its_budget_is_refused_naming_the_largest_wheels(tmp_path):
    _sparse_wheel(tmp_path, "transformers-9-py3-none-any.whl", gpu_figures.WHEELS_BUDGET_BYTES - 10)
    gpu_figures.check_wheels_budget(tmp_path)  # within the budget
    _sparse_wheel(tmp_path, "huge-1-py3-none-any.whl", 11)
    with pytest.raises(ValueError, match=r"over their 20 MiB of the 64 MiB a device call carries; largest: "
                                         r"transformers-9-py3-none-any\.whl \(20\.0 MiB\), huge-1"):
        gpu_figures.check_wheels_budget(tmp_path)


def test_a_download_over_the_budget_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    def download(command):
        _sparse_wheel(Path(command[command.index("-d") + 1]), "big-1-py3-none-any.whl",
                      gpu_figures.WHEELS_BUDGET_BYTES + 1)
        return 0
    monkeypatch.setattr(subprocess, "call", download)
    assert gpu_figures.main(["--download-wheels", "--wheels", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "big-1-py3-none-any.whl" in err
