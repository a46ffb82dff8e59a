# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv if absent, installs torch when it is missing (which build: "torch" below), installs the
# package, then runs. `make install` does the set-up alone.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.gap-mllm-installed

# torch, installed once into $(VENV) when it has none (`make clean` first to change the build):
#   TORCH_SPEC       the requirement (default torch==2.13.0);
#   TORCH_INDEX_URL  the index it comes from (pip --index-url). By default, on Linux without an NVIDIA GPU
#                    (`nvidia-smi -L` lists none): PyTorch's CPU index, the CPU build (~200 MB) instead of PyPI's
#                    CUDA build (several GB of nvidia-* wheels). With a GPU: none, so PyPI's CUDA build. None either
#                    where pip's own configuration names a source (index-url, extra-index-url or find-links in a
#                    pip.conf or a PIP_* variable: a mirror, a wheel folder), which then decides; and on macOS and
#                    Windows, whose PyPI wheels are CPU builds. Examples:
#                    make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu    (CPU build whatever pip says)
#                    make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130  (a CUDA build without a GPU)
#                    make install TORCH_INDEX_URL=                                        (pip's own choice)
# NVIDIA_GPU, PIP_SOURCES and UNAME_S hold what the default is decided on (set them to simulate another machine).
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX_URL := https://download.pytorch.org/whl/cpu
NVIDIA_GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU ')
PIP_SOURCES ?= $(shell $(PY) -m pip config list 2>/dev/null | grep -E '^[^=]*\.(index-url|extra-index-url|find-links)=')
UNAME_S ?= $(shell uname -s)
TORCH_INDEX_URL ?= $(if $(NVIDIA_GPU)$(PIP_SOURCES),,$(if $(filter Linux,$(UNAME_S)),$(TORCH_CPU_INDEX_URL)))

.PHONY: install test test-all demo notebooks gpu-machine vllm-venv gpu-venv gpu-wheels gpu-figures space space-bundle bench mini mini-ablation clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# pip installs without compiling (--no-compile): it would compile the 17,000 modules one after the other; the last
# step compiles them all on every core instead (compileall -j 0: a fresh install on 2 cores took 66 s, not 75 s, with
# the same .pyc files). Like pip, it passes over the few files that do not compile (templates, other Pythons' code).
SITE_PACKAGES = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(STAMP): setup.py | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" --no-compile $(addprefix --index-url ,$(TORCH_INDEX_URL))
	@# the package with its requirements (the grammar engine, llguidance, included) and the dev extra's
	$(PIP) install -e ".[dev]" --no-compile
	# the lmms-eval plugin's evaluator, without lmms-eval's own requirements (they pull a CUDA torch): setup.py
	$(PIP) install --no-compile --no-deps "$$($(PY) -c 'from gap_mllm.evaluation.lmms_eval_plugin import LMMS_EVAL_REQUIREMENT as r; print(r)')"
	$(PY) -m compileall -qq -j 0 "$(SITE_PACKAGES)" || true
	@# after the package's requirements: torch imported before numpy is installed warns "Failed to initialize NumPy"
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA %s build)' % torch.version.cuda if torch.version.cuda else '(CPU build)')"
	@touch $(STAMP)

install: $(STAMP)

# two pytest-xdist workers, one test file each at a time (its module fixtures built once), one torch thread each
# (tests/conftest.py): the suite's wall time on a 2-core machine (tests/README.md). Bytecode is written even where the
# environment says not to (PYTHONDONTWRITEBYTECODE): the tests start about 200 fresh Python processes, and each
# would compile the package's modules again (and each worker rewrite every test module's asserts again). The 25
# slowest test phases are printed at the end: where the suite's time goes, on every CI run
# First, transformers' common model and processor tests (tests/transformers_common.py): the source distribution of the
# installed transformers, downloaded once into $(VENV)/gap-mllm-cache (never the checkout); offline, their test file
# skips and says why
test: install
	$(PY) tests/transformers_common.py
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -n 2 --dist loadfile --durations=25

test-all: install
	$(PY) tests/transformers_common.py
	$(PY) -m pytest -q -m ""

demo: install
	$(VENV)/bin/gap-mllm demo

