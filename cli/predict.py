"""`gap-mllm predict`: one task on a few frames (or a folder of frames, a short video, or a bundled synthetic
scene); prints the answer and its parsed form and can save it with pictures (answer.json, PNG with boxes, a legend
and gate maps, PLY scene; a GLB scene with `--formats ... glb`, which needs trimesh: the glb extra).

    gap-mllm predict --model org/gap-mllm --images f0.jpg f1.jpg f2.jpg --task detection --out out/
    gap-mllm predict --model org/gap-mllm --images myframes/ --task detection   # its images, sorted by name
    gap-mllm predict --model DIR --images clip.mp4 --task grounding --query "the chair by the window"
    gap-mllm predict --example "synthetic room A" --task grounding       # the embedded GAP-MLLM-Mini
    gap-mllm predict --model tiny --example "synthetic room A" --task reconstruction --marker 1 120 90

`--model` defaults to "mini", the embedded GAP-MLLM-Mini trained by this package ("tiny": the untrained test
model). On a bundled example, a task input that is not given (query, box, marker) is the example's own, and the
answer is printed next to the exact one with the model's held-out score of the task against a trivial baseline
(from the model folder's evaluation_results.json, the row of the decoding that ran; a folder without one prints
none). On other frames a GAP-MLLM-Mini (known by its model card, however `--model` names it: mini/identity.py)
prints one line first: it knows SynthRooms rooms only.

`--out` is new, empty or an earlier predict's (the output-folder rule of every writer,
processing/output_folder.py): a folder of the user's files, the working folder and one that cannot be written are
refused before the model loads. `--marker VIEW X Y` names a pixel of that frame as a photo viewer shows it
(original pixels, EXIF orientation applied), whatever size the frames are resized to for the model, and is checked
against the frames as read, images, a GIF's or a video's sampled frames alike, before the model loads. The request is
checked whole with the model's config and processor before its weights load (cli/tasks.py `check_request`): a query
holding the tokenizer's own tokens, a frame the processor cannot read, a query too long for the model's context, a
request whose weights and frames would not fit in the memory left (one line naming the frame count that would).

`--box` is the object's box in the first camera's OpenCV frame, its angles as the model writes them (an upright
object has pitch π/2 less the camera's downward tilt and roll ±π); 6 numbers stand for an upright object as this
model's cameras see it: the typical tilt of its training cameras, which its folder's box_angles.json records (the
Mini's: 0.33 rad down, so yaw pitch roll 3.14 1.24 3.14), else a level camera (processing/box_angles.py
`upright_angles`). Angles that no box the model was trained on had (its folder's box_angles.json) get one line
saying so, naming the convention.

`--images` takes image files, one video / GIF, or folders: a folder stands for its image files sorted by file name,
sampled evenly down to `--max-frames` when it holds more (as a video is). A file or folder that cannot be used is one
line naming its full path and what is wrong, exit status 2.

Exit status (`EXIT_STATUS_HELP`): 0 when the answer parsed, 2 for a mistake in the command (checked before the
model loads where it can be: cli/early_checks.py), 3 (`PARSE_FAILURE_STATUS`) when the model's answer did not parse
cleanly as the task's answer or is written in another task's format (cli/tasks.py `task_answer`): the raw answer and
the parse problem are still printed (and saved in answer.json with `--out`), so a script can tell.

With `--out`, the user's own frames are also reconstructed when the model's geometry encoder has VGGT's
camera and depth heads (GAP-MLLM-Mini has them): the depth fused with the estimated cameras is a coloured point
cloud in frame 0's camera (normalised scale, not metres), written into the GLB / PLY with the answer's boxes,
and the boxes are drawn with the estimated camera (tubes in the GLB; in the PLY, points sampled along their edges,
so the output gives the PLY's vertex count next to the cloud's). A model without heads gets no cloud, and the output
says why.

Generation stops at the end of the answer (the task's stop rule) or at the task's token budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gap_mllm.mini.identity import is_gap_mllm_mini
from gap_mllm.processing.box_angles import read_box_angles, unseen_angles_note, upright_angles
from gap_mllm.processing.output_folder import claim_output_folder

from .command_arguments import DEFAULT_SAVE_FORMATS, EXIT_STATUS_HELP, PARSE_FAILURE_STATUS  # noqa: F401 - light
from .command_arguments import add_predict_arguments as add_arguments  # noqa: F401 - the command's add_arguments
from .early_checks import PREDICT_WRITER, check_output_folder
from .example_reference import reference_lines, request_text
from .loading import (
    MINI_TASKS,
    MINI_UNTRAINED_TASK_NOTE,
    TINY,
    UNTRAINED_NOTICE,
    load_model_and_processor,
    load_model_source,
    resolve_model_source,
)
from .model_scores import held_out_scores
from .scenes import (
    CAMERA_ESTIMATED,
    EXAMPLE_SEEDS,
    POINT_CLOUD_HOWTO,
    can_reconstruct,
    reconstructed_scene,
    scene_from_frames,
    synthetic_scene,
    unmarked_geometry_images,
)
from .task_request import example_request
from .tasks import FramesRefused, TaskRequest, check_request, run_task
from .uploads import CLI_WORDS, UploadError, cli_limits, original_size, read_frames
from .uploads import frame_paths as _frame_paths

PREDICT_DEVICE = "cpu"  # where `load_model_and_processor` puts the model (its default)
MINI_OWN_FRAMES_NOTE = ("note: this --model is GAP-MLLM-Mini, which knows SynthRooms rooms only: on other frames (real "
                        'photos included) its answers are meaningless; try --example "synthetic room A"')


def main(args: argparse.Namespace) -> int:
    try:
        # as the early check does, for a caller that skipped it: a folder of the user's is refused, never written
        check_output_folder(args.save_dir, "--out", PREDICT_WRITER)
        example, frames = {}, None
        if args.example:
            scene = synthetic_scene(EXAMPLE_SEEDS[args.example])
            example = scene.example_inputs.get(TaskRequest(task=args.task).task, {})
        else:
            paths = frame_paths(args.images, args.max_frames)
            frames = read_frames(paths, cli_limits(paths, args.max_frames), words=CLI_WORDS)
            scene = scene_from_frames(frames.views)
        # the folder or Hub id --model names, resolved once: the early check's when it ran, checked at the load
        recorded = getattr(args, "model_source", None)
        source = recorded or (None if args.model == TINY else resolve_model_source(args.model))
        # its record of its boxes' angles (processing/box_angles.py): a 6-number box takes its upright angles
        angles = read_box_angles(source) if source is not None else None
        request = example_request(args.task, example, query=args.query, box=args.box, marker=args.marker,
                                  upright=upright_angles(angles))
        # the marker: a view of these frames and a pixel of that frame as shown (original pixels, upright),
        # then moved onto the resized frame the model gets
        marked = original_size(frames.originals, request.marker[0]) if frames and request.marker else None
        if not getattr(args, "request_validated", False):  # the early check validated it (cli/early_checks.py)
            request.validate(len(scene.views), marked or scene.views[0].size)
        if frames is not None:  # the frames as read: a video's count and size are known only now (no early decode)
            request.check_given(len(frames.views), marked)
        if marked is not None:
            request.marker = frames.on_model_frames(request.marker)
        # a box of an orientation no training box had (its folder's record, processing/box_angles.py): one line
        unseen = None
        if "box" in request.used_inputs() and request.box is not None and source is not None:
            unseen = unseen_angles_note(request.box, angles)
    except (UploadError, ValueError) as error:
        print(f"gap-mllm predict: error: {error}", file=sys.stderr)
        return 2
    if unseen:
        print(unseen, file=sys.stderr, flush=True)

    # the Mini by what its card says (mini/identity.py), however --model names it: "mini", its folder, a copy
    is_mini = source is not None and is_gap_mllm_mini(source)
    if is_mini and not args.example:
        print(MINI_OWN_FRAMES_NOTE, file=sys.stderr, flush=True)
    if is_mini and request.task not in MINI_TASKS:
        print(MINI_UNTRAINED_TASK_NOTE.format(task=request.task), file=sys.stderr, flush=True)
    # the config and the processor: the request is checked whole before the weights
    found = load_model_source(args.model, source=source, checked=recorded is not None)
    try:
        # the one processor call of the request: it measures the prompt against the context, then is generated from
        inputs = check_request(found.config, found.processor, scene.views, request, args.max_new_tokens,
                               device=PREDICT_DEVICE, quantize=args.quantize)
    except FramesRefused as error:
        named = f"{paths[0]}: {frames.originals[0][0]}x{frames.originals[0][1]} px" if frames else "the example's frames"
        print(f"gap-mllm predict: error: {named}, {error.size[0]}x{error.size[1]} px as the model gets it: the model's "
              f"processor cannot read it ({error.reason}); crop or resize the frames", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"gap-mllm predict: error: {error}", file=sys.stderr)
        return 2
    # progress bars (stderr) end here
    model, processor, is_tiny = load_model_and_processor(args.model, PREDICT_DEVICE, found=found,
                                                         quantize=args.quantize)
    if is_tiny:
        print(UNTRAINED_NOTICE, file=sys.stderr, flush=True)
    result = run_task(model, processor, scene.views, request, max_new_tokens=args.max_new_tokens,
                      compile_decoding=args.compile_decoding,
                      constrained=args.constrained, inputs=inputs)
    comparison = _comparison(found, args.constrained, scene, request, result) if args.example else {}
    answer = {**result.to_dict(), **comparison}
    report = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"task       : {result.task} on {len(scene.views)} frame(s)")
        if args.example and request_text(request):  # detection has no input: no empty line
            print(f"input      : {request_text(request)}")
        print("answer     : " + _indented(result.answer))
        print("parsed     : " + _indented(result.summary()))
        for name, text in comparison.get("reference", {}).items():
            print(f"{name:<11}: " + _indented(text))
        if comparison.get("held_out"):
            print(comparison["held_out"])
        if result.gates:
            print("mean gate  : " + ", ".join(f"level {i}: {g.mean():.3f}" for i, g in enumerate(result.gates)))
    if args.save_dir:
        _save(args, model, processor, scene, result, report, answer, inputs)
    return _exit_status(result)


def frame_paths(images: list[str], max_frames: int) -> list:
    """`uploads.frame_paths`, the line saying that a folder's images are sampled down printed on stderr."""
    return _frame_paths(images, max_frames, report=lambda line: print(line, file=sys.stderr))


