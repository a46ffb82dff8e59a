"""Write the trained GAP-MLLM-Mini as a Hub folder: weights (bfloat16 on disk), remote code, processor,
tokenizer, and a model card whose figures come from the checkpoint and the pipeline's results; with the results, the
orientations of its training boxes too (box_angles.json, processing/box_angles.py: `gap-mllm predict` notes a box
whose angles none of them had) and what it was trained on (gap_mllm_training.json, `mini_training_record`: the scenes
`gap-mllm evaluate` warns about, and the lineage a fine-tune's card states).

The weights are stored in bfloat16 to keep the folder under 50 MB (about 15 M parameters); the config
says float32, so `from_pretrained` computes in float32 and the evaluation table is measured on this very
folder (the pipeline evaluates the exported weights, not the float32 training copy).

The folder is written beside `dest` and renamed into place when complete (processing/output_folder.py): a kill
leaves the earlier folder or none, never weights without a processor; a folder the exporting command did not
write is refused unless `overwrite`.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import torch

from gap_mllm import GapMllmProcessor
from gap_mllm.loading import load_model
from gap_mllm.mini.default_model import SHIPPED_DIR
from gap_mllm.mini.identity import MINI_MODEL_NAME
from gap_mllm.processing.box_angles import box_angle_record, write_box_angles
from gap_mllm.processing.dataset_identity import KIND_SYNTHROOMS, TRAINING_RECORD
from gap_mllm.processing.held_out import generator_fingerprint
from gap_mllm.processing.output_folder import MARKER, writing_output_folder
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.samples import camera_box_angles, camera_tilts

from .ablation import ABLATION_FRESH_SEEDS, weights_digest
from .card import mini_model_card
from .code_links import write_code_links
from .fresh_seeds import FRESH_SEEDS
from .pipeline_settings import BUDGETS

STORAGE_DTYPE = torch.bfloat16
MAX_FOLDER_BYTES = 50 * 1024 * 1024


def parameter_counts(model) -> dict[str, int]:
    """Parameters of each part of a GAP-MLLM (counted on the loaded model)."""
    parts = {"LLM": model.model.language_model, "Qwen ViT (with its mergers)": model.model.visual}
    if model.config.use_geometry:
        parts["geometry encoder (VGGT aggregator + camera and depth heads)"] = model.geometry_encoder
        parts["geometry mergers + fusions"] = model.geometry_fusion
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


# the marker of a folder `--export` wrote (processing/output_folder.py): a fixed name, which the exported folders carry
EXPORT_COMMAND = "gap-mllm mini --export"
# what the box-angle record of an export was read from (`mini_box_angles`)
BOX_ANGLES_SOURCE = ("every object's box in the camera of every frame of the {scenes} training scenes of SynthRooms' "
                     "mini preset (gap-mllm synth --preset mini)")


def export_default(model_dir, dest, results: dict | None = None, max_shard_size: str = "15MB",
                   with_remote_code: bool | None = None, *, command: str = EXPORT_COMMAND, option: str = "--export",
                   overwrite: bool = False) -> Path:
    """Copy the model of `model_dir` to `dest` in bfloat16 storage with its processor and a model card.

    `with_remote_code`: keep the remote-code files `save_pretrained` writes (a complete Hub folder). Default: yes; the
    embedded default's own folder (`SHIPPED_DIR`) gets them as links into the package instead of copies, equally
    complete (lab/mini/code_links.py); False writes no code.
    `command` / `option`: who writes `dest` and how the user named it (its marker, the refusal's words);
    `overwrite`: replace a non-empty `dest` that `command` did not write.

    Raises:
        OutputFolderRefused: `dest` holds files `command` did not write, and no `overwrite`.
    """
    dest = Path(dest)
    code = ("links" if dest.resolve() == SHIPPED_DIR.resolve() else "copies") if with_remote_code in (None, True) else None
    with writing_output_folder(dest, command, overwrite=overwrite, option=option) as staging:
        _write_export(model_dir, staging, results, max_shard_size, code, dest)
    return dest


def _write_export(model_dir, dest: Path, results: dict | None, max_shard_size: str, code: str | None,
                  final: Path) -> None:
    """The files of `export_default`, into the empty folder `dest` (the staging sibling of `final`); `code`: the
    remote code as "copies" (`save_pretrained`'s), "links" into the package (lab/mini/code_links.py) or None (none)."""
    model = load_model(model_dir, dtype=torch.float32)
    processor = GapMllmProcessor.from_pretrained(model_dir)
    counts = parameter_counts(model)
    state = {name: tensor.to(STORAGE_DTYPE) for name, tensor in model.state_dict().items()}
    model.config.dtype = "float32"  # compute dtype on load; storage is bfloat16 (module docstring)
    model.save_pretrained(dest, state_dict=state, max_shard_size=max_shard_size)
    processor.save_pretrained(dest)
    if code is None:
        for path in dest.glob("*.py"):
            path.unlink()
    elif code == "links":  # the committed folder: no second copy of the package in git
        write_code_links(dest, link_folder=final)
    (dest / "README.md").write_text(mini_model_card(model.config, counts, results), encoding="utf-8")
    if results is not None:
        (dest / "evaluation_results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        if results.get("budget") in BUDGETS:  # the orientations of its training boxes (processing/box_angles.py)
            write_box_angles(dest, mini_box_angles(BUDGETS[results["budget"]].scenes[0]))
            record = mini_training_record(BUDGETS[results["budget"]].scenes, weights_digest(dest))
            (dest / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if size > MAX_FOLDER_BYTES:
        raise RuntimeError(f"{dest} is {size / 2**20:.1f} MiB, over the {MAX_FOLDER_BYTES / 2**20:.0f} MiB limit of the embedded default")


def mini_box_angles(train_scenes: int) -> dict:
    """The box-angle record (processing/box_angles.py) of the Mini's training data: every object's box in every
    frame's camera of the first `train_scenes` scenes of SynthRooms' mini preset (its train split: `gap-mllm synth`
    numbers it first), with those frames' typical camera tilt; laid out without rendering (about half a second a
    scene)."""
    generator = SynthRooms(synth_config("mini"))
    scenes = [generator.layout_scene(index) for index in range(train_scenes)]
    angles = np.concatenate([camera_box_angles(scene) for scene in scenes])
    tilts = np.concatenate([camera_tilts(scene) for scene in scenes])
    return box_angle_record(angles, BOX_ANGLES_SOURCE.format(scenes=train_scenes), camera_tilts=tilts)


# a seed none of the Mini's data used (training, validation and test: 0; the release rule's FRESH_SEEDS; the claims'
# ABLATION_FRESH_SEEDS): the seed of the documented evaluation commands (README.md, docs/evaluate-at-scale.md)
HELD_OUT_SEED = 7777
MINI_LICENSE = "apache-2.0"  # trained from random initialisation by this package: no third-party weights


def mini_training_record(scenes: tuple[int, int, int], weights_sha256: str) -> dict:
    """The Mini's `gap_mllm_training.json`: what `gap-mllm train` records of its runs (training/run.py
    `training_record`), for the pipeline's stages together: the SynthRooms scenes they trained on (`trained_scenes`,
    the `scenes[0]` training scenes of the mini preset's seed 0; `gap-mllm evaluate` warns when they are scored),
    the splits and seeds the pipeline used, a seed none used (`HELD_OUT_SEED`), and the lineage a fine-tune carries
    to its card (`lineage`: no third-party weights; the model's name, version and licence)."""
    train, val, test = scenes
    config = synth_config("mini")
    generator = SynthRooms(config)

    def span(first: int, count: int) -> str:
        return f"{generator.scene_id(first)} to {generator.scene_id(first + count - 1)}"

    try:
        made_by = f"gap-mllm {package_version('gap-mllm')}"
    except PackageNotFoundError:  # a checkout run without installing: the weights' digest alone names it
        made_by = "gap-mllm"
    return {
        "model_name": MINI_MODEL_NAME, "version": f"{made_by}, weights sha256 {weights_sha256[:12]}",
        "license": MINI_LICENSE,
        "stage": "stages 0-2 of the Mini's pipeline (python -m lab.mini, mini/README.md)",
        "tasks": ["grounding", "detection", "captioning", "reconstruction"],
        "data": {"kind": KIND_SYNTHROOMS, "folder": "data",
                 "name": f"SynthRooms (synthetic rooms from gap-mllm synth --preset mini, seed {config.seed}; scenes: "
                         f"{train} train, {val} val, {test} test)"},
        "started_from": "random initialisation",
        "synthrooms": {"preset": "mini", "seed": config.seed, "train": span(0, train),
                       "validation (choices only)": span(train, val), "test (results only)": span(train + val, test),
                       "judged_on_seeds": sorted(FRESH_SEEDS + ABLATION_FRESH_SEEDS), "held_out_seed": HELD_OUT_SEED},
        "lineage": {"origin": None, "weights": []},
        "trained_scenes": [{"generator": generator_fingerprint(config.to_dict()),
                            "scenes": [generator.scene_id(index) for index in range(train)]}],
    }


def export_is_complete(folder: Path) -> bool:
    """`folder` holds a whole export: its marker (only a finished folder is renamed into place), or, written before
    the marker existed, the model card, which the export writes after the weights and the processor."""
    return (folder / MARKER).is_file() or ((folder / "config.json").is_file() and (folder / "README.md").is_file())
