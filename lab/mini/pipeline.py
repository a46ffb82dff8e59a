"""`make mini` / `python -m lab.mini`: data, every training stage, evaluation, tables, the embedded default.

    python -m lab.mini --out runs/mini                      # the main arm: GAP-MLLM-Mini (gated fusion, S1 + S2)
    python -m lab.mini --out runs/mini --ablation           # + the ablation arms of mini/README.md
    python -m lab.mini --out runs/mini --budget toy         # a few steps per stage (what the test suite runs)
    python -m lab.mini --out runs/s1 --data runs/mini/data --stage0 DIR --arms gap_gated_s0 no_geometry_s0 --stage1-only
                                                       # stage 1 of two arms on the encoders of DIR

Steps, each skipped when its output is complete (so an interrupted run resumes where it stopped; a
training stage that was killed resumes from its last checkpoint):

    data        `gap-mllm synth --preset mini`: train / val / test scenes (test only for the final tables)
    stage 0     geometry encoder + heads (mini_stage0_geometry.yaml), its cameras through cross-view matching
                (mini_stage0_cameras.yaml), then the ViT (mini_stage0_vision.yaml)
    stage 1     marker → point + label (mini_stage1.yaml), per arm
    stage 2     grounding + detection + captioning (mini_stage2.yaml), per arm; its final model is written
                as a Hub folder in bfloat16 storage (`<arm>/final`: what is evaluated and shipped)
    evaluate    the official runners on the test split (gap_mllm.evaluation), per arm; stage-0 geometry
                metrics on test clips; trivial baselines
    report      `results.json` and `RESULTS.md` in the output folder (the table with 95 % intervals)
    export      with `--export DIR`: the main arm's final model as a Hub folder with its model card

Folders are never half-written (processing/output_folder.py): the data, each arm's `final` and `--export` are
written into a hidden sibling and renamed into place when complete, so a killed run leaves the last complete folder
or none, and the rerun deletes the leftover and writes it again. A `--data` or `--export` folder holding files this
pipeline did not write is refused (`--overwrite` lets `--export` replace one), checked before anything is trained.

Choices are made on the validation split (the recipes' generation evaluation logs); the test split is
read only by the final evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

import gap_mllm.training
from gap_mllm import GapMllmProcessor
from gap_mllm.evaluation.baselines import all_baselines
from gap_mllm.evaluation.geometry_eval import evaluate_geometry
from gap_mllm.evaluation.runner import one_load_per_model, run_evaluation
from gap_mllm.loading import load_model
from gap_mllm.processing.errors import RunStoppedEarly
from gap_mllm.processing.output_folder import check_output_folder
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.training.config import load_recipe
from gap_mllm.training.device import plan_device
from gap_mllm.training.geometry_data import GeometryClips
from gap_mllm.training.run import continuation_command, run_training

from .ablation import (ABLATION_FRESH_SEEDS, ABLATION_STAGE2_SETTINGS, ARM_STAGES, ablation_arms, run_state_overrides,
                       stage2_steps)
from .ablation import check_stage0, stage_steps, weights_digest
from .archived_states import check_states_present

from .arms import ARMS, MAIN_ARM, Arm, fresh_model_settings, stage2_arm_settings
from .export import EXPORT_COMMAND, export_default, export_is_complete
from .claims import check_no_claims_lost, check_quote_block, write_claims
from .fresh_seeds import FRESH_SCENES, evaluate_fresh, fresh_results, seed_parts
from .kept_answers import answers_folder, answers_kept, evaluation_folders
from .synth_data import MINI_COMMAND, ensure_synth_data
from .pipeline_settings import ANSWERS_OF_ANOTHER_RUN, BUDGETS, STAGE_KINDS, UNRECORDED_FRAMES, Budget, add_arguments
from .provenance import DONE_MARKER, FINAL_MODEL, collapse_copies, training_chain
from .report import (
    CONSTRAINED_SUFFIX,
    MARKER_FINAL_RESULTS,
    MARKER_STAGE1_RESULTS,
    collect_results,
    release_table_after_refusal,
    results_document,
    write_report,
)

logger = logging.getLogger(__name__)

# the shipped recipes: training/recipes/ of a checkout, package data of gap_mllm.training when installed
RECIPES = Path(gap_mllm.training.__file__).resolve().parent / "recipes"
REPOSITORY = Path(__file__).resolve().parents[2]  # the checkout this lab belongs to: `python -m lab.mini` runs from it

COMMAND = MINI_COMMAND  # the marker of the folders the pipeline writes for itself (an arm's `final`)
EVAL_TASKS = ("grounding", "detection", "captioning")
RELEASE_REFUSED_STATUS = 4  # the exit status of a run whose candidate failed the release rule (nothing exported)


@dataclass
class MiniRun:
    """Where a pipeline run lives and how big it is."""

    out: Path
    data: Path
    budget: str = "full"
    device: str = "auto"
    workers: int = 1
    eval_max_new_tokens: int | None = None
    eval_batch_size: int | None = None
    eval_limit: int | None = None
    overrides: tuple[str, ...] = ()
    stage_overrides: tuple[tuple[str, str], ...] = ()  # (stage kind, SECTION.KEY=VALUE), after `overrides`
    stage0_from: Path | None = None  # a folder with both frozen encoders: used instead of training stage 0
    data_given: bool = True  # --data was given (False: the data folder is `<out>/data`, which the messages say)
    stage1_from: Path | None = None  # a model folder the main arm's stage 2 starts from, instead of training stage 1
    constrained_row: bool = False  # also score the main arm decoding inside each task's grammar (its own table row)
    ablation: bool = False  # every arm at the ablation's one budget (lab/mini/ablation.py)
    run_state: Path | None = None  # `--run-state DIR`: each arm's stage keeps its run state in DIR/<arm>/<stage>
    claims_table: Path | None = None  # `--ablation --table FILE`: the claims section of FILE, rewritten after each arm
    claims_quotes: tuple[Path, ...] = ()  # `--ablation --quote FILE...`: the quote block of each FILE, likewise
    deadline: float | None = None  # `--time-limit`: time.monotonic() by which the command stops

    @property
    def settings(self) -> Budget:
        return BUDGETS[self.budget]

    def stage_dir(self, *parts: str) -> Path:
        return self.out / "stages" / Path(*parts)

    def results_dir(self, *parts: str) -> Path:
        return self.out / "results" / Path(*parts)

    @property
    def data_named(self) -> str:
        """The data folder as the user knows it: `--data DIR`, or the default under `--out`."""
        return f"--data {self.data}" if self.data_given else f"the data folder {self.data} (of --out {self.out})"


# ------------------------------------------------------------------------------------------- steps


def make_data(run: MiniRun) -> dict:
    """Write the mini SynthRooms data of the run's budget (skipped when the same configuration and splits are
    already there; `ensure_synth_data`)."""
    train, val, test = run.settings.scenes
    return ensure_synth_data(run.data, synth_config("mini"), {"train": train, "val": val, "test": test}, named=run.data_named,
                             workers=run.workers, remedy=f"Give another --data folder (or none: {run.out / 'data'}), or delete "
                                                         "this one to have it written again", budget=run.budget)


def stage_is_done(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


class StoppedBeforeStage(RunStoppedEarly):
    """`--time-limit` left too little time to start the next training stage: the command stops (exit status 75),
    and the same command continues there."""


MIN_STAGE_S = 60  # a training stage does not start with less than this left of `--time-limit`


def stage_settings(run: MiniRun, kind: str) -> list[str]:
    """The settings the budget, `--set` and `--stage-set` give a training stage of kind `kind`, in their order."""
    budget = run.settings.stage_overrides
    return [*budget.get("*", []), *budget.get(kind, []), *run.overrides,
            *(value for stage, value in run.stage_overrides if stage == kind)]


def train_stage(run: MiniRun, recipe_name: str, kind: str, output: Path, overrides: list[str], last: list[str] = ()) -> Path:
    """Run one recipe to completion (resuming a killed run), then mark it done. `overrides` come before the
    budget's and the user's settings, `last` after them (the ablation's equal steps, which no setting changes)."""
    if stage_is_done(output):
        logger.info("%s: done already (%s)", recipe_name, output)
        return output
    last = list(last)
    if run.deadline is not None:  # `--time-limit`: the stage trains for what is left, or not at all
        left = run.deadline - time.monotonic()
        if left < MIN_STAGE_S:
            raise StoppedBeforeStage(f"python -m lab.mini stopped at its --time-limit before {recipe_name} ({output}); "
                                     f"continue it with: {continuation_command()}")
        last.append(f"time_limit_s={int(left)}")
    budget = run.settings.stage_overrides
    # one feature cache for the run: stages with the same frozen encoders share its entries (stage 2's marker samples)
    values = [f"data.data_root={run.data}", f"data.cache_dir={run.out / 'hf_datasets'}", f"training.output_dir={output}",
              f"cache.directory={run.out / 'feature_cache'}",
              *budget.get("*", []), *budget.get(kind, []), *overrides, *run.overrides,
              *(value for stage, value in run.stage_overrides if stage == kind), *last]
    values.append(f"device={run.device}")  # training/device.py picks (and logs) device and precision
    recipe = load_recipe(RECIPES / recipe_name, values)
    logger.info("%s → %s", recipe_name, output)
    # a run stopped by `--set time_limit_s=N` or a SIGTERM is not done: run_training raises before the marker
    # (TrainingStoppedAtTimeLimit, naming this command, which resumes it), whether the stage counts steps or epochs
    result = run_training(recipe, resume_from_checkpoint="auto")

    device = "cuda" if run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available()) else "cpu"
    (output / DONE_MARKER).write_text(json.dumps({"recipe": recipe_name, "overrides": values, "global_step": result.global_step,
                                                  "training_loss": result.training_loss, "device": device}, indent=1))
    return output


