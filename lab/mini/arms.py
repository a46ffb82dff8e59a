"""The models GAP-MLLM-Mini's pipeline trains and compares (`python -m lab.mini --arms ...`): the main arm, which is
shipped as the embedded default, and the ablation and vision-tower arms. Light on purpose: `python -m lab.mini
--help` reads it."""

from __future__ import annotations

from dataclasses import dataclass

from gap_mllm.mini.identity import SHIPPED_ARM


@dataclass(frozen=True)
class Arm:
    """One model of the comparison: fusion, geometry on/off, stage 1 on/off, seed, and how the ViT starts:
    "pretrained" (the stage-0 vision output, frozen: the official policy), "random_unfrozen" (trained with
    the LLM from random) or "random_frozen" (the naive run of the training notes). `stage1_only` arms stop
    after stage 1 (the vision-tower decision is read from their validation curves). `marker_task` False: the arm
    never trains the geometry-aligned objective (the marker task): no stage 1 and no marker samples in stage 2
    (`MARKER_FREE_STAGE2`)."""

    name: str
    fusion_method: str = "gated"
    use_geometry: bool = True
    stage1: bool = True
    seed: int = 0
    vision: str = "pretrained"
    stage1_only: bool = False
    marker_task: bool = True

    def __post_init__(self):
        if not self.marker_task and self.stage1:
            raise ValueError(f"arm {self.name}: stage 1 is the marker task; an arm without it has no stage 1")


MARKER_TASK = "reconstruction"  # the marker task's name in a recipe's data.tasks
# stage 2 of an arm without the marker task: mini_stage2.yaml's mix without its marker samples, the other tasks'
# caps, repeats and weights as written; its validation leaves out the task it never trains
MARKER_FREE_STAGE2 = ("data.tasks=[grounding_stage1, grounding_stage2, detection, captioning]",
                      "data.task_max_samples={captioning: 2500}",
                      "evaluation.tasks=[grounding, detection, captioning]")


def stage2_arm_settings(arm: Arm) -> list[str]:
    """The stage-2 recipe settings that make `arm` differ from the main arm's stage 2 (none for most arms)."""
    return [] if arm.marker_task else list(MARKER_FREE_STAGE2)


def fresh_model_settings(arm: Arm, stage0) -> list[str]:
    """The recipe settings of `arm`'s freshly initialised model (its stage 1, or its stage 2 without one): the Mini
    with the arm's fusion, geometry and seed, its frozen encoders taken from the stage-0 folder `stage0`."""
    encoders = "[geometry_encoder, vision_tower]" if arm.vision == "pretrained" else "[geometry_encoder]"
    settings = ["model.tiny=mini", f"model.fusion_method={arm.fusion_method}",
                f"model.use_geometry={str(arm.use_geometry).lower()}", f"model.seed={arm.seed}",
                f"model.encoders_from={stage0}", f"model.encoders={encoders}", f"training.seed={arm.seed}"]
    if arm.vision == "random_unfrozen":
        settings += ["freezing.freeze_vision_tower=false", "learning_rates.vision_tower_lr=null", "cache.enabled=false"]
    return settings


MAIN_ARM = Arm(SHIPPED_ARM)  # its row's name is the one the front ends read (gap_mllm.mini.identity)
ABLATION_ARMS = (
    MAIN_ARM,
    Arm("gap_gated_s1", seed=1),
    Arm("gap_gated_stage2_only_s0", stage1=False),
    Arm("gap_add_s0", fusion_method="add"),
    Arm("no_geometry_s0", use_geometry=False),
    Arm("no_geometry_s1", use_geometry=False, seed=1),
    Arm("gap_gated_no_gap_s0", stage1=False, marker_task=False),
)
# trained on request (`--arms`) when the first seed's claim needs its second before a verdict (lab/mini/ablation.py)
ON_REQUEST_ARMS = (Arm("gap_gated_no_gap_s1", stage1=False, marker_task=False, seed=1),)
# The vision-tower decision (mini/README.md): stage 1 with the ViT pretrained + frozen (MAIN_ARM) vs these.
VISION_ARMS = (
    Arm("vit_random_unfrozen_s0", vision="random_unfrozen", stage1_only=True),
    Arm("vit_random_frozen_s0", vision="random_frozen", stage1_only=True),
)
ARMS = {arm.name: arm for arm in ABLATION_ARMS + ON_REQUEST_ARMS + VISION_ARMS}
