"""`gap-mllm demo` (also `make demo`): GAP-MLLM-Mini, trained by this package, answering on a held-out room.

1. load the embedded GAP-MLLM-Mini (gap_mllm.mini.default_model_path; `--model` another folder or Hub id)
   through AutoModel / AutoProcessor with trust_remote_code=True, as a user would;
2. take a bundled SynthRooms example (a room no training split contains, with exact geometry) and run
   every task the model was trained on (`cli/tasks.py`, as `gap-mllm predict`): detection, grounding of a
   referring expression, captioning of an object's box, the marked-pixel point + label;
3. print each answer, its parsed result, the exact answer and its score (IoU, distance), and save one PNG
   per task into `--out`: predicted boxes next to the reference ones, with a legend. `--out` is new, empty or
   an earlier demo's (the output-folder rule of every writer, processing/output_folder.py): a folder of the
   user's files is refused before anything is loaded, never written over.

`--model tiny` runs the same on the tiny, randomly initialised test model (its weights are UNTRAINED, its
answers noise); its Hub folder is written to `--out` first. `gap-mllm demo --space` launches the Gradio
Space instead (same as `gap-mllm space`).
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoModel, AutoProcessor

from gap_mllm.mini.identity import is_gap_mllm_mini
from gap_mllm.processing.output_folder import claim_output_folder
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .command_arguments import DEMO_EXAMPLE, DEMO_OUT, SPACE_HOST, SPACE_PORT, TINY_SEED
from .command_arguments import add_demo_arguments as add_arguments  # noqa: F401 - the command's add_arguments
from .early_checks import DEMO_WRITER
from .example_reference import reference_lines, request_text
from .loading import MINI_TASKS, TINY
from .model_scores import RESULTS_FILE, held_out_scores
from .model_source import load_pretrained, model_source_of
from .scenes import EXAMPLE_SEEDS, can_reconstruct, reconstructed_scene, synthetic_scene, unmarked_geometry_images
from .space import main as space_main
from .tasks import TaskRequest, checked_inputs, run_task
from .visualize import save_scene_ply, write_visualisations

BANNER = "=" * 78
# The tasks GAP-MLLM-Mini is trained on (its spatial-QA answers would be untrained noise).
DEMO_TASKS = MINI_TASKS


def main(args: argparse.Namespace) -> int:
    if args.space:

        return space_main(argparse.Namespace(model=args.model, host=args.host or SPACE_HOST,
                                             port=args.port or SPACE_PORT,
                                             max_new_tokens=args.max_new_tokens, concurrency=1, max_queue=16,
                                             constrained=args.constrained))


    # new, empty or the demo's own (its marker): a folder of the user's files is refused, never written over
    out = claim_output_folder(args.out or DEMO_OUT, DEMO_WRITER)
    example = args.example or DEMO_EXAMPLE
    banner = []
    if args.model == TINY:

        seed = TINY_SEED if args.seed is None else args.seed
        folder = str(save_tiny_checkpoint(out / "gap-mllm-tiny", seed=seed))  # progress bars (stderr) end here
        banner = ["GAP-MLLM demo with a TINY, RANDOMLY INITIALISED model: the weights are UNTRAINED,",
                  "so the answers are noise. The demo shows the real pipeline end to end.",
                  f"Saved the Hub-style folder to {folder}"]
    else:
        folder = model_source_of(args)  # resolved and checked once: by the early check when it ran
        if is_gap_mllm_mini(folder):  # by its card, however --model names it (mini/identity.py)
            banner = ["GAP-MLLM demo with GAP-MLLM-Mini, trained by this package on SynthRooms (make mini).",
                      "It knows SynthRooms rooms only: the example below is a held-out one.", f"Model folder: {folder}"]
    checked = args.model != TINY  # the tiny folder was just written: checked once, at its first load
    model = load_pretrained(AutoModel.from_pretrained, folder, "--model", checked=checked,
                            trust_remote_code=True).eval()
    processor = load_pretrained(AutoProcessor.from_pretrained, folder, "--model", checked=True, trust_remote_code=True)
    scene = synthetic_scene(EXAMPLE_SEEDS[example])
    # Printed as one block after the saving and loading progress bars, so they never interleave.
    print("\n".join([BANNER, *banner, BANNER]))
    print(f"Loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{type(processor).__name__} through AutoModel / AutoProcessor with trust_remote_code=True")
    if model.config.use_geometry:
        print(f"Fusion: {model.config.geometry_fusion_config.method}, VGGT layers per level "
              f"{model.config.level_geometry_layers} (main, DeepStack 0-2)")
    print(f"Example: {example}, {len(scene.views)} views of {scene.views[0].size[0]}x{scene.views[0].size[1]} px, "
          f"objects seen: {', '.join(scene.reference_labels)}", flush=True)
    # the figures of the decoding that runs (None for a folder without evaluation_results.json: the tiny model)
    scores = held_out_scores(folder, constrained=args.constrained)
    if scores is not None:
        print(f"Each answer is followed by the model's held-out score of the task next to a trivial baseline "
              f"({Path(folder) / RESULTS_FILE}).")
    geometry = None  # the room's frames as VGGT reads them, from the first request that painted no marker into them
    for task in DEMO_TASKS:
        images = run_demo_task(model, processor, scene, task, out, args.max_new_tokens, scores,
                               constrained=args.constrained)
        geometry = images if geometry is None else geometry
    run_demo_geometry(model, processor, scene, out, scores, images=geometry)
    if args.model == TINY:
        print("\nReminder: untrained weights; the default model (--model mini) gives real answers.")
    sys.stdout.flush()
    return 0


def run_demo_task(model, processor, scene, task: str, out: Path, max_new_tokens=None, scores=None,
                  constrained: bool = True):
    """One task on the example: the answer, its parsed form, the exact answer with a score, the model's held-out
    score of the task against a trivial baseline (`scores`, a `model_scores.HeldOutScores`, if any), a PNG.
    Returns the room's frames as VGGT reads them (`[1, S, 3, Hg, Wg]`) from the request's processor output, or None
    when the task painted its marker into them (scenes.py `unmarked_geometry_images`)."""

    given = scene.example_inputs.get(task, {})
    request = TaskRequest(task, query=given.get("query"), box=given.get("box") if task == "captioning" else None,
                          marker=given.get("marker"))
    inputs = checked_inputs(processor, scene.views, request)
    result = run_task(model, processor, scene.views, request, max_new_tokens=max_new_tokens, constrained=constrained,
                      inputs=inputs)
    tokens = [h * w for h, w in result.token_grids]
    print(f"\n--- {task}: {request.spec.title}; {len(scene.views)} views, {tokens[0]} visual tokens per view")
    lines = [("input", request_text(request)), ("answer", result.answer), ("parsed", result.summary()),
             *reference_lines(scene, request, result)]
    for name, value in lines:
        if value:
            print(f"{name:<7}: " + value.replace("\n", "\n" + " " * 9))
    if scores is not None:
        print(scores.line(task))
    written = write_visualisations(scene, result, out / task, formats=("png",))
    for kind, path in written.items():
        print(f"saved  : {path}")
    for note in written.notes:  # what the picture's legend says of an answer it cannot draw
        print(f"note   : {note}")
    return unmarked_geometry_images(inputs, request.marker)


def run_demo_geometry(model, processor, scene, out: Path, scores=None, images=None) -> None:
    """The point cloud the geometry encoder's camera and depth heads reconstruct from the example's views (what
    `gap-mllm predict --save-dir` writes for a user's own frames), as a PLY next to the exact one, with the
    encoder's held-out score; a model without the heads says so. `images`: the views as VGGT reads them, when a
    request's processor output has them (`run_demo_task`); else the processor makes them."""

    print(f"\n--- geometry: the scene reconstructed by the geometry encoder's depth and camera heads from the "
          f"{len(scene.views)} views")
    if not can_reconstruct(model):
        print("not run: this model's geometry encoder has no camera and depth heads")
        return
    estimated = reconstructed_scene(model, processor, scene.views, images=images)
    if estimated.points is None:
        print(f"no cloud: {estimated.note}")
        return
    folder = out / "geometry"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"cloud  : {len(estimated.points):,} points, depth fused with the estimated cameras in frame 0's camera "
          "(normalised scale, not metres)")
    print(f"saved  : {save_scene_ply(folder / 'reconstructed.ply', estimated, [])}")
    print(f"saved  : {save_scene_ply(folder / 'exact.ply', scene, [])} (the room's exact geometry, metres)")
    line = scores.geometry_line() if scores is not None else None
    if line:
        print(line)