def run_stage0(run: MiniRun) -> Path:
    stage0 = run.stage_dir("stage0")
    if stage_is_done(stage0):  # a stage 0 copied by --stage0 must not be trained around (hours) and then ignored
        source = json.loads((stage0 / DONE_MARKER).read_text(encoding="utf-8")).get("source")
        if source is not None:
            raise ValueError(f"{stage0} was copied from {source} (--stage0); pass --stage0 {source} again, or use another --out")
    geometry = train_stage(run, "mini_stage0_geometry.yaml", "geometry", run.stage_dir("stage0_geometry"), [])
    cameras = train_stage(run, "mini_stage0_cameras.yaml", "cameras", run.stage_dir("stage0_cameras"), [f"model.name_or_path={geometry}"])
    return train_stage(run, "mini_stage0_vision.yaml", "vision", run.stage_dir("stage0"), [f"model.name_or_path={cameras}"])


def adopt_stage0(run: MiniRun, source: Path) -> Path:
    """Use `source` (a model folder whose geometry encoder and ViT the arms take, e.g. a stage-0 run of
    `gap-mllm train` or an exported default) as the run's stage 0 (`adopt_model`)."""
    return adopt_model(source, run.stage_dir("stage0"), "--stage0", "stage0")


def adopt_model(source: Path, folder: Path, flag: str, stage: str) -> Path:
    """Copy the model folder `source` into the stage folder `folder` (its checkpoints left out) and mark it done
    with its origin, so the pipeline uses it instead of training that stage (`stage`: its key in an exported
    model's `evaluation_results.json` "stages"). A folder already holding another origin (trained, or another
    source) refuses it, so one run never mixes models; the same source under another path (a moved checkout, the
    same commit extracted elsewhere) is the same origin, known by the digest of its weight files."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {source}: not a model folder (no config.json)")
    if stage_is_done(folder):
        done = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
        if done.get("source") is not None and done["source"] != str(source) and weights_digest(folder) == weights_digest(source):
            logger.info("%s: %s holds the weights of %s already (copied from %s)", stage, folder, source, done["source"])
            return folder
        if done.get("source") != str(source):
            raise ValueError(f"{flag} {source}: {folder} already holds "
                             f"{done.get('source') or 'a model trained by ' + str(done.get('recipe'))}; use another --out")
        logger.info("%s: %s, copied from %s already", stage, folder, source)
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted copy
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    if (source / "evaluation_results.json").is_file() and not (source / DONE_MARKER).is_file():
        # an exported model: its results say how it was made
        results = json.loads((source / "evaluation_results.json").read_text(encoding="utf-8"))
        marker = exported_origin(results, source, flag, stage)
    else:  # a pipeline stage folder keeps what trained it; any other folder is just given
        origin = json.loads((source / DONE_MARKER).read_text(encoding="utf-8")) if (source / DONE_MARKER).is_file() else {}
        marker = {"recipe": origin.get("recipe", f"given ({flag})"), "global_step": origin.get("global_step"),
                  "device": origin.get("device"), "source": str(source), "note": f"copied from {source} ({flag})"}
    (folder / DONE_MARKER).write_text(json.dumps(marker, indent=1))
    return folder


def exported_origin(results: dict, source: Path, flag: str, stage: str) -> dict:
    """The `stage_done.json` of a stage taken from an exported model (`results`: its `evaluation_results.json`).

    Its "stages" name the stage folders that made it. The stage of that name (stage 0: the encoders) is what it
    gives; an exported model taken as another stage (`--stage1`) is its arm's final model, so every arm stage
    that trained it is named (stage 1 and stage 2), never a stage-1 model it is not."""
    stages, note = results.get("stages", {}), f"copied from {source} ({flag})"
    if stage in stages:
        origin = stages[stage]
        if origin.get("note"):  # a release copied from the last one names that folder once (lab/mini/provenance.py)
            note = collapse_copies(f"{note}; its {stage}: {origin['note']}")
        return {"recipe": origin.get("recipe", f"given ({flag})"), "global_step": origin.get("global_step"),
                "device": origin.get("device"), "source": str(source), "note": note}
    trained = {name: found for name, found in sorted(stages.items()) if "/" in name}  # the arm stages: ARM/stageN
    if trained:
        note += f"; {FINAL_MODEL}" + "; ".join(training_chain(trained, source))
    devices = sorted({str(found.get("device")) for found in trained.values() if found.get("device")})
    return {"recipe": f"given ({flag})", "global_step": None, "device": ", ".join(devices) or None,
            "source": str(source), "note": note}


def run_arm(run: MiniRun, arm: Arm, stage0: Path) -> Path:
    """Stage 1 (unless the arm skips it) and stage 2 of one arm; returns the final model folder."""
    fresh = fresh_model_settings(arm, stage0)
    states = {kind: run_state_overrides(run.run_state, arm, kind) if run.run_state is not None else []
              for kind in ARM_STAGES}
    stage2_last = ablation_stage2(run, arm)
    if arm.stage1 and run.stage1_from is not None and arm == MAIN_ARM:
        stage1 = adopt_model(run.stage1_from, run.stage_dir(arm.name, "stage1"), "--stage1", "stage1")
        start = [f"model.name_or_path={stage1}", f"training.seed={arm.seed}"]
    elif arm.stage1:
        stage1 = train_stage(run, "mini_stage1.yaml", "stage1", run.stage_dir(arm.name, "stage1"), [*fresh, *states["stage1"]])
        if arm.stage1_only:
            return stage1
        start = [f"model.name_or_path={stage1}", f"training.seed={arm.seed}"]
    else:
        start = ["model.name_or_path=null", *fresh]
    stage2 = train_stage(run, "mini_stage2.yaml", "stage2", run.stage_dir(arm.name, "stage2"),
                         [*start, *stage2_arm_settings(arm), *states["stage2"], *ablation_stage2_settings(run)],
                         last=stage2_last)
    final = run.stage_dir(arm.name, "final")
    if not export_is_complete(final):
        # `final` lies in the run's own stage folder: what is there is a half export of an earlier version, replaced
        export_default(stage2, final, command=COMMAND, option="", overwrite=True)
    return final


def _recipe_steps(recipe_name: str) -> int:
    """`training.max_steps` of a recipe of this pipeline, as written."""
    return int(yaml.safe_load((RECIPES / recipe_name).read_text(encoding="utf-8"))["training"]["max_steps"])


def ablation_stage2_settings(run: MiniRun) -> list[str]:
    """What `--ablation` sets in every arm's stage 2 before the user's settings: the sixth release's stage 2
    (lab/mini/ablation.py) at the budget's ablation steps."""
    if not run.ablation:
        return []
    steps = run.settings.ablation_stage2_steps
    return [*ABLATION_STAGE2_SETTINGS, *([f"training.max_steps={steps}"] if steps is not None else [])]


