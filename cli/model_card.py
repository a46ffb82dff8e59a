"""Model card for a GAP-MLLM checkpoint: `model_card.md` (repository root) as the template, filled in
from the checkpoint folder and the evaluation runner's `summary.json` files.

What is computed (the rest of the template is kept verbatim):
- the YAML front matter, through `huggingface_hub.ModelCardData`: licence, base model, tags, datasets
  and `model-index` evaluation results (one per summary's headline metric);
- a "This checkpoint" section: repo, base model, geometry weights and their licence consequence,
  fusion, parameter counts (read from the safetensors headers, nothing is loaded);
- the "Evaluation" section: a table from the summaries, or an explicit "no results" line.

VGGT licence rule (vggt-reference.md §8): weights from `facebook/VGGT-1B` are non-commercial and so is
any model that ships them; `facebook/VGGT-1B-Commercial` allows commercial use except military use.
An unknown source is treated as non-commercial: the cautious reading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gap_mllm.tasks_gap_mllm import DEPRECATED_TASK_NAMES

DEFAULT_BASE_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
DEFAULT_GEOMETRY_CHECKPOINT = "facebook/VGGT-1B"
TEMPLATE_NAME = "model_card.md"

# evaluation task name (gap_mllm.tasks_gap_mllm; evaluation/tasks.py) -> (HF task type, dataset type,
# readable dataset, task label)
EVAL_TASKS = {
    "detection": ("3d-object-detection", "scannet", "ScanNet (EmbodiedScan) 3D video object detection", "3D video object detection"),
    "grounding": ("3d-visual-grounding", "scanrefer", "ScanRefer", "3D visual grounding"),
    "captioning": ("3d-dense-captioning", "scan2cap", "Scan2Cap", "3D dense captioning"),
    "reconstruction": ("3d-reconstruction", "scannet", "ScanNet marker pointmap", "marker pointmap reconstruction"),
    "spatial_qa": ("visual-question-answering", "spatial-qa", "spatial QA", "spatial question answering"),
}


def default_template_path() -> Path:
    """`model_card.md`: beside this module in a wheel (setup.py copies it), else at the repository root
    (source checkout / editable install)."""
    packaged = Path(__file__).resolve().parent / TEMPLATE_NAME
    return packaged if packaged.is_file() else Path(__file__).resolve().parent.parent / TEMPLATE_NAME


def geometry_licence(source: str | None) -> tuple[str, str]:
    """`(short verdict, sentence)` for the VGGT weights a checkpoint was built from."""
    if source is None:
        return ("unknown", "The geometry encoder's weight source is not recorded (`geometry_config.source_checkpoint`); "
                           "treat the weights as **non-commercial** (facebook/VGGT-1B licence) unless you know otherwise.")
    if "commercial" in source.lower():
        return ("commercial use allowed except military use",
                f"Geometry weights from `{source}`: commercial use is allowed **except military use** (gated licence).")
    return ("non-commercial",
            f"Geometry weights from `{source}`: **non-commercial use only**; the licence propagates to this model.")


def parameter_counts(model_dir) -> dict[str, int]:
    """Parameters per group (`vlm`, `geometry_encoder`, `fusion` = everything else, `total`) from the
    safetensors headers of `model_dir` (sharded or not)."""
    from safetensors import safe_open

    counts = {"vlm": 0, "geometry_encoder": 0, "fusion": 0}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as handle:
            for key in handle.keys():
                numel = 1
                for dim in handle.get_slice(key).get_shape():
                    numel *= dim
                group = key.split(".")[0] if key.split(".")[0] in counts else "fusion"
                counts[group] += numel
    counts["total"] = sum(counts.values())
    return counts


def load_summaries(paths) -> list[dict]:
    """Read evaluation summaries (`summary.json` files or folders holding one)."""
    summaries = []
    for path in paths or []:
        path = Path(path)
        path = path / "summary.json" if path.is_dir() else path
        summary = json.loads(path.read_text(encoding="utf-8"))
        if "task" not in summary or "headline" not in summary:
            raise ValueError(f"{path}: not an evaluation summary (needs 'task' and 'headline'; see evaluation/reports.py)")
        summary["task"] = DEPRECATED_TASK_NAMES.get(summary["task"], summary["task"])  # summaries of older runs
        summaries.append(summary)
    return summaries


def eval_results(summaries: list[dict], model_name: str) -> list[EvalResult]:
    """One `EvalResult` (model-index entry) per summary: its headline metric."""
    results = []
    for summary in summaries:
        task_type, dataset_type, dataset_name, task_label = EVAL_TASKS.get(
            summary["task"], (summary["task"], summary["task"], summary["task"], summary["task"]))
        value = summary["headline"]["value"]
        if value is None:
            continue
        results.append(EvalResult(
            task_type=task_type, task_name=task_label, dataset_type=dataset_type,
            dataset_name=f"{dataset_name} ({summary.get('annotation_file', 'unknown file')})",
            metric_type=summary["headline"]["name"], metric_name=summary["headline"]["description"],
            metric_value=float(value),
        ))
    return results


def evaluation_section(summaries: list[dict]) -> str:
    """Markdown body of the Evaluation section."""
    if not summaries:
        return "No evaluation results are recorded for this checkpoint yet.\n"
    lines = ["Computed with `gap-mllm evaluate` (official metric semantics, method.md §5).", "",
             "| task | annotation file | samples | metric | value | official-compat | answers from |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        label = EVAL_TASKS.get(s["task"], (None, None, None, s["task"]))[3]
        value = s["headline"]["value"]
        shown = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"| {label} | {s.get('annotation_file', '?')} | {s.get('num_samples', '?')} | "
                     f"{s['headline']['description']} | {shown} | {s.get('official_compat', '?')} | {s.get('source', '?')} |")
    return "\n".join(lines) + "\n"


def checkpoint_section(config, repo_id, base_model, counts, untrained: bool) -> str:
    """Markdown body of the "This checkpoint" section."""
    geometry = config.geometry_config if config.use_geometry else None
    source = getattr(geometry, "source_checkpoint", None) if geometry is not None else None
    verdict, sentence = geometry_licence(source) if geometry is not None else ("n/a", "No geometry encoder.")
    fusion = config.geometry_fusion_config
    rows = [
        ("repository", f"`{repo_id}`" if repo_id else "(local folder)"),
        ("base model", f"`{base_model}`"),
        ("geometry encoder", f"VGGT aggregator, weights `{source or 'not recorded'}` ({verdict})" if geometry is not None else "none"),
        ("fusion", f"{fusion.method}, VGGT layers per level {config.level_geometry_layers} (main, DeepStack)"
                   if geometry is not None else "none (plain Qwen3-VL)"),
        ("parameters", ", ".join(f"{name} {value / 1e6:.2f} M" for name, value in counts.items())),
    ]
    lines = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows), "", sentence]
    if untrained:
        lines += ["", "> **Untrained test model.** This checkpoint is randomly initialised and tiny; its answers are "
                      "noise. It exists to test loading, generation and the demo end to end."]
    return "\n".join(lines) + "\n"


def _split_front_matter(text: str) -> str:
    """The template's body (its YAML front matter is regenerated from `ModelCardData`)."""
    match = re.match(r"^---\n.*?\n---\n", text, flags=re.DOTALL)
    return text[match.end():] if match else text