# Re-run the example notebooks on the embedded GAP-MLLM-Mini and store their outputs in them (283 s of CPU time: README.md).
notebooks: install
	$(PY) examples/notebooks/execute_notebooks.py examples/notebooks/*.ipynb

# The Gradio Space on this machine (gradio: setup.py's space extra, part of the dev extra make install installs)
space: install
	$(VENV)/bin/gap-mllm space

# vLLM for serving (gap_mllm/serving): its own environment, since vLLM pins an older transformers than gap-mllm.
# On a CUDA machine (it pulls the CUDA torch); the pinned version is defined once, in serving/vllm_settings.py.
VLLM_VENV ?= .venv-vllm
# vLLM and the GPU kernels are CUDA software of several GB: on a machine without an NVIDIA GPU (NVIDIA_GPU above is
# empty) their targets stop before anything is installed; ANY_MACHINE=1 builds them anyway.
gpu-machine:
	$(if $(NVIDIA_GPU)$(ANY_MACHINE),,$(error make vllm-venv / gpu-venv: no NVIDIA GPU on this machine (nvidia-smi -L lists none), and they install several GB of CUDA wheels for one; run it on the GPU machine, or add ANY_MACHINE=1 to build it anyway))

vllm-venv: gpu-machine install
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install "$$($(PY) -c 'from gap_mllm.serving.vllm_settings import VLLM_REQUIREMENT; print(VLLM_REQUIREMENT)')"

# GPU kernels (training/kernels.py: flash-attn 2.x and 4, Liger; DeepSpeed for ZeRO-2/3) in their own environment, on
# a CUDA machine; the CPU path above never installs them. torch from PyPI is its CUDA build. flash-attn 2.x builds
# against that torch (it needs nvcc / CUDA_HOME: setup.py's "flash" extra says more), so it goes in without build
# isolation, before the "gpu" extra (flash-attn-4 shares its folder). Offline: GPU_PIP_ARGS="--no-index --find-links DIR".
GPU_VENV ?= .venv-gpu
GPU_TORCH ?= torch==2.13.0
GPU_PIP_ARGS ?=
GPU_PIP := $(GPU_VENV)/bin/python -m pip --disable-pip-version-check
gpu-venv: gpu-machine
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PIP) install $(GPU_PIP_ARGS) "$(GPU_TORCH)" setuptools wheel packaging psutil ninja
	$(GPU_PIP) install $(GPU_PIP_ARGS) --no-build-isolation -e ".[dev,flash]"
	$(GPU_PIP) install $(GPU_PIP_ARGS) -e ".[gpu]"
	$(GPU_VENV)/bin/python -c "from gap_mllm.training.kernels import kernel_report; print(*kernel_report(), sep='\n')"

# A folder ready to push as a Hub Space: app, front matter, this checkout's wheel, requirements.
space-bundle: install
	$(PY) examples/space/bundle_space.py --out build/space

# GAP-MLLM-Mini end to end: SynthRooms data, stages 0-2, evaluation on held-out scenes, the results table
# (mini/RESULTS.md) and the embedded default (mini/gap-mllm-mini). Each stage about an hour or less on 2 CPU cores, the
# stage-0 cameras stage about two;
# `MINI_ARGS="--device cuda --workers 16"` on a GPU machine. mini-ablation adds the ablation arms.
# Both run the research pipeline, lab/mini/ (`python -m lab.mini --help`: its options), from this checkout: it is not
# part of the installed package, which it trains and whose shipped Mini folder it writes.
MINI_OUT ?= runs/mini
MINI_ARGS ?=
# --overwrite: the shipped folder is replaced on purpose (its releases predate the marker of `--export`'s own folders)
mini: install
	$(PY) -m lab.mini --out $(MINI_OUT) --export mini/gap-mllm-mini --overwrite --table mini/RESULTS.md $(MINI_ARGS)

# the paper's claims (mini/README.md, "The paper's claims in miniature"): the arms from the sixth release's stage 0
# (ABLATION_STAGE0: `git archive 98942b5 mini/gap-mllm-mini modeling_gap_mllm | tar -x -C runs/stage0-sixth`), each
# stage's run state in mini/ablation-run; not a release, so nothing is exported: after each arm the claims so far
# replace only mini/RESULTS.md's section "The paper's claims in miniature" (lab/mini/claims.py)
ABLATION_STAGE0 ?= runs/stage0-sixth/mini/gap-mllm-mini
# --quote: model_card.md carries the claims table word for word; README.md states them in three sentences
mini-ablation: install
	$(PY) -m lab.mini --out runs/ablation --data $(MINI_OUT)/data --ablation --stage0 $(ABLATION_STAGE0) \
		--run-state mini/ablation-run --eval-limit 1000 --table mini/RESULTS.md --quote model_card.md $(MINI_ARGS)

bench: install
	$(PY) bench/bench_forward.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(GPU_VENV) build *.egg-info .pytest_cache

# Every GPU figure in one call of at most 9 minutes (bench/gpu_figures.py; bench/README.md, "One call on a GPU").
# First, where there is a network: `make gpu-wheels` downloads into .whl/ (ignored) the wheels the lent GPU machines
# lack (transformers, datasets, trl, evaluate, liger-kernel; about 17 MB). Then on the GPU machine, whose python3 holds
# the CUDA torch: `make gpu-figures GPU_FIGURES_OUT=<folder>` installs them offline and runs every arm.
GPU_PYTHON ?= python3
GPU_FIGURES_OUT ?= gpu-figures
gpu-wheels: install
	$(PY) bench/gpu_figures.py --download-wheels --wheels .whl

gpu-figures:
	$(GPU_PYTHON) bench/gpu_figures.py --wheels .whl --out $(GPU_FIGURES_OUT)
