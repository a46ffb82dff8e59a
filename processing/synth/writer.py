"""Write SynthRooms scenes as a dataset: ScanNet posed_images + official annotation JSONs.

    <out>/scannet/posed_images/<scene_id>/{00000.jpg, 00000.png, 00000.txt, ..., intrinsic.txt,
                                           depth_intrinsic.txt, axis_align_matrix.txt}
    <out>/annotations/<task file>.json      one per task and split (annotation_files.py names)
    <out>/synthrooms/<scene_id>.json        full ground truth: room, objects (box, category, colour,
                                            texture), generator config and seed
    <out>/synthrooms/instance/<scene_id>/<frame>.png   uint16 instance masks: object index + 1 for
                                            objects, 0 floor, 65535 walls, 65534 ceiling
                                            (`read_instance_mask` maps them back to scene ids)
    <out>/synthrooms/dataset_info.json      config, scene ids per split, record counts

Scene i depends only on (seed, i); records of scene i use their own random stream, so writing
scenes 0..N-1 gives the same records whatever N and whatever order.

`write_dataset_folder` is what the commands use (gap-mllm synth, python -m lab.mini): the data are written beside the
folder and renamed into place when complete (processing/output_folder.py), so a killed run leaves no half data
root; a folder of other files or of other SynthRooms scenes is refused unless the caller allows overwriting; the
same scenes written before are written again.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image

from ..annotation_files import ANNOTATIONS_SUBDIR, annotation_file_name
from ..dataset_identity import SYNTHROOMS_INFO, parse_dataset_info
from ..output_folder import NotAnOwnerRecord, OwnerCheck, read_owner_bytes, writing_output_folder
from ..scannet_layout import posed_images_dir, write_frame, write_scene_meta
from ..tasks import LiveMapping, in_data_order, package_tasks
from .allocator import keep_large_allocations_in_heap
from .generator import SynthRooms, scene_count_problem, scene_size_problem
from .samples import scene_records
from .scene import SynthScene

RECORDS_STREAM = 1  # random stream of the language / sample choices (stream 0 is the layout)
# task -> the config field with the frame count of its samples (a task module's: `synth_frames`), in the order of the
# tasks' data
TASK_FRAMES = LiveMapping(lambda: _task_frames({
    task.name: task.synth_frames for task in package_tasks(stages=True) if task.synth_frames is not None}))


def _task_frames(frames: dict[str, str]) -> dict[str, str]:
    return {name: frames[name] for name in in_data_order(frames)}


# uint16 PNG values of the room's structure (scene ids: floor 0, wall -1, ceiling -2, objects index + 1).
_UINT16_OF_STRUCTURE = {-1: 65535, -2: 65534}


def encode_instance_mask(instance: np.ndarray) -> np.ndarray:
    """Scene instance ids `[H, W]` (objects index + 1, floor 0, wall -1, ceiling -2) → uint16 PNG values."""
    encoded = instance.astype(np.int64)
    for structure, value in _UINT16_OF_STRUCTURE.items():
        encoded[instance == structure] = value
    if encoded.min() < 0 or encoded.max() > 65535:
        raise ValueError("instance ids do not fit the uint16 mask encoding")
    return encoded.astype(np.uint16)


def read_instance_mask(path) -> np.ndarray:
    """A written instance mask → scene instance ids `[H, W]` int32 (see `encode_instance_mask`)."""
    with PIL.Image.open(path) as image:
        values = np.asarray(image).astype(np.int64)
    decoded = values.copy()
    for structure, value in _UINT16_OF_STRUCTURE.items():
        decoded[values == value] = structure
    return decoded.astype(np.int32)


def generate_samples(generator: SynthRooms, index: int) -> tuple[SynthScene, dict[str, list[dict]]]:
    """Scene `index` and its records of every task (the in-memory form of what `write_dataset` writes)."""
    scene = generator.generate_scene(index)
    return scene, scene_records(scene, generator.config, generator.rng(index, RECORDS_STREAM))


def scene_ground_truth(scene: SynthScene, config) -> dict:
    """JSON-ready ground truth of a scene (room-frame boxes, R = Rz(yaw))."""
    return {
        "scene_id": scene.scene_id,
        "seed": scene.seed,
        "room": {
            "width": scene.room.width,
            "depth": scene.room.depth,
            "height": scene.room.height,
            "floor_area": scene.room.floor_area,
        },
        "objects": [
            {
                "object_id": i,
                "category": o.category,
                "bbox_3d": [float(v) for v in o.box],
                "colour": o.colour,
                "texture": o.texture,
                "against_wall": o.against_wall,
            }
            for i, o in enumerate(scene.objects)
        ],
        "axis_align_matrix": scene.axis_align_matrix.tolist(),
        "intrinsics": scene.intrinsics.tolist(),
        "image_size": list(scene.image_size),
        "frames": scene.frame_names,
        "config": config.to_dict(),
    }


def write_scene(scene: SynthScene, out_dir, jpeg_quality: int = 95) -> None:
    """Write one scene's frames (colour, depth, pose), intrinsics, alignment, masks and ground truth."""
    out_dir = Path(out_dir)
    scene_dir = posed_images_dir(out_dir) / scene.scene_id
    write_scene_meta(scene_dir, scene.intrinsics, scene.intrinsics, scene.axis_align_matrix)
    mask_dir = out_dir / "synthrooms" / "instance" / scene.scene_id
    mask_dir.mkdir(parents=True, exist_ok=True)
    for name, frame, pose in zip(scene.frame_names, scene.frames, scene.cam_to_world):
        write_frame(scene_dir, name, frame.rgb, frame.depth, pose, jpeg_quality)
        PIL.Image.fromarray(encode_instance_mask(frame.instance)).save(mask_dir / f"{name}.png")