def ablation_stage2(run: MiniRun, arm: Arm) -> list[str]:
    """The stage-2 settings of `--ablation` that come after every other (`train_stage`'s `last`): an arm without
    stage 1 trains the stage-1 steps as more stage 2, so every arm makes the same number of steps."""
    if not run.ablation or arm.stage1:
        return []
    stage1 = stage_steps(_recipe_steps("mini_stage1.yaml"), stage_settings(run, "stage1"))
    stage2 = stage_steps(_recipe_steps("mini_stage2.yaml"), _ablation_then_user(run))
    return [f"training.max_steps={stage2_steps(arm, stage1, stage2)}"]


def _ablation_then_user(run: MiniRun) -> list[str]:
    """Stage 2's settings in `train_stage`'s order: the budget's, the ablation's, the user's."""
    budget = run.settings.stage_overrides
    return [*budget.get("*", []), *budget.get("stage2", []), *ablation_stage2_settings(run), *run.overrides,
            *(value for stage, value in run.stage_overrides if stage == "stage2")]


def constrained_arm(arm: Arm) -> Arm:
    """The table row of `arm`'s final model decoding inside each task's answer grammar (`--constrained-row`): its
    results live in `results/<arm>_constrained`, and the table pairs it with the free row on the same samples."""
    return replace(arm, name=f"{arm.name}{CONSTRAINED_SUFFIX}")


