"""Model card for a GAP-MLLM checkpoint: `model_card.md` (repository root) as the template, filled in
from the checkpoint folder, what it records about its training, and the evaluation runner's
`summary.json` files. Nothing on the card is assumed: every figure is computed, every name is given.

What is computed (the rest of the template, which describes the method, is kept verbatim):
- the YAML front matter, through `huggingface_hub.ModelCardData`: licence, base model, tags, datasets
  (Hub ids the caller gives) and `model-index` evaluation results (one per summary's headline metric);
- "This checkpoint": repo, base model, geometry weights and their licence consequence;
- "Model": layer counts, widths and fusion settings from config.json, parameter counts per part
  from the safetensors headers (nothing is loaded), the weights' size on disk;
- "Training data": what the caller says (`training_data=`, `gap-mllm push --training-data`), else
  what the checkpoint records (`gap_mllm_training.json`, written by `gap-mllm train`), else "not
  recorded". SynthRooms is named SynthRooms; other data only as "data in the ScanNet layout";
- "Evaluation": a table from the summaries only (the data each was computed on is the one the
  summary records), or an explicit "no results" line.

Lineage and licence come from what the folder records (processing/model_lineage.py: the released model it descends
from, e.g. GAP-MLLM-Mini, Apache-2.0 with no third-party weights, and the VGGT and Qwen3-VL checkpoints its config
and training record name): `lineage_licence`. VGGT licence rule (docs/vggt.md §9): weights from `facebook/VGGT-1B`
are non-commercial and so is any model that ships them; `facebook/VGGT-1B-Commercial` allows commercial use except
military use; Qwen3-VL's weights are Apache-2.0. A folder that records nothing is "not recorded" (`gap-mllm push`
says so before uploading) and treated as non-commercial, with Qwen3-VL-2B-Instruct as its base model unless given:
the cautious reading.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gap_mllm import GapMllmConfig
from gap_mllm.processing.dataset_identity import TRAINING_RECORD
from gap_mllm.processing.model_lineage import GEOMETRY_PART, LANGUAGE_PART, folder_lineage, origin_text, released_model
from gap_mllm.processing.tasks import package_task, package_task_names
from gap_mllm.tasks_gap_mllm import DEPRECATED_TASK_NAMES

from .model_source import tensor_shapes, weight_paths

DEFAULT_BASE_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
DEFAULT_GEOMETRY_CHECKPOINT = "facebook/VGGT-1B"
TEMPLATE_NAME = "model_card.md"


# line breaks and every other control character of a recorded text (C0, DEL, C1)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def card_text(value, cell: bool = False) -> str:
    """A text the card shows from a record (the training record, an evaluation summary, the lineage, config.json,
    `--training-data`) as one line of markdown: its line breaks and other control characters become spaces, so that a
    recorded "name\\n## Licence" or "\\n| row |" cannot start a heading or a table row of its own; `cell`: also `|`
    escaped, so that it stays one cell of its table row; a backtick becomes `'` (the card quotes sources in code
    spans)."""
    text = " ".join(_CONTROL_CHARACTERS.sub(" ", str(value)).split()).replace("`", "'")
    return text.replace("|", "\\|") if cell else text


def card_tags(task: str) -> tuple[str, str, str] | None:
    """`(HF task type, benchmark format, task label)` of a task's results: its task module's `PackageTask.card`
    (gap_mllm.processing.tasks); None for a task without one. The data a number was computed on comes from the
    summary, never from these tags."""
    return package_task(task).card if task in package_task_names() else None


# safetensors key prefix -> part of the model (first match wins)
PARTS = (
    ("model.language_model.", "llm"), ("lm_head.", "llm"), ("model.visual.", "vision"),
    ("model.geometry_encoder.aggregator.", "geometry_encoder"), ("model.geometry_encoder.", "geometry_heads"),
    ("model.geometry_fusion.mergers.", "mergers"), ("model.geometry_fusion.fusions.", "fusions"),
)
PART_NAMES = ("llm", "vision", "geometry_encoder", "geometry_heads", "mergers", "fusions", "other")


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


APACHE = "apache-2.0"
NON_COMMERCIAL, MIXED = "gap-mllm-non-commercial", "gap-mllm-mixed"  # the card's `license_name` under `license: other`
COMMERCIAL_EXCEPT_MILITARY = "commercial use allowed except military use"
QWEN3_VL_PREFIX = "Qwen/Qwen3-VL"  # Qwen3-VL's released checkpoints are Apache-2.0


def weights_licence(entry: dict) -> str:
    """The licence of one third-party checkpoint of a lineage (`{"part", "source"}`): "apache-2.0", VGGT's verdict
    (`geometry_licence`), or "unknown"."""
    source = entry.get("source") or ""
    if entry.get("part") == GEOMETRY_PART or "vggt" in source.lower():
        return geometry_licence(source)[0]
    return APACHE if source.startswith(QWEN3_VL_PREFIX) else "unknown"


def lineage_licence(lineage: dict, own: bool = False) -> tuple[str, str | None, str]:
    """`(license, license_name, sentence)` of a recorded lineage (processing/model_lineage.py): Apache-2.0 when its
    origin is and every third-party checkpoint is; `other` / gap-mllm-mixed with VGGT-1B-Commercial weights; `other`
    / gap-mllm-non-commercial when any part is non-commercial or of an unknown licence (the cautious reading)."""
    origin, weights = lineage.get("origin"), lineage.get("weights") or []
    licences = [weights_licence(entry) for entry in weights]
    if origin is not None:
        licences.append(str(origin.get("license") or "unknown").lower())
    named = [f"`{card_text(entry['source'])}` ({card_text(entry['part'])}: {card_text(licence)})"
             for entry, licence in zip(weights, licences)]
    started = (f"{'This is' if own else 'Started from'} {card_text(origin_text(origin))} "
               f"({card_text(origin.get('license') or 'licence not recorded')}). " if origin else "")
    holds = ("It holds the weights of " + ", ".join(named) + "." if named
             else "It holds no third-party weights: they were trained from random initialisation by this package.")
    if all(licence == APACHE for licence in licences):
        return APACHE, None, f"{started}{holds} Weights and code are **Apache-2.0**."
    if all(licence in (APACHE, COMMERCIAL_EXCEPT_MILITARY) for licence in licences):
        return "other", MIXED, (f"{started}{holds} Commercial use is allowed **except military use** "
                                "(VGGT-1B-Commercial).")
    return "other", NON_COMMERCIAL, (f"{started}{holds} **Non-commercial use only**: the most restrictive licence (or "
                                     "one not known) of its parts propagates to this model.")


def lineage_note(model_dir) -> str | None:
    """One line for a folder that records nothing of where its weights come from (`folder_lineage` None): its card
    says "not recorded" and reads it as non-commercial; None when a lineage is recorded."""
    if folder_lineage(model_dir) is not None:
        return None
    return (f"{Path(model_dir).name} records no lineage (no lineage in its {TRAINING_RECORD}, no weight source in its "
            "config.json): its card says \"not recorded\" and treats the weights as non-commercial (`gap-mllm train` "
            "records where a run started)")


def parameter_counts(model_dir) -> dict[str, int]:
    """Parameters per part (`PART_NAMES`, by key prefix: LLM, vision tower, geometry encoder, its
    heads, mergers, fusion gates, other) and `total`, from the safetensors headers of `model_dir`
    (sharded or not); nothing is loaded."""
    counts = dict.fromkeys(PART_NAMES, 0)
    if not weight_paths(model_dir):  # only the files transformers loads: a stray *.safetensors is not counted
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights to count")
    for key, shape in tensor_shapes(model_dir).items():
        part = next((name for prefix, name in PARTS if key.startswith(prefix)), "other")
        counts[part] += math.prod(shape)
    counts["total"] = sum(counts.values())
    return counts


def weights_size(model_dir) -> int:
    """Bytes of the weight files of `model_dir` (`weight_paths`: the safetensors files transformers loads)."""
    return sum(path.stat().st_size for path in weight_paths(model_dir))


def _millions(count: int) -> str:
    return f"{count / 1e6:.3f} M" if count < 10e6 else f"{count / 1e6:.1f} M"


def model_section(config, counts: dict, size_bytes: int) -> str:
    """Markdown body of the "Model" section: every figure from `config` and the weights."""
    text, vision = config.text_config, config.vision_config
    rows = [("LLM", f"{text.num_hidden_layers} layers, hidden {text.hidden_size}, {text.num_attention_heads} heads "
                    f"({text.num_key_value_heads} KV), vocabulary {text.vocab_size}; {_millions(counts['llm'])} parameters"),
            ("vision tower", f"{vision.depth} blocks, hidden {vision.hidden_size}, patch {vision.patch_size}, DeepStack taps "
                             f"{list(vision.deepstack_visual_indexes)}; {_millions(counts['vision'])} parameters")]
    if config.use_geometry:
        geometry, fusion = config.geometry_config, config.geometry_fusion_config
        heads = [name for name, flag in (("camera", geometry.use_camera_head), ("depth", geometry.use_depth_head),
                                         ("point", geometry.use_point_head)) if flag]
        rows += [
            ("geometry encoder", f"VGGT aggregator, {geometry.num_hidden_layers} frame/global block pairs, hidden "
                                 f"{geometry.hidden_size}, patch {geometry.patch_size}, tapped layers {list(geometry.tapped_layers)}; "
                                 f"{_millions(counts['geometry_encoder'])} parameters"),
            ("geometry heads", (", ".join(heads) + f"; {_millions(counts['geometry_heads'])} parameters") if heads else "none"),
            ("fusion", f"{fusion.method}, {config.num_fusion_levels} levels (VGGT layers {config.level_geometry_layers} -> "
                       f"main tokens, DeepStack 0..{config.num_fusion_levels - 2}); mergers hidden {fusion.merger_hidden_size}, "
                       f"{fusion.merger_norm} norm"),
            ("new parameters", f"{_millions(counts['mergers'] + counts['fusions'])} "
                               f"(mergers {_millions(counts['mergers'])}, fusion {_millions(counts['fusions'])})"),
        ]
    else:
        rows.append(("geometry encoder", "none (use_geometry is false: a plain Qwen3-VL)"))
    if counts.get("other"):
        rows.append(("other weights", f"{_millions(counts['other'])} parameters"))
    rows.append(("total", f"{counts['total']:,} parameters; {size_bytes / 2**20:.1f} MiB of safetensors "
                          f"(stored as {getattr(config, 'dtype', None) or 'float32'})"))
    return "\n".join(["| part | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def read_training_record(model_dir) -> dict | None:
    """`gap_mllm_training.json` of a checkpoint folder (what `gap-mllm train` recorded), or None."""
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}); delete it or pass --training-data") from error
    return record if isinstance(record, dict) else None


def training_section(record: dict | None, training_data=None) -> str:
    """Markdown body of the "Training data" section: the caller's words, else the checkpoint's record."""
    if training_data:
        return "\n".join(f"- {card_text(item)}" for item in training_data) + "\n"
    if record is None:
        return ("Not recorded for this checkpoint: it carries no `gap_mllm_training.json` and none was given "
                "(`gap-mllm push --training-data ...`).\n")
    data = record.get("data") or {}
    lines = [f"- data: {card_text(data.get('name', 'given to the trainer directly (not recorded)'))}"
             + (f", folder `{card_text(data['folder'])}`" if data.get("folder") else ""),
             f"- stage: {card_text(record.get('stage', '?'))}; tasks: "
             f"{card_text(', '.join(map(str, record.get('tasks') or [])) or '?')}; "
             f"{card_text(record.get('global_step', '?'))} optimizer steps",
             f"- started from: {card_text(record.get('started_from') or 'not recorded')}"]
    frozen = [name.removeprefix("freeze_") for name, value in (record.get("freezing") or {}).items() if value]
    lines.append(f"- frozen: {card_text(', '.join(frozen) or 'nothing')}; LoRA: {'yes' if record.get('lora') else 'no'}; "
                 f"auxiliary losses: {card_text(', '.join(map(str, record.get('aux_losses') or [])) or 'none')}")
    return "\n".join(lines) + "\n"


def load_summaries(paths) -> list[dict]:
    """Read evaluation summaries (`summary.json` files or folders holding one)."""
    summaries = []
    for path in paths or []:
        path = Path(path)
        path = path / "summary.json" if path.is_dir() else path
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not readable JSON ({error}); give the summary.json gap-mllm evaluate wrote"
                             ) from error
        if not isinstance(summary, dict) or "task" not in summary or "headline" not in summary:
            raise ValueError(f"{path}: not an evaluation summary (needs 'task' and 'headline'; see evaluation/reports.py)")
        summary["task"] = DEPRECATED_TASK_NAMES.get(summary["task"], summary["task"])  # summaries of older runs
        summaries.append(summary)
    return summaries


def _summary_data(summary: dict) -> tuple[str, str]:
    """`(dataset name, dataset type)` of the data a summary was computed on, as the summary records it."""
    data = summary.get("data") or {}
    name = data.get("name") or "data not recorded in the summary"
    return f"{name} ({summary.get('annotation_file', 'unknown file')})", data.get("kind") or "unknown"


def eval_results(summaries: list[dict], model_name: str) -> list[EvalResult]:
    """One `EvalResult` (model-index entry) per summary: its headline metric, on the data it records."""
    results = []
    for summary in summaries:
        task_type, _, task_label = card_tags(summary["task"]) or (summary["task"],) * 3
        value = summary["headline"]["value"]
        if value is None:
            continue
        dataset_name, dataset_type = _summary_data(summary)
        results.append(EvalResult(
            task_type=task_type, task_name=task_label, dataset_type=dataset_type, dataset_name=dataset_name,
            metric_type=summary["headline"]["name"], metric_name=summary["headline"]["description"],
            metric_value=float(value),
        ))
    return results


def evaluation_section(summaries: list[dict]) -> str:
    """Markdown body of the Evaluation section."""
    if not summaries:
        return "No evaluation results are recorded for this checkpoint yet.\n"
    lines = ["Computed with `gap-mllm evaluate` (official metric semantics, docs/method.md §6).", "",
             "| task | data | annotation file | samples | metric | value | official-compat | answers from |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        label = (card_tags(s["task"]) or (None, None, s["task"]))[2]
        value = s["headline"]["value"]
        shown = "n/a" if value is None else f"{value:.4f}"
        data = (s.get("data") or {}).get("name") or "not recorded"
        cells = (label, data, s.get("annotation_file", "?"), s.get("num_samples", "?"), s["headline"]["description"],
                 shown, s.get("official_compat", "?"), s.get("source", "?"))
        lines.append("| " + " | ".join(card_text(value, cell=True) for value in cells) + " |")
    return "\n".join(lines) + "\n"


def checkpoint_section(config, repo_id, base_model, untrained: bool, lineage: dict | None = None,
                       own: bool = False) -> str:
    """Markdown body of the "This checkpoint" section: from the recorded `lineage` (processing/model_lineage.py) when
    there is one (`own`: its origin is this folder's model itself, a released model's own folder), else the geometry
    source of the config alone, "not recorded" when it names none."""
    geometry = config.geometry_config if config.use_geometry else None
    if lineage is not None:
        weights = {entry["part"]: entry["source"] for entry in lineage.get("weights") or []}
        origin = lineage.get("origin")
        rows = [("repository", f"`{repo_id}`" if repo_id else "(local folder)"),
                ("model" if own else "started from",
                 card_text(origin_text(origin), cell=True) if origin else "the third-party weights below"),
                ("base model", f"`{card_text(base_model, cell=True)}`" if base_model
                 else "none (no third-party LLM weights recorded)")]
        for part in (GEOMETRY_PART, LANGUAGE_PART):
            if part != GEOMETRY_PART or geometry is not None:
                source = weights.get(part)
                rows.append((f"{part} weights", f"`{card_text(source, cell=True)}` "
                             f"({weights_licence({'part': part, 'source': source})})"
                             if source else "trained by this package (no third-party weights recorded)"))
        sentence = lineage_licence(lineage, own)[2]
    else:
        source = getattr(geometry, "source_checkpoint", None) if geometry is not None else None
        verdict, sentence = geometry_licence(source) if geometry is not None else ("n/a", "No geometry encoder.")
        rows = [
            ("repository", f"`{repo_id}`" if repo_id else "(local folder)"),
            ("base model", f"`{card_text(base_model, cell=True)}`"),
            ("geometry weights", f"`{card_text(source or 'not recorded', cell=True)}` ({verdict})"
             if geometry is not None else "none"),
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


TEMPLATE_MODEL_ID = "org/gap-mllm"  # the model id the template's usage snippet names: the card's repository replaces it


def section_text(body: str, heading: str) -> str:
    """The content of `## heading` of a card's markdown `body` (up to the next `## `), stripped; "" when absent."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", body, flags=re.DOTALL | re.MULTILINE)
    return match.group(1).strip() if match else ""