def _write_one(generator: SynthRooms, out_dir: Path, index: int) -> tuple[str, dict[str, list[dict]]]:
    """Generate and write scene `index`; returns its id and records (what a worker process sends back)."""
    scene, scene_recs = generate_samples(generator, index)
    write_scene(scene, out_dir, generator.config.jpeg_quality)
    (out_dir / "synthrooms" / f"{scene.scene_id}.json").write_text(json.dumps(scene_ground_truth(scene, generator.config)))
    return scene.scene_id, scene_recs


def _scenes_in_order(generator: SynthRooms, out_dir: Path, indices: list[int], workers: int):
    """(scene id, records) of `indices`, in order, generated by `workers` processes."""
    if workers <= 1:
        for index in indices:
            yield _write_one(generator, out_dir, index)
        return

    with ProcessPoolExecutor(max_workers=workers, initializer=keep_large_allocations_in_heap) as pool:
        yield from pool.map(partial(_write_one, generator, out_dir), indices, chunksize=4)


def check_dataset_request(config, splits: dict[str, int], workers: int = 1) -> None:
    """ValueError, before anything is written, unless `splits` scenes of `config` can be written by `workers`
    processes: a whole number of scenes in each split, at most `MAX_SCENES` in all (generator.py), frames this
    machine can render `workers` at a time (`scene_size_problem`), and no task taking more frames than a scene has
    (its annotation files are named by that count)."""
    counts = list(splits.values())
    if any(isinstance(count, bool) or not isinstance(count, int) or count < 0 for count in counts):
        raise ValueError(f"splits {splits}: give a whole number of scenes (0 or more) for each split")
    problem = scene_count_problem(sum(counts))
    if problem is not None:
        raise ValueError(f"splits {splits}: {sum(counts):,} scenes {problem}")
    problem = scene_size_problem(config, min(workers, max(counts, default=1)))  # a split's scenes at once, at most
    if problem is not None:
        height, width = config.image_size
        raise ValueError(f"{config.num_frames} frames of {height}x{width} pixels (num_frames, image_size) {problem}")
    for field in sorted(set(TASK_FRAMES.values())):
        if getattr(config, field) > config.num_frames:
            raise ValueError(f"{field} {getattr(config, field)} is more than the {config.num_frames} frames of a scene "
                             f"(num_frames): give at most {config.num_frames}")


