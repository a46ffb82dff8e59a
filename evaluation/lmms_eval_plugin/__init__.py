"""lmms-eval plugin: GAP-MLLM as an lmms-eval model (`gap_mllm`) and its benchmarks as lmms-eval tasks.

    gap-mllm export-lmms --data DATA --split val --out lmms_tasks      # documents + task YAMLs
    python -m lmms_eval --model gap_mllm --model_args pretrained=CKPT,batch_size=8 \\
        --tasks gap_mllm --include_path lmms_tasks --output_path out

The model is registered with lmms-eval through this package's `lmms_eval.models` entry point (installed with
the package; lmms-eval itself: `pip install --no-deps lmms-eval==0.7.3`), or with `LMMS_EVAL_PLUGINS=gap_mllm.evaluation.lmms_eval_plugin` (lmms-eval's older plugin
variable: it imports `<plugin>.models.AVAILABLE_MODELS`, and needs a `<plugin>.tasks` package, which is empty
here). The tasks are the YAMLs in `templates/`, and for a task with a
package module (gap_mllm.processing.tasks) its own (`PackageTask.lmms_name`: `gap_<task>`, unless the module names
another or none), its YAML written from the module's facts (`task_yaml`), all
written by `gap-mllm export-lmms` next to the documents it writes (the data location is the user's, so the task files
live with the data); lmms-eval finds them through `--include_path`.

    models/gap_mllm.py   the model: HF backend, batched and scene-reusing generation (evaluation/batched_answers.py)
    vllm_backend.py      the model's backend=vllm: the encoder half here, the language half in a vLLM server
    documents.py         one JSON line per annotation record; the model call of each stage (Benchmark.request)
    task_functions.py    what the YAMLs name: prompts, frames, the two-stage ScanRefer rounds, the scores
    export.py            `gap-mllm export-lmms`
"""

from collections.abc import Mapping
from pathlib import Path

from gap_mllm.processing.tasks import LiveMapping, package_task, package_tasks

# The lmms-eval release the plugin is written against (its multi-round protocol, model registry and task
# loading), installed without its own requirements (setup.py, extra "lmms"; make install does it).
LMMS_EVAL_VERSION = "0.7.3"
LMMS_EVAL_REQUIREMENT = f"lmms-eval=={LMMS_EVAL_VERSION}"


def _lmms_tasks() -> dict[str, str]:
    """lmms-eval task name -> benchmark of gap_mllm.evaluation.tasks: that of each task module with one
    (`PackageTask.lmms_name`), in the order of the lmms-eval tasks (`PackageTask.lmms_order`)."""
    tasks = sorted((task for task in package_tasks() if task.lmms_name), key=lambda task: task.lmms_order)
    return {task.lmms_name: task.name for task in tasks}


LMMS_TASKS: Mapping[str, str] = LiveMapping(_lmms_tasks)
GROUP = "gap_mllm"  # the lmms-eval group of the tasks

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
FUNCTIONS = "gap_mllm.evaluation.lmms_eval_plugin.task_functions"  # the module the YAMLs' `!function`s name


def aggregator_name(metric: str) -> str:
    """The `task_functions` attribute that aggregates one metric of a task module's lmms-eval task."""
    return "aggregate_" + "".join(c if c.isalnum() else "_" for c in metric)


def _package_task_yaml(task: str) -> str:
    entry = package_task(task)
    metrics = "".join(f'  - metric: "{metric}"\n    aggregation: !function {FUNCTIONS}.{aggregator_name(metric)}\n'
                      "    higher_is_better: true\n" for metric in entry.lmms_metric_keys)
    return f"""# {entry.lmms_title or entry.spec.title}
# Benchmark `{task}` of gap_mllm.evaluation.tasks: prompts, frames and scorers are that package's, so the
# scores equal `gap-mllm evaluate --task {task}` on the same answers. `gap-mllm export-lmms` writes this file
# next to the documents it writes and adds their `dataset_kwargs`.
task: {entry.lmms_name}
dataset_path: json
test_split: test
output_type: generate_until
doc_to_visual: !function {FUNCTIONS}.doc_to_visual
doc_to_text: !function {FUNCTIONS}.doc_to_text
doc_to_target: !function {FUNCTIONS}.doc_to_target
# greedy decoding, each answer stopped by its task's rule (gap_mllm.tasks_gap_mllm), not by stop strings
generation_kwargs:
  until: []
  do_sample: false
process_results: !function {FUNCTIONS}.process_results
metric_list:
{metrics}metadata:
  version: 0.1
"""


def task_yaml(lmms_task: str) -> str:
    """The task YAML of an lmms-eval task name: the shipped template of that name (package data), or the one written
    from a task module's facts."""
    if lmms_task not in LMMS_TASKS:
        raise ValueError(f"unknown GAP-MLLM lmms-eval task {lmms_task!r}; choose from {', '.join(LMMS_TASKS)}")
    if (TEMPLATES_DIR / f"{lmms_task}.yaml").is_file():
        return (TEMPLATES_DIR / f"{lmms_task}.yaml").read_text(encoding="utf-8")
    return _package_task_yaml(LMMS_TASKS[lmms_task])