def replace_section(body: str, heading: str, content: str) -> str:
    """Replace the content of `## heading` (up to the next `## `) or append the section if absent."""
    pattern = re.compile(rf"(^## {re.escape(heading)}[ \t]*\n)(.*?)(?=^## |\Z)", flags=re.DOTALL | re.MULTILINE)
    if pattern.search(body):
        return pattern.sub(lambda m: m.group(1) + "\n" + content + "\n", body, count=1)
    return body.rstrip("\n") + f"\n\n## {heading}\n\n{content}"


def insert_section_before(body: str, before: str, heading: str, content: str) -> str:
    """Insert a new `## heading` section just before `## before` (or at the end)."""
    marker = f"\n## {before}"
    section = f"\n## {heading}\n\n{content}\n"
    return body.replace(marker, section + marker, 1) if marker in body else body.rstrip("\n") + "\n" + section


def build_model_card(model_dir, repo_id: str | None = None, eval_summaries=(), base_model: str = DEFAULT_BASE_MODEL,
                     template_path=None, untrained: bool = False, datasets=None) -> ModelCard:
    """The card of the checkpoint in `model_dir` (a folder written by `save_pretrained`).

    Args:
        model_dir: the checkpoint folder (its config.json and safetensors are read, the model is not built).
        repo_id: the Hub repository the card is for (shown in the card and the usage snippet).
        eval_summaries: `summary.json` paths (or their folders) from `gap-mllm evaluate`.
        base_model: the Qwen3-VL checkpoint the model was built from.
        template_path: the template (default: `model_card.md` of the repository).
        untrained: mark the card as a randomly initialised test model.
        datasets: Hub dataset ids to list in the metadata.
    """
    from gap_mllm import GapMllmConfig

    config = GapMllmConfig.from_pretrained(model_dir)
    template_path = Path(template_path) if template_path is not None else default_template_path()
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path} (pass template_path=)")
    summaries = load_summaries(eval_summaries)
    geometry_source = config.geometry_config.source_checkpoint if config.use_geometry else None
    verdict = geometry_licence(geometry_source)[0] if config.use_geometry else "n/a"
    data = ModelCardData(
        language="en",
        license="other",
        license_name="gap-mllm-mixed" if verdict == "commercial use allowed except military use" else "gap-mllm-non-commercial",
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_model,
        tags=["multimodal", "3d", "spatial-reasoning", "vggt", "qwen3-vl", "custom_code"]
             + (["untrained", "test-model"] if untrained else []),
        datasets=list(datasets) if datasets else None,
        model_name=repo_id.split("/")[-1] if repo_id else "GAP-MLLM",
        eval_results=eval_results(summaries, repo_id or "GAP-MLLM") or None,
    )
    body = _split_front_matter(template_path.read_text(encoding="utf-8"))
    if repo_id:
        body = body.replace('"org/gap-mllm"', f'"{repo_id}"')
    body = insert_section_before(body, "Model", "This checkpoint",
                                 checkpoint_section(config, repo_id, base_model, parameter_counts(model_dir), untrained))
    body = replace_section(body, "Evaluation", evaluation_section(summaries))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