def write_dataset(
    out_dir,
    generator: SynthRooms,
    splits: dict[str, int],
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict:
    """Generate and write `splits` (e.g. {"train": 8, "val": 2, "test": 2}) scenes; returns the dataset info.

    Scenes are numbered consecutively across splits (in the order given). `progress(scene_id)` is called
    after each scene (the CLI drives a tqdm bar with it). `workers` > 1 renders scenes in that many
    processes; the files written are the same (every scene depends only on (seed, index)).

    Raises:
        ValueError: what `check_dataset_request` refuses, before anything is written.
    """
    config = generator.config
    check_dataset_request(config, splits, workers)
    out_dir = Path(out_dir)
    (out_dir / "synthrooms").mkdir(parents=True, exist_ok=True)
    info = {"generator": "SynthRooms", "config": config.to_dict(), "splits": {}, "records": {}}
    start = 0
    for split, count in splits.items():
        records: dict[str, list[dict]] = {task: [] for task in TASK_FRAMES}
        scene_ids = []
        for scene_id, scene_recs in _scenes_in_order(generator, out_dir, list(range(start, start + count)), workers):
            for task, recs in scene_recs.items():
                records[task].extend(recs)
            scene_ids.append(scene_id)
            if progress is not None:
                progress(scene_id)
        start += count
        (out_dir / ANNOTATIONS_SUBDIR).mkdir(parents=True, exist_ok=True)
        for task, recs in records.items():
            name = annotation_file_name(task, split, getattr(config, TASK_FRAMES[task]))
            (out_dir / ANNOTATIONS_SUBDIR / name).write_text(json.dumps(recs, indent=1))
        info["splits"][split] = scene_ids
        info["records"][split] = {task: len(recs) for task, recs in records.items()}
    (out_dir / "synthrooms" / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return info


_NOT_SET = object()


def _setting(settings: dict, name: str) -> str:
    """The value of setting `name` in words (as JSON; "(not set)" when `settings` has none)."""
    return json.dumps(settings[name]) if name in settings else "(not set)"


def setting_differences(info: dict, config) -> list[str]:
    """The settings in which the SynthRooms data `info` (a parsed synthrooms/dataset_info.json) differ from `config`,
    each with both values ("seed 0 there, 5 here"); empty when they are the same."""
    held = info.get("config") if isinstance(info.get("config"), dict) else {}
    wanted = json.loads(json.dumps(config.to_dict()))  # as the file holds it (tuples as lists)
    return [f"{name} {_setting(held, name)} there, {_setting(wanted, name)} here"
            for name in sorted(set(held) | set(wanted)) if held.get(name, _NOT_SET) != wanted.get(name, _NOT_SET)]


def dataset_differences(info: dict, config, splits: dict[str, int]) -> list[str]:
    """How the SynthRooms data `info` differ from the scenes `splits` of `config`: `setting_differences`, then the
    scene counts when they differ ("scenes {'train': 2} there, {'train': 1} here"); empty when writing them again
    changes nothing."""
    differences = setting_differences(info, config)
    counts = {split: len(scenes) for split, scenes in info.get("splits", {}).items()}
    if counts != dict(splits):
        differences.append(f"scenes {counts} there, {dict(splits)} here")
    return differences


def synthrooms_owner(config, splits: dict[str, int]) -> OwnerCheck:
    """The owner check of a data root (output_folder.py): only the same SynthRooms scenes may be written again; a
    data root of other scenes or settings is someone's data (the user's 45-scene set, another run's). Its
    synthrooms/dataset_info.json is read as a marker is (`read_owner_bytes`: a regular file reached through no
    link), then checked by the one parser of the file (a malformed one is a DataError naming it)."""

    def check(folder: Path) -> str | None:
        try:
            data = read_owner_bytes(folder, SYNTHROOMS_INFO.as_posix())
        except NotAnOwnerRecord as error:
            return str(error)
        info = parse_dataset_info(data, Path(folder) / SYNTHROOMS_INFO) if data is not None else None
        if info is None or info.get("generator") != "SynthRooms":
            return "holds no SynthRooms data (no synthrooms/dataset_info.json)"
        differences = dataset_differences(info, config, splits)
        return f"holds other SynthRooms scenes ({'; '.join(differences)})" if differences else None

    return check


def write_dataset_folder(out_dir, generator: SynthRooms, splits: dict[str, int], *, command: str,
                         overwrite: bool = False, option: str = "--out", overwrite_option: str | None = "--overwrite",
                         named: str | None = None, progress: Callable[[str], None] | None = None,
                         workers: int = 1) -> dict:
    """`write_dataset` as a whole folder (module docstring): `out_dir` appears only when complete.

    The folder carries no marker file: a run's data digest counts every file of its data root
    (training/run_state.py); its `synthrooms/dataset_info.json` says what wrote it (`synthrooms_owner`).

    Raises:
        ValueError: what `check_dataset_request` refuses, before the folder is looked at or locked.
        OutputFolderRefused: `out_dir` holds other files or other scenes, and no `overwrite`.
    """
    check_dataset_request(generator.config, splits, workers)
    with writing_output_folder(out_dir, command, overwrite=overwrite, option=option, overwrite_option=overwrite_option,
                               owner_check=synthrooms_owner(generator.config, splits), marker=False,
                               named=named) as staging:
        return write_dataset(staging, generator, splits, progress=progress, workers=workers)
