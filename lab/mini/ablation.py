"""The paper's claims in miniature: what `python -m lab.mini --ablation` trains, at one budget for every arm.

The paper (docs/method.md) claims that geometry helps, that geometry-aligned pre-training (stage 1) helps and that
gated fusion beats plain addition. Each claim is one pair of arms that differ in that ingredient only:

    geometry helps                 gap_gated_s0 − no_geometry_s0   (and gap_gated_s1 − no_geometry_s1)
    stage 1 helps                  gap_gated_s0 − gap_gated_stage2_only_s0
    gated beats add                gap_gated_s0 − gap_add_s0
    the objective helps (title)    gap_gated_s0 − gap_gated_no_gap_s0
                                   (and gap_gated_stage2_only_s0 − gap_gated_no_gap_s0: inside stage 2 alone)
    seed to seed (the noise)       gap_gated_s0 − gap_gated_s1, no_geometry_s0 − no_geometry_s1

**One design for every arm.** Every arm takes the same stage 0 (`--stage0`: the sixth release's frozen geometry encoder
and ViT), the same data and the same mix, and trains its LLM, mergers and fusions from random:

    stage 1   mini_stage1.yaml as written: 1,000 steps of 16 marker samples (the stage 1 of the shipped chain)
    stage 2   mini_stage2.yaml as the sixth release ran it, `ABLATION_STAGE2_STEPS` steps of 16 (cosine to 0 at
              the end, validation every 1,200 steps, the best by grounding Acc@0.25), every frame-selection record
              weighted by 20, bf16 autocast on the CPU

The budget is 7,200 stage-2 steps, the fifth release's stage 2: that run started near the floor (it continued the
fourth release's 800 stage-2 steps; validation grounding Acc@0.25 0 % at 1,200 steps) and its validation curve
(reports/mini/stage2.md) rose over the whole run and reached most of its score only late (grounding Acc@0.25 5.2 %
at 3,600, 8.3 % at 6,000, 6.3 % at 7,200; detection F1 3.9 → 6.3 → 7.6 %; CIDEr 0.81 → 1.19 → 1.11), so a shorter
schedule stops on the rising part. The first choice, 3,600 (the sixth release's stage-2 length), was a
continuation of 8,000 earlier stage-2 steps: the main arm trained at it from stage 1 (2026-11-26, validation only,
before any arm was evaluated) reached grounding Acc@0.25 4.2 %, detection F1 0.4 %, CIDEr 0.50 on the 96 validation
samples per task, the fifth release's run at about the same step, where the box tasks had barely begun; claims
measured there would compare arms that have not learned the tasks. The main arm is trained again at this budget; it
is not the shipped model, whose chain (stage 1 of 1,000, stage 2 of 800 + 7,200 + 3,600 steps) is longer.

**The same steps for the arm without stage 1.** `gap_gated_stage2_only_s0` trains no stage 1, so it gets the stage-1
budget as extra stage-2 steps (1,000 + 7,200 = 8,200, one cosine schedule): every arm makes the same number of
optimizer steps on the same number of samples (131,200), and the claim reads "1,000 steps of the marker task before the
tasks beat 1,000 more steps of the tasks". Its tokens are not equal: a stage-2 sample is longer than a marker sample
(8-view frame records, 60-token boxes), so it sees more tokens than the other arms, which favours the ablation: a
stage-1 gain measured this way is conservative. The Mini's stage-2 mix keeps the marker task (mini_stage2.yaml), so
this arm still trains the stage-1 task, inside stage 2: the claim measures a separate phase of it before the tasks,
not the task itself (the official stage 2 has no marker data; reports/mini/claims-in-miniature.md).

**The arm that never trains the objective.** `gap_gated_no_gap_s0` trains no stage 1 and no marker sample in stage 2
(lab/mini/arms.py `MARKER_FREE_STAGE2`: the mix without its marker samples, the other tasks as written), for the same
8,200 steps as the stage-2-only arm: the paper's title claim, geometry-aligned pre-training against none. Its marker
figure is not compared (it never learned the answer format). `gap_gated_no_gap_s1` is its second seed, trained when
the first seed's grounding difference lies within twice the seed-to-seed one.

**One arm at a time, each in git between machines.** `--run-state DIR` keeps every training stage's run state
(training/run_state.py) in `DIR/<arm>/<stage>` (bfloat16 moments and best model, as the sixth release's run): a
session commits DIR at its end, and the same command on a fresh machine continues the arm it stopped in, rebuilding
the finished stages and arms from their states (no steps left to train), and each arm's evaluation answers from
`DIR/<arm>/answers` (lab/mini/kept_answers.py: an arm is answered once). `--time-limit SECONDS` stops the whole
command by then (lab/mini/pipeline.py, `train_stage`). `--arms` trains some of the arms; their claims are written over
the run's arms, so with `--table` or `--quote` such a run is refused while DIR keeps another arm's answers (the rows
an earlier run answered would read "not evaluated yet": lab/mini/claims.py `check_no_claims_lost`): the arm in
flight continues without them, and the whole ablation, which rebuilds finished arms rather than training them,
writes the claims. Arms run in `ABLATION_ORDER`, so each stop of work ends with more claims answered.

**Fresh seeds fixed before any arm is evaluated.** The arms are compared on scenes of `ABLATION_FRESH_SEEDS`, seeds
no data of this package used (training, validation and test: seed 0; the release rule: 5601-5603,
lab/mini/fresh_seeds.py), 90 scenes each (about 1,000 samples per task), and on the test split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .arms import ARMS, Arm

# the training order of `--ablation`: the main arm, then one arm per claim, then the second seeds
ABLATION_ORDER = ("gap_gated_s0", "no_geometry_s0", "gap_gated_stage2_only_s0", "gap_add_s0", "gap_gated_s1",
                  "no_geometry_s1", "gap_gated_no_gap_s0")
ABLATION_STAGE2_STEPS = 7200  # the fifth release's stage 2 (module docstring: why this budget, and not 3,600)
# the sixth release's stage-2 settings beside its step count (its command in reports/mini/releases-five-and-six.md)
ABLATION_STAGE2_SETTINGS = ("cpu_bf16_autocast=true",)
# the run state of each stage: bfloat16 moments (the sixth release's run); the best model in float32, so that a stage rebuilt
# from its state is the folder its session evaluated (a best of the last step costs no bytes: training/run_state.py)
RUN_STATE_SETTINGS = ("run_state.moments_dtype=bfloat16",)
# the shared stage 0 of every arm: the sixth release's folder (commit 98942b5), named by the digest of its weight files
# (`weights_digest`); a later release in mini/gap-mllm-mini is another stage 0, refused (`check_stage0`)
ABLATION_STAGE0_COMMIT = "98942b5"
ABLATION_STAGE0_DIGEST = "4af5f91622201f4b27ce70033dceb7e92fa5ad8f394d0fd93cb6ded5920965f3"
# the training stages of an arm, in order (stage 0 is the run's, shared by every arm); the last is its final model's
ARM_STAGES = ("stage1", "stage2")
# scenes of these seeds judge the claims: never the data seed 0, never the release rule's 5601-5603 (FRESH_SEEDS)
ABLATION_FRESH_SEEDS = (6301, 6302, 6303)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: `arm` (with the ingredient) minus `without` on the same samples; `second` the same
    pair on the second seed, where both arms have one."""

    name: str
    arm: str
    without: str
    second: tuple[str, str] | None = None


