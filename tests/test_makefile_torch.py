"""Which torch build `make install` asks pip for (the Makefile's "torch" block), read from `make -n`: nothing is
installed. Simulated machines set the variables the default is decided on (NVIDIA_GPU, PIP_SOURCES, UNAME_S); the
detection itself runs against a stand-in `nvidia-smi` and pip configurations of the test's own making. Torch's
version is printed only after the requirements are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def torch_install_line(tmp_path: Path, *assignments: str, env: dict | None = None) -> str:
    """The command `make install` would run to install torch into a fresh environment under tmp_path.

    PY points at this interpreter, so `pip config list` (the detection of pip's own sources) has a pip to ask."""
    command = ["make", "-n", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}", f"PY={sys.executable}", *assignments]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if " install " in line and '"torch' in line]
    assert len(lines) == 1, done.stdout
    return lines[0].split(" || ", 1)[1]  # after `python -c "import torch" ||`: only when torch is missing


def index_of(line: str) -> str | None:
    """The --index-url of a pip command line, None without one."""
    words = line.split()
    return words[words.index("--index-url") + 1] if "--index-url" in words else None


@pytest.mark.parametrize(("machine", "assignments", "expected"), [
    ("linux, no GPU, pip without sources of its own", ["NVIDIA_GPU=", "PIP_SOURCES=", "UNAME_S=Linux"], CPU_INDEX),
    ("linux with an NVIDIA GPU", ["NVIDIA_GPU=GPU 0: NVIDIA H100", "PIP_SOURCES=", "UNAME_S=Linux"], None),
    ("linux, no GPU, pip configured with a wheel folder", ["NVIDIA_GPU=", "PIP_SOURCES=global.find-links='/wheels'",
                                                           "UNAME_S=Linux"], None),
    ("macOS (PyPI's wheel is the CPU build)", ["NVIDIA_GPU=", "PIP_SOURCES=", "UNAME_S=Darwin"], None),
    ("the user's index wins on a GPU machine", ["TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130",
                                                "NVIDIA_GPU=GPU 0: x", "PIP_SOURCES="],
     "https://download.pytorch.org/whl/cu130"),
    ("the user's CPU index wins over pip's configuration", [f"TORCH_INDEX_URL={CPU_INDEX}", "NVIDIA_GPU=",
                                                            "PIP_SOURCES=global.index-url='https://mirror/simple'"],
     CPU_INDEX),
    ("an empty TORCH_INDEX_URL leaves the choice to pip", ["TORCH_INDEX_URL=", "NVIDIA_GPU=", "PIP_SOURCES=",
                                                           "UNAME_S=Linux"], None),
])
def test_the_torch_index_of_each_machine(tmp_path, machine, assignments, expected):
    line = torch_install_line(tmp_path, *assignments)
    assert index_of(line) == expected, f"{machine}: {line}"
    assert '"torch==2.13.0"' in line.split()


def test_torch_spec_is_a_variable(tmp_path):
    line = torch_install_line(tmp_path, "TORCH_SPEC=torch==2.14.1", "NVIDIA_GPU=", "PIP_SOURCES=", "UNAME_S=Linux")
    assert '"torch==2.14.1"' in line.split() and index_of(line) == CPU_INDEX


@pytest.fixture
def clean_environment(tmp_path):
    """An environment whose pip reads no configuration file and no PIP_* variable, and whose PATH starts with a
    folder for a stand-in `nvidia-smi` (none there yet)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip: no configuration file at all
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env, bin_dir


def fake_nvidia_smi(bin_dir: Path, listing: str, status: int = 0) -> None:
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\nexit {status}\n")
    script.chmod(0o755)


@pytest.mark.skipif(sys.platform == "win32", reason="stand-in nvidia-smi is a shell script")
def test_detection_a_cpu_machine_with_plain_pip_gets_the_cpu_index(tmp_path, clean_environment):
    env, bin_dir = clean_environment
    fake_nvidia_smi(bin_dir, "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\n", 9)
    assert index_of(torch_install_line(tmp_path, "UNAME_S=Linux", env=env)) == CPU_INDEX


@pytest.mark.skipif(sys.platform == "win32", reason="stand-in nvidia-smi is a shell script")
def test_detection_a_gpu_machine_gets_pypi(tmp_path, clean_environment):
    env, bin_dir = clean_environment
    fake_nvidia_smi(bin_dir, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\n")
    assert index_of(torch_install_line(tmp_path, "UNAME_S=Linux", env=env)) is None


@pytest.mark.parametrize("variable", ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"])
def test_detection_pip_configured_sources_decide(tmp_path, clean_environment, variable):
    env, _ = clean_environment
    env[variable] = "file:///somewhere/simple"
    assert index_of(torch_install_line(tmp_path, "UNAME_S=Linux", env=env)) is None


def test_detection_a_pip_conf_with_an_index_decides(tmp_path, clean_environment):
    env, _ = clean_environment
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\n")
    env["PIP_CONFIG_FILE"] = str(config)
    assert index_of(torch_install_line(tmp_path, "UNAME_S=Linux", env=env)) is None
    config.write_text("[global]\ntimeout = 60\n")  # a configuration that names no source leaves the default
    assert index_of(torch_install_line(tmp_path, "UNAME_S=Linux", env=env)) == CPU_INDEX


def test_install_reports_the_build_it_got(tmp_path):
    done = subprocess.run(["make", "-n", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}", "NVIDIA_GPU=",
                           "PIP_SOURCES=", "UNAME_S=Linux"], capture_output=True, text=True, timeout=120)
    assert "(CPU build)" in done.stdout and "(CUDA %s build)" in done.stdout


@pytest.mark.parametrize("target", ["vllm-venv", "gpu-venv"])
def test_the_gpu_environments_stop_on_a_machine_without_an_nvidia_gpu(tmp_path, target):
    """They install several GB of CUDA wheels: without a GPU, one line and nothing run; ANY_MACHINE=1 or a GPU builds."""
    def dry_run(*assignments):
        return subprocess.run(["make", "-n", "-C", str(REPO), target, f"VENV={tmp_path / 'venv'}", f"PY={sys.executable}",
                               "PIP_SOURCES=", *assignments], capture_output=True, text=True, timeout=120)

    refused = dry_run("NVIDIA_GPU=")
    assert refused.returncode == 2 and " -m venv " not in refused.stdout  # (stdout: make's entering/leaving lines)
    assert refused.stderr.strip().endswith("make vllm-venv / gpu-venv: no NVIDIA GPU on this machine (nvidia-smi -L "
                                           "lists none), and they install several GB of CUDA wheels for one; run it on "
                                           "the GPU machine, or add ANY_MACHINE=1 to build it anyway.  Stop.")
    for assignment in ("NVIDIA_GPU=GPU 0: NVIDIA H100", "ANY_MACHINE=1"):
        built = dry_run("NVIDIA_GPU=" if assignment.startswith("ANY") else assignment, assignment)
        assert built.returncode == 0 and " -m venv " in built.stdout, built.stderr


def test_make_install_imports_torch_only_after_the_requirements_are_installed():
    done = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    requirements = next(i for i, line in enumerate(lines) if 'install -e ".[dev]"' in line)
    printed = next(i for i, line in enumerate(lines) if "import torch; print" in line)
    assert requirements < printed