def usage_section(model_id: str, template_path=None) -> str:
    """The template's "Use" section (its snippet decodes inside the task's answer grammar, as the README's does), with
    `model_id` for the model it loads: every card's usage, GAP-MLLM-Mini's (lab/mini/card.py) too."""
    template = Path(template_path) if template_path is not None else default_template_path()
    usage = section_text(template.read_text(encoding="utf-8"), "Use")
    if f'"{TEMPLATE_MODEL_ID}"' not in usage:
        raise ValueError(f"{template}: its Use section loads no \"{TEMPLATE_MODEL_ID}\" to replace")
    return usage.replace(f'"{TEMPLATE_MODEL_ID}"', f'"{model_id}"')


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


def build_model_card(model_dir, repo_id: str | None = None, eval_summaries=(), base_model: str | None = None,
                     template_path=None, untrained: bool = False, datasets=None, training_data=None) -> ModelCard:
    """The card of the checkpoint in `model_dir` (a folder written by `save_pretrained`).

    Args:
        model_dir: the checkpoint folder (its config.json and safetensors headers are read, the model is
            not built; its `gap_mllm_training.json`, if any, says what it was trained on).
        repo_id: the Hub repository the card is for (shown in the card and the usage snippet).
        eval_summaries: `summary.json` paths (or their folders) from `gap-mllm evaluate`.
        base_model: the Qwen3-VL checkpoint the model was built from; None: the one its lineage records (none for a
            model trained from random initialisation, as GAP-MLLM-Mini), or `DEFAULT_BASE_MODEL` when the folder
            records no lineage (`lineage_note`).
        template_path: the template (default: `model_card.md` of the repository).
        untrained: mark the card as a randomly initialised test model.
        datasets: Hub dataset ids to list in the metadata.
        training_data: lines describing the training data; they replace what the checkpoint records.
    """
    config = GapMllmConfig.from_pretrained(model_dir)
    template_path = Path(template_path) if template_path is not None else default_template_path()
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path} (pass template_path=)")
    summaries = load_summaries(eval_summaries)
    lineage = folder_lineage(model_dir)  # what the folder records of where its weights come from
    own = released_model(read_training_record(model_dir)) is not None  # a released model's own folder (the Mini's)
    if lineage is not None:
        licence, licence_name, _ = lineage_licence(lineage)
        if base_model is None:
            base_model = next((entry["source"] for entry in lineage.get("weights") or []
                               if entry["part"] == LANGUAGE_PART), None)
    else:  # nothing recorded: the cautious reading (module docstring)
        geometry_source = config.geometry_config.source_checkpoint if config.use_geometry else None
        verdict = geometry_licence(geometry_source)[0] if config.use_geometry else "n/a"
        licence, licence_name = "other", MIXED if verdict == COMMERCIAL_EXCEPT_MILITARY else NON_COMMERCIAL
        base_model = base_model or DEFAULT_BASE_MODEL
    data = ModelCardData(
        language="en",
        license=licence,
        license_name=licence_name,
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
        body = body.replace(f'"{TEMPLATE_MODEL_ID}"', f'"{repo_id}"')
    checkpoint = checkpoint_section(config, repo_id, base_model, untrained, lineage, own)
    body = insert_section_before(body, "Model", "This checkpoint", checkpoint)
    body = replace_section(body, "Model", model_section(config, parameter_counts(model_dir), weights_size(model_dir)))
    body = insert_section_before(body, "Use", "Training data", training_section(read_training_record(model_dir), training_data))
    body = replace_section(body, "Evaluation", evaluation_section(summaries))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
