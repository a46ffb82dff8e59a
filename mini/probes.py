"""Linear probes: what the frozen encoders and the LLM's input carry, so a failure can be placed.

    python -m gap_mllm.mini.probes --model mini/gap-mllm-mini --data runs/mini/data

Two probes, each a ridge regression fitted on training scenes and scored on held-out scenes:

    vit_position    per merged ViT token (one per 32×32-pixel cell): its column, its row, the cell's mean
                    depth and camera-frame x (m). A ViT that does not know where a token lies cannot tell
                    the LLM where anything is (x = (u − c_x)·z / f needs the column u).
    marker_readout  for marker samples whose marker is in the first frame, the LLM's input at the marked
                    token (the fused visual token, `hidden_states[0]`) → the true point (m, first frame's
                    camera). What a linear read-out of the LLM's input achieves, next to what the LLM answers,
                    says whether the information is missing or the LLM does not read it out.

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GAP-MLLM folder (e.g. mini/gap-mllm-mini or a stage folder)")
    parser.add_argument("--data", required=True, help="SynthRooms mini data (gap-mllm synth --preset mini)")
    parser.add_argument("--probes", nargs="+", default=["vit_position", "marker_readout"], choices=["vit_position", "marker_readout"])
    parser.add_argument("--eval-split", default="test", help="split of the marker read-out's scored samples")
    args = parser.parse_args(argv)
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    model = GapMllmForConditionalGeneration.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    processor = GapMllmProcessor.from_pretrained(args.model)
    report = {}
    if "vit_position" in args.probes:
        report["vit_position"] = vit_position_probe(model, processor, args.data)
    if "marker_readout" in args.probes:
        report["marker_readout"] = marker_readout_probe(model, processor, args.data, eval_split=args.eval_split)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