def _recipe_tasks(recipe_name: str) -> list[str]:
    """The training tasks (`data.tasks`) a recipe of this pipeline trains, as written."""
    return list((yaml.safe_load((RECIPES / recipe_name).read_text(encoding="utf-8")).get("data") or {}).get("tasks") or [])


def _evaluate(run: MiniRun, task: str, results_name: str, model_dir: Path, row: str, constrained: bool) -> dict:
    """One official runner on the test split into `results/<row>/<results_name>` (skipped when its summary is
    there), with the budget's evaluation settings; returns its summary. Answers there of another run (put back
    from a run state but made on other data, or left by an earlier run) are answered again (ANSWERS_OF_ANOTHER_RUN)."""
    out_dir = run.results_dir(row, results_name)
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    settings = run.settings
    return run_evaluation(task, data_dir=run.data, out_dir=out_dir, model_dir=model_dir, split="test",
                          batch_size=run.eval_batch_size or settings.eval_batch_size,
                          limit=run.eval_limit or settings.eval_limit,
                          max_new_tokens=run.eval_max_new_tokens or settings.eval_max_new_tokens[task],
                          meteor=False, plots=False, progress=False, constrained=constrained,
                          other_run_answers=ANSWERS_OF_ANOTHER_RUN,
                          unrecorded_frames=UNRECORDED_FRAMES)


