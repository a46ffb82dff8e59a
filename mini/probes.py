"""Linear probes: what the frozen encoders and the LLM's input carry, so a failure can be placed.

    python -m gap_mllm.mini.probes --model mini/gap-mllm-mini --data runs/mini/data

Four probes, each a ridge regression fitted on training scenes and scored on held-out scenes:

    vit_position    per merged ViT token (one per 32×32-pixel cell): its column, its row, the cell's mean
                    depth and camera-frame x (m). A ViT that does not know where a token lies cannot tell
                    the LLM where anything is (x = (u − c_x)·z / f needs the column u).
    marker_readout  for marker samples whose marker is in the first frame, the LLM's input at the marked
                    token (the fused visual token, `hidden_states[0]`) → the true point (m, first frame's
                    camera). What a linear read-out of the LLM's input achieves, next to what the LLM answers,
                    says whether the information is missing or the LLM does not read it out.
    grounding_readout   grounding without the LLM: in the annotated frame k* of each grounding sample, the merged
                    ViT token whose probed share of the target's category is highest, and the object centre
                    probed from that token (camera frame → world). Scored as the LLM's answers are
                    (evaluation/grounding_identification.py: identification, centre error) and, with the
                    target's true size and orientation, Acc@0.25 of the centre alone. Two ridge probes fitted on
                    the k* frames of training samples: token → category shares of its cell; token → camera-frame
                    centre of the object covering at least half of its cell. `--readout-features llm_input` probes
                    the LLM's input at the frame's tokens for the whole stage-2 request instead (geometry fused in).
    answer_state    for grounding stage-2 samples, the LLM's hidden state of every layer at the last prompt token
                    (where the answer starts; no answer token is seen) → the target box's centre (m, the first
                    frame's camera). Next to the grounding read-out it says whether the LLM gathers the named
                    object's information before it writes the box.

Ridge in closed form on standardised features (λ = 10): three lines of numpy, not a new dependency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RIDGE_LAMBDA = 10.0


def fit_ridge(features: np.ndarray, targets: np.ndarray, lam: float = RIDGE_LAMBDA):
    """Ridge regression `[N, D] → [N, K]` on standardised features with a free intercept; returns a predictor."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    design = np.c_[(features - mean) / std, np.ones(len(features))]
    penalty = lam * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(design.T @ design + penalty, design.T @ targets)
    return lambda x: np.c_[(x - mean) / std, np.ones(len(x))] @ weights


def r_squared(truth: np.ndarray, prediction: np.ndarray) -> float:
    """1 − SSE / SST of one target column (0: no better than its mean; 1: exact)."""
    return float(1.0 - ((truth - prediction) ** 2).sum() / max(((truth - truth.mean()) ** 2).sum(), 1e-12))


# ------------------------------------------------------------------------------------------ ViT position


