"""lmms-eval plugin: GAP-MLLM as an lmms-eval model (`gap_mllm`) and its benchmarks as lmms-eval tasks.

    gap-mllm export-lmms --data DATA --split val --out lmms_tasks      # documents + task YAMLs
    python -m lmms_eval --model gap_mllm --model_args pretrained=CKPT,batch_size=8 \\
        --tasks gap_scanrefer,gap_scan2cap,gap_det,gap_spatial_qa --include_path lmms_tasks --output_path out

The model is registered with lmms-eval through this package's `lmms_eval.models` entry point (installed with
the package; lmms-eval itself: `pip install --no-deps lmms-eval==0.7.3`), or with `LMMS_EVAL_PLUGINS=gap_mllm.evaluation.lmms_eval_plugin` (lmms-eval's older plugin
variable: it imports `<plugin>.models.AVAILABLE_MODELS`, and needs a `<plugin>.tasks` package, which is empty
here). The tasks are the YAMLs in `templates/`, copied by
`gap-mllm export-lmms` next to the documents it writes (the data location is the user's, so the task files
live with the data); lmms-eval finds them through `--include_path`.

    models/gap_mllm.py   the model: HF backend, batched and scene-reusing generation (evaluation/batched_answers.py)
    vllm_backend.py      the model's backend=vllm: the encoder half here, the language half in a vLLM server
    documents.py         one JSON line per annotation record; the model call of each stage (Benchmark.request)
    task_functions.py    what the YAMLs name: prompts, frames, the two-stage ScanRefer rounds, the scores
    export.py            `gap-mllm export-lmms`
"""

from pathlib import Path

# The lmms-eval release the plugin is written against (its multi-round protocol, model registry and task
# loading), installed without its own requirements (setup.py, extra "lmms"; make install does it).
LMMS_EVAL_VERSION = "0.7.3"
LMMS_EVAL_REQUIREMENT = f"lmms-eval=={LMMS_EVAL_VERSION}"

# lmms-eval task name -> benchmark of gap_mllm.evaluation.tasks
LMMS_TASKS = {"gap_scanrefer": "grounding", "gap_scan2cap": "captioning", "gap_det": "detection", "gap_spatial_qa": "spatial_qa"}
GROUP = "gap_mllm"  # the lmms-eval group of the four tasks

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def task_template(lmms_task: str) -> Path:
    """The shipped task YAML of an lmms-eval task name (package data)."""
    if lmms_task not in LMMS_TASKS:
        raise ValueError(f"unknown GAP-MLLM lmms-eval task {lmms_task!r}; choose from {', '.join(LMMS_TASKS)}")
    return TEMPLATES_DIR / f"{lmms_task}.yaml"