def final_model_tasks() -> list[tuple[str, str]]:
    """(evaluation task, results folder name) of a final model: grounding, detection, captioning, and the marker
    task when stage 2 trains it (its results folder `MARKER_FINAL_RESULTS`)."""
    tasks = [(task, task) for task in EVAL_TASKS]
    if "reconstruction" in _recipe_tasks("mini_stage2.yaml"):  # the final model keeps the marker task
        tasks.append(("reconstruction", MARKER_FINAL_RESULTS))
    return tasks


def evaluate_final_tasks(run: MiniRun, model_dir: Path, row: str, constrained: bool = False) -> dict:
    """Every task of a final model (`final_model_tasks`) into `results/<row>/`: {results folder name: summary}; the
    model is loaded once for all of them (`one_load_per_model`)."""
    with one_load_per_model():
        return {name: _evaluate(run, task, name, model_dir, row, constrained) for task, name in final_model_tasks()}


def evaluate_arm(run: MiniRun, arm: Arm) -> dict:
    """Official runners on the test split: grounding, detection, captioning and the marker task (final model),
    and the marker task on the stage-1 model; with `run.constrained_row`, the main arm's final-model tasks again,
    decoding inside each task's grammar (`constrained_arm`). Returns {results folder name: summary} (the constrained
    ones under `<row>/<results folder name>`)."""
    summaries = {}
    final = run.stage_dir(arm.name, "final")
    # the marker task first: its answers are the shortest, so an interrupted evaluation has it complete
    if arm.stage1:
        summaries[MARKER_STAGE1_RESULTS] = _evaluate(run, "reconstruction", MARKER_STAGE1_RESULTS,
                                                     run.stage_dir(arm.name, "stage1"), arm.name, False)
    if not arm.stage1_only:
        summaries.update(evaluate_final_tasks(run, final, arm.name))
        if run.constrained_row and arm == MAIN_ARM:  # the same final model, constrained
            row = constrained_arm(arm).name
            summaries.update({f"{row}/{name}": summary
                              for name, summary in evaluate_final_tasks(run, final, row, constrained=True).items()})
    return summaries