def vit_token_targets(model, processor, data_root, split: str, max_scenes: int, frames_per_scene: int = 4):
    """(`[N, D]` merged ViT tokens, `[N, 4]` targets: column, row, depth m, camera x m) of frames of `split`;
    cells with less than half valid depth are left out."""
    from PIL import Image

    from gap_mllm.processing.scannet_layout import INTRINSIC_FILE, posed_images_dir, read_depth, read_intrinsics
    from gap_mllm.training.geometry_data import camera_points, split_scene_ids

    media = posed_images_dir(data_root)
    visual = model.vlm.model.visual
    merge = processor.image_processor.merge_size
    features, targets = [], []
    for scene in split_scene_ids(data_root, split)[:max_scenes]:
        stems = sorted((p.stem for p in (media / scene).glob("*.jpg")), key=int)
        intrinsics = read_intrinsics(media / scene / INTRINSIC_FILE)
        for stem in stems[:: max(1, len(stems) // frames_per_scene)][:frames_per_scene]:
            image = Image.open(media / scene / f"{stem}.jpg").convert("RGB")
            depth = read_depth(media / scene / f"{stem}.png")
            inputs = processor.image_processor(images=[image], return_tensors="pt")
            with torch.no_grad():
                tokens = model.vlm.model.get_image_features(inputs["pixel_values"].to(visual.dtype), inputs["image_grid_thw"],
                                                            return_dict=True).pooler_output
            tokens = torch.cat(tokens) if isinstance(tokens, (list, tuple)) else tokens
            _, h, w = inputs["image_grid_thw"][0].tolist()
            h, w = h // merge, w // merge
            height, width = depth.shape
            cell_h, cell_w = height // h, width // w
            points = camera_points(depth, intrinsics)
            for row in range(h):
                for col in range(w):
                    cell = np.s_[row * cell_h:(row + 1) * cell_h, col * cell_w:(col + 1) * cell_w]
                    valid = depth[cell] > 0
                    if valid.mean() < 0.5:
                        continue
                    features.append(tokens[row * w + col].float().numpy())
                    targets.append([col, row, depth[cell][valid].mean(), points[cell][valid][:, 0].mean()])
    return np.array(features), np.array(targets)


def vit_position_probe(model, processor, data_root, fit_scenes: int = 300, eval_scenes: int = 60) -> dict:
    """R² of column, row, depth and camera x from one merged ViT token (train scenes → val scenes)."""
    fit_x, fit_y = vit_token_targets(model, processor, data_root, "train", fit_scenes)
    eval_x, eval_y = vit_token_targets(model, processor, data_root, "val", eval_scenes)
    predicted = fit_ridge(fit_x, fit_y)(eval_x)
    names = ("column", "row", "depth", "camera_x")
    return {"num_fit": len(fit_x), "num_eval": len(eval_x),
            **{f"{name}_r2": r_squared(eval_y[:, k], predicted[:, k]) for k, name in enumerate(names)}}


# ------------------------------------------------------------------------------------------ marker read-out


def marked_token_inputs(model, processor, data_root, split: str, limit: int):
    """(`[N, D]` LLM input at the marked token, `[N, 3]` true points) of `split`'s marker samples whose marker
    is in the first frame (the first `limit` of them)."""
    from PIL import Image

    from gap_mllm.output_parsing import parse_pointmap
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import load_annotation_file
    from gap_mllm.processing.scannet_layout import posed_images_dir

    media = posed_images_dir(data_root)
    records = [r for r in load_annotation_file(find_annotation_file(data_root, "reconstruction", split)) if r["pixel_coords"][0] == 0]
    image_token = model.config.vlm_config.image_token_id
    merge = processor.image_processor.merge_size
    features, points = [], []
    for record in records[:limit]:
        frames = [Image.open(media / Path(path).parent.name / Path(path).name).convert("RGB") for path in record["images"]]
        view, x, y = record["pixel_coords"]
        inputs = processor(images=frames, task="reconstruction", point_prompts=(view, x, y), return_tensors="pt")
        with torch.no_grad():
            embeddings = model(**inputs, output_hidden_states=True).hidden_states[0][0]
        positions = (inputs["input_ids"][0] == image_token).nonzero()[:, 0]  # first frame's tokens come first
        _, h, w = inputs["image_grid_thw"][0].tolist()
        h, w = h // merge, w // merge
        width, height = frames[0].size
        features.append(embeddings[positions[(y * h // height) * w + x * w // width]].float().numpy())
        points.append(parse_pointmap(record["conversations"][1]["value"]).point)
    return np.array(features), np.array(points)


def marker_readout_probe(model, processor, data_root, fit_samples: int = 1500, eval_samples: int = 270, eval_split: str = "test") -> dict:
    """Median 3D error (m) of a linear read-out of the marked token's LLM input (first-frame markers), per-axis
    correlations, and the constant (mean training point) for comparison."""
    fit_x, fit_y = marked_token_inputs(model, processor, data_root, "train", fit_samples)
    eval_x, eval_y = marked_token_inputs(model, processor, data_root, eval_split, eval_samples)
    predicted = fit_ridge(fit_x, fit_y)(eval_x)
    return {"num_fit": len(fit_x), "num_eval": len(eval_x), "split": eval_split,
            "readout_error_m_median": float(np.median(np.linalg.norm(predicted - eval_y, axis=1))),
            "constant_error_m_median": float(np.median(np.linalg.norm(eval_y - fit_y.mean(0), axis=1))),
            "axis_correlation": [float(np.corrcoef(predicted[:, k], eval_y[:, k])[0, 1]) for k in range(3)]}


# ---------------------------------------------------------------------------------------- grounding read-out


READOUT_FEATURES = ("vit", "llm_input")


def _frame_features(model, processor, record, media, features: str) -> tuple[np.ndarray, tuple[int, int]]:
    """`([h·w, D] tokens of the record's first frame, (h, w) merged grid)`: the merged ViT tokens of that frame
    alone ("vit"), or the LLM's input at its visual tokens for the whole stage-2 request, geometry fused in
    ("llm_input", `hidden_states[0]`; the first frame's tokens come first)."""
    from PIL import Image

    from gap_mllm.tasks_gap_mllm import extract_query

    merge = processor.image_processor.merge_size
    if features == "vit":
        inputs = processor.image_processor(images=[Image.open(media / record["images"][0]).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            tokens = model.vlm.model.get_image_features(inputs["pixel_values"].to(model.vlm.model.visual.dtype),
                                                        inputs["image_grid_thw"], return_dict=True).pooler_output
        tokens = torch.cat(tokens) if isinstance(tokens, (list, tuple)) else tokens
    elif features == "llm_input":
        frames = [Image.open(media / path).convert("RGB") for path in record["images"]]
        inputs = processor(images=frames, task="grounding_stage2", query=extract_query(record["conversations"][0]["value"]),
                           return_tensors="pt")
        with torch.no_grad():
            embeddings = model(**inputs, output_hidden_states=True).hidden_states[0][0]
        tokens = embeddings[(inputs["input_ids"][0] == model.config.vlm_config.image_token_id).nonzero()[:, 0]]
    else:
        raise ValueError(f"unknown read-out features {features!r}; choose from {READOUT_FEATURES}")
    _, h, w = inputs["image_grid_thw"][0].tolist()
    grid = (h // merge, w // merge)
    return tokens[: grid[0] * grid[1]].float().numpy(), grid


def reference_frame_tokens(model, processor, data_root, split: str, limit: int, min_cover: float = 0.5,
                           features: str = "vit"):
    """Per grounding stage-2 record of `split` (the first `limit`): its record, the tokens `[h·w, D]` of its first
    frame (the annotated frame k*, whose camera the box is written in; `_frame_features`), the cells' category
    shares `[h·w, C]` and, per cell, the camera-frame centre of the object covering the most of it, if that is at
    least `min_cover` of the cell (else NaN)."""
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import load_annotation_file
    from gap_mllm.processing.coordinates import world_boxes_to_camera
    from gap_mllm.processing.scannet_layout import posed_images_dir
    from gap_mllm.processing.synth.writer import read_instance_mask
    from gap_mllm.training.vision_data import CATEGORY_CLASSES, cell_distributions, pixel_classes

    root = Path(data_root)
    media = posed_images_dir(root)
    out = []
    for record in load_annotation_file(find_annotation_file(root, "grounding_stage2", split))[:limit]:
        scene, name = Path(record["images"][0]).parent.name, Path(record["images"][0]).stem
        objects = json.loads((root / "synthrooms" / f"{scene}.json").read_text(encoding="utf-8"))["objects"]
        tokens, grid = _frame_features(model, processor, record, media, features)
        instance = read_instance_mask(root / "synthrooms" / "instance" / scene / f"{name}.png")
        shares = cell_distributions(pixel_classes(instance, objects)[0], len(CATEGORY_CLASSES), grid)
        owners = cell_distributions(np.where(instance > 0, instance - 1, -1), len(objects), grid)
        centres = world_boxes_to_camera(np.array([o["bbox_3d"] for o in objects], dtype=np.float64), record["cam2global"][0],
                                        record.get("axis_align_matrix"))[:, :3]
        owner_centres = np.full((len(tokens), 3), np.nan)
        covered = (owners.max(1) >= min_cover) & (owners.max(1) > 0)
        owner_centres[covered] = centres[owners.argmax(1)[covered]]
        out.append((record, tokens, shares, owner_centres))
    return out


def grounding_readout_probe(model, processor, data_root, fit_samples: int = 1500, eval_samples: int | None = None,
                            eval_split: str = "val", min_cover: float = 0.5, features: str = "vit") -> dict:
    """Grounding by two linear probes of the frozen ViT's tokens (or of the LLM's input, `features="llm_input"`),
    no LLM (module docstring), scored like the model."""
    from gap_mllm.evaluation import grounding_identification as gi
    from gap_mllm.evaluation.box_iou import box_iou
    from gap_mllm.evaluation.confidence import wilson_interval
    from gap_mllm.training.vision_data import CATEGORY_CLASSES

    fit = reference_frame_tokens(model, processor, data_root, "train", fit_samples, min_cover, features)
    inputs = np.concatenate([tokens for _, tokens, _, _ in fit])
    category = fit_ridge(inputs, np.concatenate([shares for _, _, shares, _ in fit]))
    centres = np.concatenate([owner for _, _, _, owner in fit])
    known = ~np.isnan(centres[:, 0])
    if not known.any():
        raise ValueError(f"no token of the {len(fit)} fitting frames is covered to {min_cover:.0%} by one object: "
                         "nothing to fit the centre probe on (more fit_samples, or a lower min_cover)")
    centre = fit_ridge(inputs[known], centres[known])

    records, boxes, hits = [], [], 0
    for record, tokens, _, _ in reference_frame_tokens(model, processor, data_root, eval_split, eval_samples, features=features):
        target = gi.scene_objects(data_root, record["scene_id"])[1][int(record["object_id"])]
        chosen = int(np.argmax(category(tokens)[:, CATEGORY_CLASSES.index(target)]))
        predicted = np.r_[centre(tokens[chosen : chosen + 1])[0], 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        world = gi.world_box(record, 0, predicted)
        records.append(record)
        boxes.append(world)
        truth = np.asarray(record["gt_bbox"], dtype=np.float64)
        hits += box_iou(np.r_[world[:3], truth[3:]], truth) >= 0.25  # the centre alone: true size and orientation
    found = gi.identification_summary(records, boxes, data_root)
    return {"features": features, "num_fit_tokens": len(inputs), "num_fit_object_tokens": int(known.sum()), "split": eval_split, **found,
            "acc@0.25_true_size_and_orientation": hits / len(records),
            "acc@0.25_true_size_and_orientation_ci95": wilson_interval(int(hits), len(records))}


# ------------------------------------------------------------------------------------------ answer state


def answer_start_states(model, processor, data_root, split: str, limit: int | None):
    """(`[N, layers + 1, D]` hidden states at the last prompt token of `split`'s grounding stage-2 requests, `[N, 3]`
    centres of their answer boxes in the first frame's camera)."""
    from PIL import Image

    from gap_mllm.output_parsing import parse_grounding
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import load_annotation_file
    from gap_mllm.processing.scannet_layout import posed_images_dir
    from gap_mllm.tasks_gap_mllm import extract_query

    media = posed_images_dir(data_root)
    states, centres = [], []
    for record in load_annotation_file(find_annotation_file(data_root, "grounding_stage2", split))[:limit]:
        frames = [Image.open(media / path).convert("RGB") for path in record["images"]]
        inputs = processor(images=frames, task="grounding_stage2", query=extract_query(record["conversations"][0]["value"]),
                           return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        states.append(torch.stack([layer[0, -1] for layer in hidden]).float().numpy())
        centres.append(parse_grounding(record["conversations"][1]["value"]).box.to_list()[:3])
    return np.array(states), np.array(centres)


def answer_state_probe(model, processor, data_root, fit_samples: int = 1500, eval_samples: int | None = None,
                       eval_split: str = "val") -> dict:
    """Per layer (0 = the LLM's input embedding), the median error (m) of a linear read-out of the target's centre
    from the state where the answer starts, and the constant (mean training centre) for comparison; bootstrap 95 %
    intervals over the scored samples."""
    fit_x, fit_y = answer_start_states(model, processor, data_root, "train", fit_samples)
    eval_x, eval_y = answer_start_states(model, processor, data_root, eval_split, eval_samples)
    from gap_mllm.evaluation.confidence import bootstrap_interval

    errors = [np.linalg.norm(fit_ridge(fit_x[:, layer], fit_y)(eval_x[:, layer]) - eval_y, axis=1) for layer in range(fit_x.shape[1])]
    constant = np.linalg.norm(eval_y - fit_y.mean(0), axis=1)
    return {"num_fit": len(fit_x), "num_eval": len(eval_x), "split": eval_split,
            "readout_error_m_median_by_layer": [float(np.median(e)) for e in errors],
            "readout_error_m_median_by_layer_ci95": [bootstrap_interval(e, np.median) for e in errors],
            "constant_error_m_median": float(np.median(constant)),
            "constant_error_m_median_ci95": bootstrap_interval(constant, np.median)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GAP-MLLM folder (e.g. mini/gap-mllm-mini or a stage folder)")
    parser.add_argument("--data", required=True, help="SynthRooms mini data (gap-mllm synth --preset mini)")
    parser.add_argument("--probes", nargs="+", default=["vit_position", "marker_readout"],
                        choices=["vit_position", "marker_readout", "grounding_readout", "answer_state"])
    parser.add_argument("--eval-split", default="test", help="split of the read-outs' scored samples")
    parser.add_argument("--readout-features", default="vit", choices=READOUT_FEATURES,
                        help="grounding_readout: the frame's ViT tokens, or the LLM's input with geometry fused in")
    args = parser.parse_args(argv)
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    model = GapMllmForConditionalGeneration.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    processor = GapMllmProcessor.from_pretrained(args.model)
    report = {}
    if "vit_position" in args.probes:
        report["vit_position"] = vit_position_probe(model, processor, args.data)
    if "marker_readout" in args.probes:
        report["marker_readout"] = marker_readout_probe(model, processor, args.data, eval_split=args.eval_split)
    if "grounding_readout" in args.probes:
        report["grounding_readout"] = grounding_readout_probe(model, processor, args.data, eval_split=args.eval_split,
                                                              features=args.readout_features)
    if "answer_state" in args.probes:
        report["answer_state"] = answer_state_probe(model, processor, args.data, eval_split=args.eval_split)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