CLAIMS = (
    Claim("geometry helps (VGGT features fused into the LLM)", "gap_gated_s0", "no_geometry_s0",
          second=("gap_gated_s1", "no_geometry_s1")),
    Claim("geometry-aligned pre-training (stage 1) helps", "gap_gated_s0", "gap_gated_stage2_only_s0"),
    Claim("gated fusion beats plain addition", "gap_gated_s0", "gap_add_s0"),
    Claim("the geometry-aligned objective (stage 1 and the marker task in stage 2) helps", "gap_gated_s0",
          "gap_gated_no_gap_s0"),
    Claim("the objective inside stage 2 alone helps", "gap_gated_stage2_only_s0", "gap_gated_no_gap_s0"),
)
# the seed-to-seed differences shown beside the claims: what retraining the same arm on another seed changes
SEED_PAIRS = (("gap_gated_s0", "gap_gated_s1"), ("no_geometry_s0", "no_geometry_s1"))


def ablation_arms() -> list[Arm]:
    return [ARMS[name] for name in ABLATION_ORDER]


def override_value(overrides, name: str) -> str | None:
    """The value the last of `overrides` ("key=value" recipe settings, in their order) gives `name`, or None."""
    found = None
    for value in overrides or ():
        key, _, setting = str(value).partition("=")
        if key.strip() == name:
            found = setting
    return found


def stage_steps(recipe_steps: int, overrides) -> int:
    """The `training.max_steps` a stage trains: the recipe's, then the last of `overrides` (in their order) that sets it."""
    steps = override_value(overrides, "training.max_steps")
    return int(steps) if steps is not None else recipe_steps


def stage2_steps(arm: Arm, stage1: int, stage2: int) -> int:
    """Stage-2 steps of `arm` in the ablation: `stage2`, plus the stage-1 steps for an arm without stage 1 (every arm
    makes the same number of optimizer steps; module docstring)."""
    return stage2 if arm.stage1 else stage1 + stage2


def arm_state_dir(root, arm: str, kind: str) -> Path:
    """Where the run state `root` (`--run-state DIR`) keeps the arm `arm`'s training stage `kind` (of `ARM_STAGES`)."""
    return Path(root) / arm / kind


def run_state_overrides(root, arm: Arm, kind: str) -> list[str]:
    """The settings that keep `arm`'s training stage `kind` (of `ARM_STAGES`) in `arm_state_dir`."""
    return [f"run_state.directory={arm_state_dir(root, arm.name, kind)}", *RUN_STATE_SETTINGS]


def weights_digest(folder) -> str:
    """sha256 over a model folder's `*.safetensors` files (their names and the sha256 of their bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def check_stage0(folder) -> None:
    """`--stage0 folder` of the ablation is the sixth release's (every arm, on every machine, the same encoders);
    a ValueError naming how to get it otherwise."""
    if folder is None or weights_digest(folder) != ABLATION_STAGE0_DIGEST:
        raise ValueError(
            f"--ablation takes every arm's frozen encoders from the sixth release (commit {ABLATION_STAGE0_COMMIT}): "
            f"--stage0 {folder if folder is not None else '(not given)'} is not that folder; write it with `mkdir -p "
            f"runs/stage0-sixth && git archive {ABLATION_STAGE0_COMMIT} mini/gap-mllm-mini modeling_gap_mllm | tar -x "
            f"-C runs/stage0-sixth` and give --stage0 runs/stage0-sixth/mini/gap-mllm-mini")
