"""What a `python -m lab.mini` run can be told: its budgets, the names of its training stages and the command's
arguments. Light to import (no torch, no transformers): `python -m lab.mini --help` reads it; lab/mini/pipeline.py
runs it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from gap_mllm.processing.argument_types import positive_int, worker_count

from .ablation import ABLATION_STAGE2_STEPS
from .arms import ARMS

STAGE_KINDS = ("geometry", "cameras", "vision", "stage1", "stage2")  # the training stages, as `--stage-set` names them
# answers found in an evaluation folder of the pipeline's --out that another run wrote (put back from a run state
# but made on other data, left by an earlier run): the pipeline owns the folder and the run state keeps a copy
# until the new answers replace it, so they are answered again (evaluation/runner.py) rather than stopping the run
ANSWERS_OF_ANOTHER_RUN = "answer_again"
# kept answers written before answer rows recorded their frames' digest (the ablation's arms): the pipeline wrote its
# data folders itself and checks them (lab/mini/synth_data.py), so they are reused as made from those frames, counted
# in a warning, rather than answered again (hours of generation a run)
UNRECORDED_FRAMES = "take_current"
EVAL_MAX_NEW_TOKENS = {"reconstruction": 64, "grounding": 128, "captioning": 64, "detection": 512}


@dataclass
class Budget:
    """Data size and per-stage overrides of a budget ("full": the recipes as written; "toy": minutes)."""

    scenes: tuple[int, int, int] = (1200, 60, 240)
    stage_overrides: dict = field(default_factory=dict)
    eval_limit: int | None = None
    eval_batch_size: int = 16
    # generation budget per task: about twice the longest target answer of the mini training data (marker
    # 27 tokens, grounding 6 / 60 per stage, captioning 15, detection 407), so no valid answer is ever cut
    # while a model that never stops costs tens of tokens, not the official 1280 / 4096
    eval_max_new_tokens: dict = field(default_factory=lambda: dict(EVAL_MAX_NEW_TOKENS))
    # `--ablation`: the stage-2 steps of every arm (lab/mini/ablation.py; None: the budget's own, as the toy's 2)
    ablation_stage2_steps: int | None = None


BUDGETS = {
    "full": Budget(ablation_stage2_steps=ABLATION_STAGE2_STEPS),
    "toy": Budget(
        scenes=(3, 2, 2),
        stage_overrides={
            "*": ["training.max_steps=2", "training.logging_steps=1", "training.save_steps=2", "training.eval_steps=2",
                  "training.per_device_train_batch_size=2", "training.dataloader_num_workers=0"],
            "geometry": ["geometry.eval_clips=2"],
            "cameras": ["geometry.eval_clips=2"],
            "vision": ["data.max_eval_samples=4"],
            "stage1": ["evaluation.max_samples=2", "evaluation.max_new_tokens=8", "evaluation.every_n_steps=0"],
            "stage2": ["evaluation.max_samples=2", "evaluation.max_new_tokens=8", "evaluation.every_n_steps=0"],
        },
        eval_limit=2,
        eval_batch_size=2,
        eval_max_new_tokens={task: 12 for task in EVAL_MAX_NEW_TOKENS},
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/mini", help="run folder (stages, results, logs)")
    parser.add_argument("--data", default=None, help="SynthRooms folder (default: <out>/data)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="full: the recipes; toy: a few steps per stage")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=worker_count, default=1,
                        help="processes writing the data (at most the machine's CPUs)")
    parser.add_argument("--ablation", action="store_true",
                        help="train and evaluate every ablation arm, one at a time, at one budget "
                             "(lab/mini/ablation.py); with --arms, those arms at that budget")
    parser.add_argument("--run-state", default=None, metavar="DIR",
                        help="keep each arm's training stages' run states in DIR/<arm>/<stage> and its evaluation "
                             "answers in DIR/<arm>/answers (a folder to commit: a fresh clone continues the run with the "
                             "same command, answering nothing twice; training/run_state.py, lab/mini/kept_answers.py)")
    parser.add_argument("--time-limit", type=positive_int, default=None, metavar="SECONDS",
                        help="stop the whole command after SECONDS: each training stage gets what is left as its "
                             "time_limit_s (a checkpoint and its run state, exit status 75); no stage starts with under "
                             "a minute left, and at the limit a step in progress ends the same way while data, "
                             "cache filling or evaluation are ended at once (nothing there is lost)")
    parser.add_argument("--arms", nargs="+", default=None, choices=sorted(ARMS), help="arms to run (default: the main arm)")
    parser.add_argument("--parallel", type=positive_int, default=1, help="arms trained at the same time (separate processes)")
    parser.add_argument("--eval-max-new-tokens", type=positive_int, default=None, help="one generation budget for every task (default: per task, EVAL_MAX_NEW_TOKENS)")
    parser.add_argument("--eval-batch-size", type=positive_int, default=None, help="samples per generate call of the evaluation (GPU: 64)")
    parser.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate the first N test samples of each task (>= 800 for the tables)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="applied to every training stage after the recipe, e.g. --set training.dataloader_num_workers=4")
    parser.add_argument("--stage-set", dest="stage_overrides", action="append", default=[], metavar="STAGE:SECTION.KEY=VALUE",
                        help=f"applied to one training stage ({', '.join(STAGE_KINDS)}) after --set, e.g. a longer "
                             "stage 1 on a GPU: --stage-set stage1:training.max_steps=3000")
    parser.add_argument("--stage0", default=None, metavar="DIR",
                        help="take both frozen encoders from this model folder instead of training stage 0 "
                             "(e.g. a stage-0 run of `gap-mllm train`); the arms' LLMs still start from random")
    parser.add_argument("--stage1", default=None, metavar="DIR",
                        help="start the main arm's stage 2 from this model folder instead of training its stage 1 (e.g. the "
                             "shipped default, to continue its stage 2); the tables' stage-1 columns then score this model")
    parser.add_argument("--stage1-only", action="store_true", help="stop every arm after stage 1 (and evaluate its marker task)")
    parser.add_argument("--export", default=None, help="write the main arm's final model here as a Hub folder with its card "
                                                       "(an earlier --export there is replaced; any other non-empty "
                                                       "folder is refused, before training, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --export replace a folder it did not write (its files are deleted)")
    parser.add_argument("--constrained-row", action="store_true",
                        help="also evaluate the main arm decoding inside each task's answer grammar: a second table row "
                             "beside the free one (the paper's protocol), paired on the same test samples")
    parser.add_argument("--fresh-seeds", action="store_true",
                        help="also evaluate the main arm on scenes of fresh generator seeds (lab/mini/fresh_seeds.py)")
    parser.add_argument("--release-reference", default=None, metavar="DIR",
                        help="the current release: evaluate it on the fresh seeds too, apply the release rule of "
                             "mini/README.md, and --export only if the main arm passes it (exit status 4 otherwise)")
    parser.add_argument("--table", default=None, help="also copy RESULTS.md here, keeping the sections other runs added to it (make mini: "
                        "mini/RESULTS.md); with --ablation, rewrite only its section of the paper's claims, after "
                        "each arm (make mini-ablation)")
    parser.add_argument("--quote", nargs="+", default=[], metavar="FILE",
                        help="with --ablation, rewrite the quote of the claims' fresh-seed table in each FILE, between "
                             "its two comment lines (make mini-ablation: README.md model_card.md; "
                             "lab/mini/claims_table.py)")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