def _exit_status(result) -> int:
    """0, or `PARSE_FAILURE_STATUS` with one line on stderr when the answer did not parse cleanly (its parser's
    `reason`; the answer and the problem were printed already)."""
    reason = getattr(result.parsed, "reason", None)
    if reason is None:
        return 0
    print(f"gap-mllm predict: the answer did not parse as a {result.task} answer ({reason}); exit status "
          f"{PARSE_FAILURE_STATUS}", file=sys.stderr)
    return PARSE_FAILURE_STATUS


ANSWER_FILE = "answer.json"
PLY_PART_WORDS = {"box edges": "sampled along the answer's box edges", "answer point": "for the answer's point"}


def _comparison(found, constrained: bool, scene, request, result) -> dict:
    """On a bundled room: `{"reference": {"truth": ..., "score": ...}, "held_out": line}` (entries that do not
    apply left out; no held-out line for a model folder without evaluation_results.json). `found`: the model's
    `ModelSource` (its folder: the held-out scores of the decoding that ran, `constrained` or not)."""

    comparison = {"reference": dict(reference_lines(scene, request, result))}
    scores = None if found.is_tiny else held_out_scores(found.source, constrained)
    if scores is not None:
        comparison["held_out"] = scores.line(request.task)
    return comparison


def _save(args, model, processor, scene, result, report, answer: dict, inputs=None) -> None:
    """answer.json (what --json prints: the raw answer, the parsed one, the parse problem), the pictures, and for
    uncalibrated frames the point cloud the model's heads reconstruct, if it has them (from the request's own VGGT
    input, `inputs`: the processor output the answer was generated from, when it holds the unmarked frames)."""
    from .visualize import frame_zero_note, ply_parts, write_visualisations

    formats = tuple(args.formats or DEFAULT_SAVE_FORMATS)  # --formats not given: what a plain install writes
    three_d = {"glb", "ply"} & set(formats)
    # checked again now (the model ran meanwhile), made and marked as predict's: the user's files are never written
    claim_output_folder(args.save_dir, PREDICT_WRITER, option="--out")
    answer_file = Path(args.save_dir) / ANSWER_FILE
    answer_file.write_text(json.dumps(answer, indent=2) + "\n")
    print(f"saved answer: {answer_file}", file=report)
    if not scene.calibrated and can_reconstruct(model):
        images = unmarked_geometry_images(inputs, result.marker)  # the request's own VGGT input, when unmarked
        scene = reconstructed_scene(model, processor, scene.views, images=images)
    written = write_visualisations(scene, result, args.save_dir, formats=formats)
    for kind, path in written.items():
        print(f"saved {kind}: {path}", file=report)
    for kind, why in written.skipped.items():
        print(f"not saved {kind}: {why}", file=report)
    for note in written.notes:  # what the picture's legend says of an answer it cannot draw
        print(f"note: {note}", file=report)
    if scene.calibrated:
        return
    if scene.camera == CAMERA_ESTIMATED:
        kinds = " and ".join(sorted(k for k in three_d if k in written))
        where = f"in the {kinds}" if kinds else "not written (--formats has no glb or ply)"
        print(f"point cloud: {len(scene.points):,} points {where} (your frames' depth fused with the cameras "
              "the model's heads estimated, in frame 0's camera; normalised scale, not metres, so the answer's "
              "metric boxes need not match it in size); "
              + (frame_zero_note(scene) or "boxes drawn with the camera VGGT's heads estimated for frame 0")
              + _ply_vertices(ply_parts(scene, result.boxes, result.point), written), file=report)
        return
    note = "note: uncalibrated frames: boxes are drawn on frame 0 with an assumed 60° pinhole; no point cloud"
    print(note + (f" ({scene.note})" if scene.note else f". {POINT_CLOUD_HOWTO}"), file=report)


def _ply_vertices(parts: dict, written) -> str:
    """"; the ply holds N vertices: ..." when the PLY written holds more than the point cloud (`parts`: what
    `visualize.ply_parts` says it holds: the points sampled along the answer's box edges, its point); "" otherwise.
    The GLB draws boxes as tubes, not points."""
    if "ply" not in written:
        return ""
    counts = {part: len(xyz) for part, (xyz, _) in parts.items()}
    extra = [f"{count:,} {PLY_PART_WORDS[part]}" for part, count in counts.items() if part != "point cloud"]
    if not extra:
        return ""
    return (f"; the ply holds {sum(counts.values()):,} vertices: these {counts.get('point cloud', 0):,} points + "
            + " + ".join(extra))


def _indented(text: str) -> str:
    """Continuation lines aligned under the first (after the 13-character field names)."""
    return text.replace("\n", "\n" + " " * 13)