def evaluate_stage0(run: MiniRun, stage0: Path) -> dict:
    """Geometry metrics of the stage-0 encoder on test clips next to the clip-blind baseline."""
    path = run.results_dir("stage0_geometry.json")
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))

    model = load_model(stage0)
    processor = GapMllmProcessor.from_pretrained(stage0)
    clips = 8 if run.budget == "toy" else 400
    test = GeometryClips(run.data, "test", processor, num_clips=clips, seed=1000)
    train = GeometryClips(run.data, "train", processor, num_clips=clips, seed=2000)
    report = evaluate_geometry(model, test, baseline_clips=train)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def compute_baselines(run: MiniRun) -> dict:
    """The trivial baselines on the test samples the models answer (the first `--eval-limit` of each task, as the
    runners take them: `_evaluate`), so each table row and its baseline are scored on the same samples; kept in
    `results/baselines.json` (`baselines_limit<N>.json` with a limit, so a rerun with another limit scores anew)."""
    limit = run.eval_limit or run.settings.eval_limit
    path = run.results_dir("baselines.json" if limit is None else f"baselines_limit{limit}.json")
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))

    report = all_baselines(run.data, "test", limit=limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


# ------------------------------------------------------------------------------------------- driver


class ReleaseRefused(RuntimeError):
    """The release rule (lab/mini/fresh_seeds.py) failed: the candidate is not exported over the current release."""


def run_pipeline(run: MiniRun, arms: list[Arm], parallel: int = 1, export: Path | None = None,
                 overwrite: bool = False, fresh_seeds: bool = False, release_reference: Path | None = None) -> dict:
    """Everything of the module docstring; returns the results written to `<out>/results/results.json`.
    `overwrite`: `export` may replace a folder that `python -m lab.mini --export` did not write. `fresh_seeds`: also
    evaluate the main arm's final model on scenes of fresh seeds (lab/mini/fresh_seeds.py); `release_reference` (a model
    folder, the current release): evaluate it there too and apply the release rule, and export only if it passes
    (`ReleaseRefused` after the table is written, otherwise)."""
    if release_reference is not None and not (Path(release_reference) / "config.json").is_file():
        raise ValueError(f"--release-reference {release_reference}: not a model folder (no config.json)")
    if export is not None:  # hours before the export: refuse a folder of the user's files now, not at the end
        check_output_folder(export, EXPORT_COMMAND, overwrite=overwrite, option="--export")
    run.out.mkdir(parents=True, exist_ok=True)
    make_data(run)
    stage0 = adopt_stage0(run, run.stage0_from) if run.stage0_from is not None else run_stage0(run)
    if parallel > 1 and len(arms) > 1:
        _run_arms_in_subprocesses(run, arms, parallel)
    claims = None
    for number, arm in enumerate(arms):  # in-process (or, after the subprocesses, only collecting what they wrote)
        run_arm(run, arm, stage0)
        # one load of each model for the test split and the fresh seeds alike (the final model serves both)
        with arm_answers_kept(run, arm), one_load_per_model():
            evaluate_arm(run, arm)
            if run.ablation and not arm.stage1_only:  # each arm answers its claims as soon as it is trained
                evaluate_fresh(run.out, run.stage_dir(arm.name, "final"), arm.name, seeds=ABLATION_FRESH_SEEDS,
                               **_fresh_settings(run))
        if run.ablation and not arm.stage1_only:
            claims = _claims_so_far(run, arms, number) or claims
    geometry = evaluate_stage0(run, stage0)
    baselines = compute_baselines(run)
    rows = [*arms, constrained_arm(MAIN_ARM)] if run.constrained_row and MAIN_ARM in arms else arms
    results = collect_results(run, rows, geometry, baselines, reference=MAIN_ARM.name)
    if (fresh_seeds or release_reference is not None) and MAIN_ARM in arms:
        models = {MAIN_ARM.name: run.stage_dir(MAIN_ARM.name, "final")}
        if release_reference is not None:
            models["release_reference"] = Path(release_reference)
        results["fresh_seeds"] = fresh_results(
            run.out, run.data, models, candidate=MAIN_ARM.name if release_reference is not None else None,
            reference="release_reference" if release_reference is not None else None, **_fresh_settings(run))
        results["fresh_seeds"]["reference_folder"] = str(release_reference) if release_reference is not None else None
    if run.ablation:  # every arm on the same scenes of the ablation's own fresh seeds, fixed before any was evaluated
        trained = [arm.name for arm in arms if not arm.stage1_only]
        results["ablation_fresh_seeds"] = fresh_results(
            run.out, run.data, {name: run.stage_dir(name, "final") for name in trained}, seeds=ABLATION_FRESH_SEEDS,
            **_fresh_settings(run))
        results["claims"] = claims  # the last arm's claims: those of every trained arm
    write_report(run, results)
    decision = (results.get("fresh_seeds") or {}).get("decision")
    if export is not None and decision is not None and not decision["ship"]:
        failed = [name for name, check in decision["checks"].items() if not check["passed"]]
        raise ReleaseRefused(f"--export {export}: not written; the release rule failed on the fresh seeds "
                             f"({'; '.join(failed)}): see {run.results_dir('RESULTS.md')}")
    if export is not None:
        if not (run.stage_dir(MAIN_ARM.name, "final") / "config.json").is_file():
            raise ValueError(f"--export {export}: the main arm {MAIN_ARM.name} has no final model in this run "
                             "(it was not run, or --stage1-only stopped it after stage 1)")

        export_default(run.stage_dir(MAIN_ARM.name, "final"), export, results, overwrite=overwrite)
    return results


def _answer_roots(run: MiniRun, arm: Arm) -> list[Path]:
    """The folders under --out that `arm`'s evaluations answer into: the test split's, the fresh seeds'."""
    return [run.results_dir(arm.name), run.results_dir(constrained_arm(arm).name),
            *(results for _, results, _ in seed_parts(run.out, arm.name, ABLATION_FRESH_SEEDS))]


def arm_answers_kept(run: MiniRun, arm: Arm):
    """With `--run-state DIR`: `arm`'s evaluation answers (the test split's, the ablation's fresh seeds') are put back
    from DIR/<arm>/answers before the `with` block evaluates it, and kept there when it ends
    (lab/mini/kept_answers.py)."""
    return answers_kept(run.out, run.run_state, arm.name, _answer_roots(run, arm),
                        models=[run.stage_dir(arm.name, "final"), run.stage_dir(arm.name, "stage1")])


def _answered_before(run: MiniRun, arm: Arm) -> bool:
    """Whether `arm` has answers from an earlier call: in its evaluation folders under --out, or kept in the run
    state."""
    kept = [answers_folder(run.run_state, arm.name)] if run.run_state is not None else []
    return bool(evaluation_folders([*_answer_roots(run, arm), *kept]))


def _claims_so_far(run: MiniRun, arms: list[Arm], number: int) -> dict | None:
    """The claims over `arms[:number + 1]` (each arm answers its claims as soon as it is trained), written
    to the run's results, --table's claims section and each --quote, and returned; None, with nothing written, while a
    later arm of `arms` was answered by an earlier call. The arms come back one after another, so without that rule
    a stop before such an arm is back (a time limit, a crash) would leave --table and the quotes with the claims of
    the arms back so far: claims an earlier call had answered would read "not evaluated yet"."""
    waiting = [later.name for later in arms[number + 1:] if not later.stage1_only and _answered_before(run, later)]
    if waiting:
        logger.info("claims: not written after %s; %s answered before and come back later", arms[number].name,
                    ", ".join(waiting))
        return None
    return write_claims(run, [done.name for done in arms[:number + 1] if not done.stage1_only], run.claims_table,
                        run.claims_quotes)


def _fresh_settings(run: MiniRun) -> dict:
    """How models are evaluated on scenes of fresh seeds (lab/mini/fresh_seeds.py) in this run."""
    return {"scenes": FRESH_SCENES if run.budget == "full" else 1,
            "batch_size": run.eval_batch_size or run.settings.eval_batch_size,
            "limit": run.eval_limit or run.settings.eval_limit, "max_new_tokens": run.settings.eval_max_new_tokens,
            "workers": run.workers}


def worker_environment() -> dict[str, str]:
    """The environment of a `--parallel` worker: this one, unbuffered, with the repository root on PYTHONPATH (the lab
    is not installed; a worker finds `lab.mini` from any working directory)."""
    paths = [str(REPOSITORY), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _run_arms_in_subprocesses(run: MiniRun, arms: list[Arm], parallel: int) -> None:
    """Train and evaluate arms concurrently (one process each, `parallel` at a time): on a GPU the small
    models leave most of the device idle, so several arms share it."""
    pending = list(arms)
    running: list[tuple[Arm, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < parallel:
            arm = pending.pop(0)
            log = run.out / "logs" / f"{arm.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "lab.mini", "--out", str(run.out), "--data", str(run.data),
                       "--budget", run.budget, "--device", run.device, "--arms", arm.name, "--no-report"]
            if arm.stage1_only:
                command.append("--stage1-only")
            if run.ablation:
                command.append("--ablation")
            if run.run_state is not None:
                command += ["--run-state", str(run.run_state)]
            if run.deadline is not None:
                command += ["--time-limit", str(max(1, int(run.deadline - time.monotonic())))]
            for flag, value in (("--eval-max-new-tokens", run.eval_max_new_tokens), ("--eval-batch-size", run.eval_batch_size),
                                ("--eval-limit", run.eval_limit)):
                if value is not None:
                    command += [flag, str(value)]
            for override in run.overrides:
                command += ["--set", override]
            for stage, override in run.stage_overrides:
                command += ["--stage-set", f"{stage}:{override}"]
            running.append((arm, subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                       env=worker_environment())))
        still = []
        for arm, process in running:
            code = process.poll()
            if code is None:
                still.append((arm, process))
            elif code != 0:
                failed.append(arm.name)
        running = still
        if running:
            time.sleep(2)
    if failed:
        raise RuntimeError(f"arm(s) {failed} failed; see {run.out / 'logs'}")


def parse_stage_override(value: str) -> tuple[str, str]:
    """`"stage1:training.max_steps=3000"` → `("stage1", "training.max_steps=3000")`; a clear error otherwise."""
    stage, sep, override = value.partition(":")
    if not sep or stage not in STAGE_KINDS or "=" not in override:
        raise ValueError(f"--stage-set {value!r}: expected STAGE:SECTION.KEY=VALUE with STAGE one of {', '.join(STAGE_KINDS)}")
    return stage, override


class StoppedAtTimeLimit(RunStoppedEarly):
    """`--time-limit` (or a SIGTERM) came outside a training loop: the command stops at once (exit status 75)."""


def _stop_outside_training(signum, frame):
    raise StoppedAtTimeLimit(f"python -m lab.mini stopped on SIGTERM (its --time-limit) outside a training step (data, "
                             f"the feature cache or an evaluation: nothing there is lost); continue it with: "
                             f"{continuation_command()}")


def stop_at_time_limit(seconds: float) -> threading.Timer:
    """At `--time-limit`, this process gets a SIGTERM: a training step in progress ends with a checkpoint and its run
    state (training/time_limit.py, whose handler holds the signal while a stage trains; each stage's own
    `time_limit_s` stops it there as well), and whatever else runs (data, the feature cache, an evaluation: nothing
    there is lost) ends at once with `StoppedAtTimeLimit`, exit status 75 like the training's stop."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_outside_training)
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    return timer


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.stage1 and args.stage1_only:
        raise ValueError("--stage1 DIR gives the main arm's stage 1; --stage1-only would train nothing")
    if args.stage1_only and args.export:
        raise ValueError(f"--export {args.export} needs the main arm's final model, which --stage1-only does not train")
    given = [flag for flag, value in (("--export", args.export), ("--release-reference", args.release_reference),
                                      ("--stage1", args.stage1)) if value]
    if args.ablation and given:  # its main arm is retrained at the ablation's budget, not the shipped model
        raise ValueError(f"--ablation trains every arm, the main one too, from the same stage 0 at one budget "
                         f"(lab/mini/ablation.py): its main arm is not a release, so {', '.join(given)} does not go with "
                         f"it (--table FILE with it rewrites only FILE's section of the claims)")
    if args.ablation and args.table and not Path(args.table).is_file():
        raise FileNotFoundError(f"--table {args.table}: with --ablation it names the release's RESULTS.md whose claims "
                                f"section the run rewrites after each arm (make mini-ablation: mini/RESULTS.md); no such file")
    if args.quote and not args.ablation:
        raise ValueError(f"--quote {' '.join(args.quote)} quotes the claims of --ablation, which this run does not train")
    for path in args.quote:  # before any step: a file without the block would be found only after the first arm
        check_quote_block(path)
    names = args.arms or ([arm.name for arm in ablation_arms()] if args.ablation else [MAIN_ARM.name])
    if args.ablation and args.run_state:
        given = [f"--table {args.table}"] if args.table else []
        check_no_claims_lost(Path(args.run_state), names, [*given, *(f"--quote {path}" for path in args.quote)])
    if args.run_state:  # a finished arm whose states left the tree is brought back, not trained again
        check_states_present(Path(args.run_state), names)
    if args.ablation and args.budget == "full":  # every arm from the same stage 0, on every machine
        check_stage0(args.stage0)
    stage_overrides = tuple(parse_stage_override(value) for value in args.stage_overrides)
    plan_device(args.device, {}, "auto")  # the training's own device check, before any data is written or trained
    run = MiniRun(out=Path(args.out), data=Path(args.data) if args.data else Path(args.out) / "data", budget=args.budget,
                  device=args.device, workers=args.workers, eval_max_new_tokens=args.eval_max_new_tokens,
                  eval_batch_size=args.eval_batch_size, eval_limit=args.eval_limit, overrides=tuple(args.overrides),
                  stage_overrides=stage_overrides, stage0_from=Path(args.stage0) if args.stage0 else None,
                  stage1_from=Path(args.stage1) if args.stage1 else None, data_given=bool(args.data),
                  constrained_row=args.constrained_row, ablation=args.ablation,
                  run_state=Path(args.run_state) if args.run_state else None,
                  claims_table=Path(args.table) if args.ablation and args.table else None,
                  claims_quotes=tuple(Path(path) for path in args.quote),
                  deadline=time.monotonic() + args.time_limit if args.time_limit else None)
    if args.time_limit:
        stop_at_time_limit(args.time_limit)
    arms = [replace(ARMS[name], stage1_only=True) if args.stage1_only else ARMS[name] for name in names]
    if args.no_report:  # a worker process of --parallel: one arm, no shared steps
        stage0 = run.stage_dir("stage0")
        for arm in arms:
            run_arm(run, arm, stage0)
            with arm_answers_kept(run, arm):
                evaluate_arm(run, arm)
        return 0
    refused = None
    try:
        results = run_pipeline(run, arms, parallel=args.parallel, export=Path(args.export) if args.export else None,
                               overwrite=args.overwrite, fresh_seeds=args.fresh_seeds,
                               release_reference=Path(args.release_reference) if args.release_reference else None)
    except ReleaseRefused as error:  # the table is written: show it, with why nothing was exported
        refused, results = error, json.loads(run.results_dir("results.json").read_text(encoding="utf-8"))
    table = run.results_dir("RESULTS.md").read_text(encoding="utf-8")
    # --table is the shipped model's table (make mini: mini/RESULTS.md): a refused candidate leaves its rows as they
    # are, since the candidate's would describe a model that was not exported, and adds the fresh-seed rows of the
    # release and the candidate (evidence on the release); the candidate's whole table stays in the run's results
    # (with --ablation, --table got only its claims section: `write_claims`); the sections other runs added to it
    # (the claims, a refused candidate's) are kept
    release_table = args.table if not args.ablation else None
    if release_table and refused is None:
        current = Path(release_table).read_text(encoding="utf-8") if Path(release_table).is_file() else None
        Path(release_table).write_text(results_document(results, current), encoding="utf-8")
    elif release_table and Path(release_table).is_file():
        release = Path(release_table).read_text(encoding="utf-8")
        Path(release_table).write_text(release_table_after_refusal(
            release, results["fresh_seeds"], f"{Path(args.release_reference).name} (--release-reference)"),
                                    encoding="utf-8")
    print(table)
    print(json.dumps({"arms": list(results["arms"])}, indent=1))
    if refused is not None:
        kept = (f"; --table {args.table} keeps the release's rows and gains the fresh-seed rows of the release and the "
                "candidate" if args.table and Path(args.table).is_file() else "")
        print(f"python -m lab.mini: {refused}{kept}", file=sys.stderr)
        return RELEASE_REFUSED_STATUS
    return 0

