"""The miniature's evaluation table: every arm and baseline, each figure with its 95 % interval.

Read from what the pipeline wrote (runner summaries and per-sample rows of the test split, the stage-0
geometry report, the baselines); nothing is typed in by hand.

    grounding Acc@0.25 / Acc@0.5     two-stage pipeline; Wilson intervals
    detection F1@0.25                 headline F1 (mean over categories present, IoU > 0.25); percentile
                                      bootstrap over samples of the per-sample TP/FP/FN counts
    captioning CIDEr@0.5              corpus CIDEr; interval = bootstrap of the per-sample CIDEr mean with
                                      the IDF of the whole test set (CIDEr's IDF depends on the set)
    stage-1 point error, label acc.   median marker-point error (bootstrap) and label accuracy (Wilson)
    grounding diagnostics             the selected frame's accuracy, which object the box points at and
                                      its median centre error (evaluation/grounding_identification.py),
                                      next to the constant boxes placed in the annotated frame
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gap_mllm.evaluation.confidence import bootstrap_interval, wilson_interval
from gap_mllm.evaluation.geometry_eval import format_geometry_report
from gap_mllm.evaluation.grounding_identification import from_samples
from gap_mllm.evaluation.marker_metrics import marker_scores
from gap_mllm.mini.identity import CONSTRAINED_SUFFIX
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scoring.caption_metrics import gated_score

from .claims_table import CLAIMS_SECTION, claims_section
from .markdown_sections import document_section, signed_cell, with_section
from .paired_arms import paired_arms
from .provenance import DONE_MARKER, stage_device
from .sample_rows import detection_counts, f1_interval, f1_of_counts, marker_answers, sample_rows

RESAMPLES = 1000
# results folders of the marker task: scored on each arm's stage-1 model, and on its final model
MARKER_STAGE1_RESULTS, MARKER_FINAL_RESULTS = "reconstruction", "reconstruction_final"


def arm_results(run, arm) -> dict:
    """The table row of one arm (see the module docstring)."""
    out: dict = {"arm": arm.name, "fusion_method": arm.fusion_method if arm.use_geometry else None,
                 "use_geometry": arm.use_geometry, "stage1": arm.stage1, "seed": arm.seed}
    folder = run.results_dir(arm.name)
    if (folder / "grounding" / "summary.json").is_file():
        out.update(_stage2_results(run, folder))
    else:  # a stage-1-only arm, or one whose stage 2 was not run: its stage-2 cells stay empty ("—")
        out["stage2_evaluated"] = False
    # the marker task scored on the stage-1 model ("stage1_*") and on the final model ("final_marker_*")
    for results_folder, prefix in ((MARKER_STAGE1_RESULTS, "stage1"), (MARKER_FINAL_RESULTS, "final_marker")):
        samples = folder / results_folder / "samples.jsonl"
        if samples.is_file():
            out.update(_marker_cells(marker_answers(samples, run.data), prefix))
    return out


def _marker_cells(marker: dict, prefix: str) -> dict:
    """Median point error and label accuracy of marker answers (with intervals), overall and by marked frame."""
    scores = marker_scores(marker["predictions"], marker["answers"], marker["marked_frames"])
    out = {f"{prefix}_point_error_m_median": scores.get("point_error_m_median"),
           f"{prefix}_point_error_m_median_ci95": scores.get("point_error_m_median_ci95"),
           f"{prefix}_label_accuracy": scores["label_accuracy"],
           f"{prefix}_label_accuracy_ci95": scores["label_accuracy_ci95"],
           f"{prefix}_unparsed": scores.get("unparsed"),
           f"{prefix}_num_samples": scores["num_samples"]}
    for name, part in scores["by_marked_frame"].items():  # marker in the first frame / in another one
        out[f"{prefix}_point_error_m_median_{name}_frame"] = part.get("point_error_m_median")
        out[f"{prefix}_point_error_m_median_{name}_frame_ci95"] = part.get("point_error_m_median_ci95")
        out[f"{prefix}_num_samples_{name}_frame"] = part["num_samples"]
    return out


def _stage2_results(run, folder: Path) -> dict:
    """Grounding, detection and captioning cells of one arm (see the module docstring)."""
    out: dict = {"stage2_evaluated": True}
    grounding = json.loads((folder / "grounding" / "summary.json").read_text(encoding="utf-8"))["metrics"]
    n = grounding["num_samples"]
    for threshold in ("0.25", "0.5"):
        out[f"grounding_acc@{threshold}"] = grounding[f"acc@{threshold}"]
        out[f"grounding_acc@{threshold}_ci95"] = wilson_interval(grounding[f"hits@{threshold}"], n)
    out["grounding_num_samples"] = n
    found = from_samples(folder / "grounding" / "samples.jsonl", run.data, "test")
    for key in ("frame_accuracy", "identification", "median_centre_error_m"):
        if key in found:
            out[f"grounding_{key}"] = found[key]
            out[f"grounding_{key}_ci95"] = found[f"{key}_ci95"]

    detection_rows = sample_rows(folder / "detection" / "samples.jsonl")
    records = load_annotation_file(find_annotation_file(run.data, "detection", "test"))
    counts = detection_counts(detection_rows, records)
    out["detection_f1@0.25"] = f1_of_counts(counts)
    out["detection_f1@0.25_ci95"] = f1_interval(counts, resamples=RESAMPLES // 5)
    out["detection_num_samples"] = len(detection_rows)

    caption = json.loads((folder / "captioning" / "summary.json").read_text(encoding="utf-8"))["metrics"]
    per_sample = [row["score"] for row in sample_rows(folder / "captioning" / "samples.jsonl")]
    out["captioning_cider@0.5"] = gated_score(caption, "cider")  # "cider" in summaries written before the rename
    out["captioning_cider@0.5_ci95"] = bootstrap_interval(per_sample, np.mean, RESAMPLES)
    out["captioning_num_samples"] = len(per_sample)
    return out


def stage_provenance(run) -> dict[str, dict]:
    """What trained each stage folder of the run, from its `stage_done.json` (recipe, steps, device, notes)."""
    out = {}
    for marker in sorted(run.out.glob(f"stages/**/{DONE_MARKER}")):
        done = json.loads(marker.read_text(encoding="utf-8"))
        device = stage_device(done)
        out[str(marker.parent.relative_to(run.out / "stages"))] = {
            key: value for key, value in (("recipe", done.get("recipe")), ("global_step", done.get("global_step")),
                                          ("device", device), ("note", done.get("note"))) if value is not None}
    return out


def collect_results(run, arms, geometry: dict, baselines: dict, reference: str | None = None) -> dict:
    """Every table figure of the run; with `reference` (the main arm) among `arms`, also each other arm minus
    the reference on the same test samples (`"paired"`, lab/mini/paired_arms.py)."""
    results = {"budget": run.budget, "arms": {arm.name: arm_results(run, arm) for arm in arms},
               "stage0_geometry": geometry, "baselines": baselines, "stages": stage_provenance(run)}
    if reference is not None and reference in results["arms"]:
        paired = {arm.name: paired_arms(run.results_dir(arm.name), run.results_dir(reference), run.data)
                  for arm in arms if arm.name != reference}
        if any(paired.values()):
            results["paired"] = {"reference": reference, "arms": {name: found for name, found in paired.items() if found}}
    return results


def _cell(value, interval=None, percent: bool = False, digits: int = 2) -> str:
    if value is None:
        return "—"
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.{1 if percent else digits}f}"
    if interval:
        text += f" [{interval[0] * scale:.{1 if percent else digits}f}, {interval[1] * scale:.{1 if percent else digits}f}]"
    return text


# random_same_category answers with a true box (of a random object of the target's category): it reads the
# ground truth, so it is an upper reference for a model that finds the category, not a baseline to beat
GROUNDING_ROW_NAMES = {"random_same_category": "upper reference: random_same_category (reads the true boxes)"}
CONSTRAINED_NOTE = (" {row}: the same final model on the same samples, decoding inside each task's answer grammar "
                    "(constrained decoding, the default of `gap-mllm predict`, the demo and the Space; "
                    "`gap-mllm evaluate --constrained`), where the other rows decode freely as the paper's protocol does.")
UPPER_REFERENCE_NOTE = ("random_same_category is no baseline: it answers with the true box of a random object of the "
                        "target's category in the scene, so it reads the ground truth; it is an upper reference for "
                        "a model that knows the category and picks among its objects at random.")


def results_markdown(results: dict) -> str:
    """The evaluation table (arms and baselines) and the stage-0 geometry table, as Markdown."""
    lines = [
        "| model | Acc@0.25 % | Acc@0.5 % | det F1@0.25 % | CIDEr@0.5 | marker point error m (median) | marker label acc. % "
        "| S1 point error m (median) | S1 label acc. % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["arms"].items():
        lines.append(
            f"| {name}{'' if row.get('stage2_evaluated', True) else ' (stage 1 only)'} | {_cell(row.get('grounding_acc@0.25'), row.get('grounding_acc@0.25_ci95'), True)} "
            f"| {_cell(row.get('grounding_acc@0.5'), row.get('grounding_acc@0.5_ci95'), True)} "
            f"| {_cell(row.get('detection_f1@0.25'), row.get('detection_f1@0.25_ci95'), True)} "
            f"| {_cell(row.get('captioning_cider@0.5'), row.get('captioning_cider@0.5_ci95'))} "
            f"| {_cell(row.get('final_marker_point_error_m_median'), row.get('final_marker_point_error_m_median_ci95'))} "
            f"| {_cell(row.get('final_marker_label_accuracy'), row.get('final_marker_label_accuracy_ci95'), True)} "
            f"| {_cell(row.get('stage1_point_error_m_median'), row.get('stage1_point_error_m_median_ci95'))} "
            f"| {_cell(row.get('stage1_label_accuracy'), row.get('stage1_label_accuracy_ci95'), True)} |"
        )
    base = results["baselines"]
    grounding = base["grounding"]
    for name in ("constant_mean_box", "best_constant_box", "random_same_category"):
        row = grounding[name]
        lines.append(f"| {GROUNDING_ROW_NAMES.get(name, 'baseline: ' + name)} | {_cell(row['acc@0.25'], row['acc@0.25_ci95'], True)} "
                     f"| {_cell(row['acc@0.5'], row['acc@0.5_ci95'], True)} | — | — | — | — | — | — |")
    detection = base["detection"]["category_mean_boxes"]
    lines.append(f"| baseline: category_mean_boxes (true labels) | — | — | {_cell(detection['f1'], detection['f1_ci95'], True)} | — | — | — | — | — |")
    caption = base["captioning"]["constant_caption"]
    lines.append(f"| baseline: constant_caption | — | — | — | {_cell(caption['cider'], caption['cider_ci95'])} | — | — | — | — |")
    marker = base["marker"]["constant_point"]
    marker_cells = (f"| {_cell(marker.get('point_error_m_median'), marker.get('point_error_m_median_ci95'))} "
                    f"| {_cell(marker['label_accuracy'], marker['label_accuracy_ci95'], True)} ")
    lines.append(f"| baseline: constant_point + most frequent label | — | — | — | — {marker_cells}{marker_cells}|")
    lines += marked_frame_lines(results)
    lines += paired_lines(results)
    lines += grounding_diagnostic_lines(results)
    if results.get("fresh_seeds"):
        lines += fresh_seed_lines(results["fresh_seeds"])
    sizes = next(iter(results["arms"].values()))
    lines.append("")
    lines.append(f"Test split: {sizes.get('grounding_num_samples', '—')} grounding, {sizes.get('detection_num_samples', '—')} detection, "
                 f"{sizes.get('captioning_num_samples', '—')} captioning, {sizes.get('stage1_num_samples', '—')} marker samples; "
                 "95 % intervals in brackets (Wilson for accuracies, bootstrap otherwise). "
                 "— : not evaluated (an arm whose stage 2 was not trained, or a run before the marker task joined "
                 "stage 2). The marker columns score each arm's final model (the exported default), whose stage 2 keeps "
                 "the marker task in its mix; the S1 columns score its stage-1 model on the same samples. CIDEr@0.5: "
                 "Scan2Cap's CIDEr at the 0.5 IoU gate (`cider@0.5` in `gap-mllm evaluate` summaries and lmms-eval "
                 "tables), its IDF computed over these captioning samples, so a run on fewer samples gives other values. "
                 + UPPER_REFERENCE_NOTE
                 + "".join(CONSTRAINED_NOTE.format(row=name) for name in results["arms"] if name.endswith(CONSTRAINED_SUFFIX)))
    stages = results.get("stages")
    if stages:
        lines += ["", "Where each stage was trained (from its `stage_done.json`):", "", "| stage | recipe | steps | device | note |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {info.get('recipe', '—')} | {info.get('global_step', '—')} | {info.get('device', '—')} | {info.get('note', '')} |"
                  for name, info in stages.items()]
    lines += ["", "Stage 0 (geometry encoder, test clips, scale-aligned per clip):", "", format_geometry_report(results["stage0_geometry"])]
    return "\n".join(lines) + "\n"


def marked_frame_lines(results: dict) -> list[str]:
    """Stage-1 point error split by the marked frame: the first (depth + image position suffice) or another
    (the relative camera pose is needed too); empty when no arm has the split."""
    rows = [(name, row) for name, row in results["arms"].items() if "stage1_point_error_m_median_first_frame" in row]
    if not rows:
        return []
    lines = ["", "Stage-1 point error (median, m) by the frame the marker is in:", "",
             "| model | marker in the first frame | marker in another frame |", "|---|---|---|"]
    for name, row in rows:
        lines.append(f"| {name} | {_cell(row['stage1_point_error_m_median_first_frame'], row.get('stage1_point_error_m_median_first_frame_ci95'))} "
                     f"| {_cell(row.get('stage1_point_error_m_median_other_frame'), row.get('stage1_point_error_m_median_other_frame_ci95'))} |")
    split = results["baselines"]["marker"]["constant_point"].get("by_marked_frame")
    if split:
        lines.append(f"| baseline: constant_point | {_cell(split['first'].get('point_error_m_median'), split['first'].get('point_error_m_median_ci95'))} "
                     f"| {_cell(split['other'].get('point_error_m_median'), split['other'].get('point_error_m_median_ci95'))} |")
    return lines


PAIRED_COLUMNS = (  # (metric of lab/mini/paired_arms.py, column title, shown in percentage points)
    ("grounding_acc@0.25", "Acc@0.25, points", True), ("grounding_acc@0.5", "Acc@0.5, points", True),
    ("detection_f1@0.25", "det F1@0.25, points", True), ("captioning_cider@0.5", "CIDEr@0.5", False),
    ("stage1_point_error_m_median", "S1 point error m", False),
    ("stage1_point_error_m_median_first_frame", "first frame", False),
    ("stage1_point_error_m_median_other_frame", "other frames", False),
)


def paired_lines(results: dict) -> list[str]:
    """The ablation as paired differences: each arm minus the main arm on the same test samples; empty when the
    run has no pair."""
    paired = results.get("paired")
    if not paired or not paired.get("arms"):
        return []
    reference = paired["reference"]
    lines = ["", f"Ablation, paired: each arm minus {reference} on the same test samples (A − B with its 95 % paired-bootstrap "
                 "interval; accuracies and F1 in percentage points; a negative point error is closer):", "",
             "| arm − " + reference + " | " + " | ".join(title for _, title, _ in PAIRED_COLUMNS) + " |",
             "|---|" + "---|" * len(PAIRED_COLUMNS)]
    for name, found in paired["arms"].items():
        lines.append(f"| {name} | " + " | ".join(signed_cell(found.get(metric), percent) for metric, _, percent in PAIRED_COLUMNS) + " |")
    return lines


def grounding_diagnostic_lines(results: dict) -> list[str]:
    """Where grounding fails: the stage-1 frame, the object the box points at, its centre error; empty when no
    arm has them. Constant boxes are placed in the annotated frame, so their frame is always right."""
    rows = [(name, row) for name, row in results["arms"].items() if "grounding_identification" in row]
    if not rows:
        return []
    lines = ["", "Grounding, where it fails (test): frame selection (stage 1) = the annotated first clear frame; "
             "identification = the object nearest the box's centre is the target; centre error (median, m):", "",
             "| model | frame selection % | identification % | centre error m |", "|---|---|---|---|"]
    for name, row in rows:
        lines.append(f"| {name} | {_cell(row.get('grounding_frame_accuracy'), row.get('grounding_frame_accuracy_ci95'), True)} "
                     f"| {_cell(row['grounding_identification'], row.get('grounding_identification_ci95'), True)} "
                     f"| {_cell(row.get('grounding_median_centre_error_m'), row.get('grounding_median_centre_error_m_ci95'))} |")
    grounding = results["baselines"]["grounding"]
    chance = None
    for name in ("constant_mean_box", "best_constant_box"):
        found = grounding[name].get("identification")
        if found:
            chance = found
            lines.append(f"| baseline: {name} (annotated frame) | — | {_cell(found['identification'], found['identification_ci95'], True)} "
                         f"| {_cell(found['median_centre_error_m'], found['median_centre_error_m_ci95'])} |")
    if chance:
        lines.append(f"| chance: a random object of the scene / of the target's category | — "
                     f"| {_cell(chance['scene_chance'], None, True)} / {_cell(chance['category_chance'], None, True)} | — |")
    return lines


def fresh_seed_lines(fresh: dict) -> list[str]:
    """The fresh-seed table of RESULTS.md (results.json's "fresh_seeds"), and the release rule when it was applied."""
    seeds = ", ".join(str(s) for s in fresh["seeds"])
    models = fresh["models"]
    first = next(iter(models.values()))
    lines = ["", f"Fresh seeds ({seeds}; {fresh['scenes_per_seed']} scenes each, no model trained, tuned or tested on them; "
                 f"{first['grounding']['num_samples']} grounding, {first['detection']['num_samples']} detection, "
                 f"{first['captioning']['num_samples']} captioning, {first['marker']['num_samples']} marker samples, pooled):", "",
             "| model | Acc@0.25 % | frame selection % | det F1@0.25 % | CIDEr@0.5 | marker point error m (median) |",
             "|---|---|---|---|---|---|"]
    for name, fig in models.items():
        lines.append(f"| {name} | {_cell(fig['grounding']['acc@0.25'], fig['grounding']['acc@0.25_ci95'], True)} "
                     f"| {_cell(fig['grounding']['frame_accuracy'], fig['grounding']['frame_accuracy_ci95'], True)} "
                     f"| {_cell(fig['detection']['f1@0.25'], fig['detection']['f1@0.25_ci95'], True)} "
                     f"| {_cell(fig['captioning']['cider@0.5'], fig['captioning']['cider@0.5_ci95'])} "
                     f"| {_cell(fig['marker']['point_error_m_median'], fig['marker']['point_error_m_median_ci95'])} |")
    base = fresh["baselines"]
    g = base["grounding"]
    lines.append(f"| baseline: best_constant_box, chosen on these samples (of {g['candidates']} training boxes; an upper "
                 f"bound on a constant) | {_cell(g['best_constant_box']['acc@0.25'], g['best_constant_box']['acc@0.25_ci95'], True)} | — | — | — | — |")
    lines.append(f"| baseline: always frame 0 | — | {_cell(g['frame_0']['frame_accuracy'], g['frame_0']['frame_accuracy_ci95'], True)} | — | — | — |")
    d = base["detection"]["category_mean_boxes"]
    lines.append(f"| baseline: category_mean_boxes (true labels) | — | — | {_cell(d['f1@0.25'], d['f1@0.25_ci95'], True)} | — | — |")
    c = base["captioning"]["constant_caption"]
    lines.append(f"| baseline: constant_caption | — | — | — | {_cell(c['cider@0.5'], c['cider@0.5_ci95'])} | — |")
    m = base["marker"]["constant_point"]
    lines.append(f"| baseline: constant_point | — | — | — | — | {_cell(m['point_error_m_median'], m['point_error_m_median_ci95'])} |")
    decision = fresh.get("decision")
    if decision:
        verdict = "ships" if decision["ship"] else "does not ship"
        lines += ["", f"Release rule ({fresh['candidate']} against {fresh['reference']}, paired on the same samples): "
                      f"the candidate **{verdict}**.", "", "| check | passed | figure |", "|---|---|---|"]
        lines += [f"| {name} | {'yes' if check['passed'] else 'no'} | {check['detail']} |" for name, check in decision["checks"].items()]
    return lines


REFUSED_SECTION = "## The release on fresh seeds, beside the last candidate the release rule refused"


def release_table_after_refusal(release_table: str, fresh: dict, release_label: str) -> str:
    """The release's table (`--table`) after a candidate was refused: its own rows as they were, and a section with
    the fresh-seed rows of that run (results.json's "fresh_seeds"), which evaluated the release beside the candidate
    on the same samples, with the rule's checks. The section of an earlier refusal is replaced.

    `release_label`: what the rows of the release (the run's `reference`) are called in the section."""
    names = {fresh["reference"]: f"release: {release_label}", fresh["candidate"]: f"candidate: {fresh['candidate']} (refused)"}
    relabelled = {**fresh, "models": {names.get(name, name): figures for name, figures in fresh["models"].items()},
                  "candidate": names[fresh["candidate"]], "reference": names[fresh["reference"]]}
    intro = ("The run that trained the candidate evaluated the release beside it on scenes of fresh seeds; the release "
             "rule refused the candidate, so the release stays and its rows above are unchanged.")
    return with_section(release_table, REFUSED_SECTION, "\n".join([REFUSED_SECTION, "", intro, *fresh_seed_lines(relabelled)]) + "\n")


def results_document(results: dict, current: str | None = None) -> str:
    """RESULTS.md of `results`: its title and `results_markdown`, with the sections other runs added to the `current`
    document kept: the claims in miniature (`python -m lab.mini --ablation --table`, lab/mini/claims.py) and a refused
    candidate's (`release_table_after_refusal`)."""
    document = f"# GAP-MLLM-Mini results (budget: {results['budget']})\n\n" + results_markdown(results)
    if results.get("claims"):
        document = with_section(document, CLAIMS_SECTION, claims_section(results))
    for heading in (CLAIMS_SECTION, REFUSED_SECTION):
        kept = document_section(current, heading) if current is not None else None
        if kept is not None and heading not in document:
            document = with_section(document, heading, kept)
    return document


def write_report(run, results: dict) -> Path:
    folder = run.results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    path = folder / "RESULTS.md"
    path.write_text(results_document(results))
    return path
