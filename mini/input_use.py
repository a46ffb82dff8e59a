"""Does a trained model look at its input? Teacher-forced answer loss with each sample's own frames, with the
frames of a sample from another scene, and with another sample's prompt.

    python -m gap_mllm.mini.input_use --model mini/gap-mllm-mini --data runs/mini/data --task grounding_stage2

A model that reads its frames answers its own frames better than another scene's: the mean cross-entropy of
its answer tokens rises when the frames are swapped. Equal losses mean that the answers do not depend on the
frames at all, whatever the generation metrics say about their format. Digit tokens (the numbers of points
and boxes) are reported apart: the template tokens of an answer do not depend on the input anyway.

Only the swapped part changes: the partner sample has as many views (so the prompt's image placeholders
still match), comes from another scene, and the sample keeps its answer. Marker samples keep their marker's
pixel under `other_frames` (what the scene's content adds) and take the partner's under
`other_frames_and_marker` (what the frames add in all, the marker's place included). No generation: a forward pass per batch, seconds per hundred samples on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

CONDITIONS = ("own", "other_frames", "other_prompt", "other_frames_and_marker")
SWAPPED_KEYS = {"other_frames": ("images",), "other_prompt": ("prompt",), "other_frames_and_marker": ("images", "pixel_coords")}


def scene_of(row: dict) -> str:
    """The scene a sample comes from: the folder of its first view (`<scene>/<frame>.jpg`)."""
    return Path(row["image_paths"][0]).parent.name


def swap_partner(rows: list[dict], index: int) -> dict:
    """The next sample after `rows[index]` (cyclically) from another scene with as many views."""
    row = rows[index]
    for offset in range(1, len(rows)):
        other = rows[(index + offset) % len(rows)]
        if len(other["images"]) == len(row["images"]) and scene_of(other) != scene_of(row):
            return other
    raise ValueError(f"sample {row['id']!r}: no sample of another scene with {len(row['images'])} views to swap with; "
                     "use more samples")


def swapped(rows: list[dict], condition: str) -> list[dict]:
    """`rows` with the frames (`other_frames`), the prompt (`other_prompt`) or the frames and the marker's
    pixel (`other_frames_and_marker`, marker samples) of each one's swap partner."""
    if condition == "own":
        return list(rows)
    keys = SWAPPED_KEYS[condition]
    result = []
    for index, row in enumerate(rows):
        partner = swap_partner(rows, index)
        result.append({**row, **{key: partner[key] for key in keys}})
    return result


def digit_token_ids(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary's digit tokens (Qwen pre-tokenisation: one digit per token, maybe after a space)."""
    return torch.tensor(sorted(i for token, i in tokenizer.get_vocab().items() if token.lstrip("Ġ").isdigit()))


@torch.no_grad()
def answer_token_losses(model, batch: dict, digits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of every answer token of a collated training batch (`labels` != -100), and
    the subset at digit targets; 1-D tensors."""
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    answer = targets != -100
    return losses[answer], losses[answer & torch.isin(targets, digits)]


def input_use(model, processor, rows: list[dict], batch_size: int = 8) -> dict:
    """Mean answer-token and digit-token loss of `rows` under each of `CONDITIONS` (the marker one for marker
    samples only), and how much each swap raises the answer loss (`*_gain`, nats per token; about 0 for a
    model that ignores what was swapped)."""
    from gap_mllm.processing.collator import GapMllmDataCollator

    model.eval()
    collator = GapMllmDataCollator(processor, train=True, marker=True)
    digits = digit_token_ids(processor.tokenizer)
    report = {"num_samples": len(rows)}
    has_marker = rows[0].get("pixel_coords") is not None
    conditions = [c for c in CONDITIONS if has_marker or c != "other_frames_and_marker"]
    for condition in conditions:
        examples = swapped(rows, condition)
        answer, digit = [], []
        for start in range(0, len(examples), batch_size):
            a, d = answer_token_losses(model, collator(examples[start : start + batch_size]), digits)
            answer.append(a)
            digit.append(d)
        answer, digit = torch.cat(answer), torch.cat(digit)
        report[condition] = {"answer_loss": answer.mean().item(), "num_answer_tokens": answer.numel(),
                             "digit_loss": digit.mean().item() if digit.numel() else None, "num_digit_tokens": digit.numel()}
    for condition in conditions[1:]:
        report[f"{condition}_gain"] = report[condition]["answer_loss"] - report["own"]["answer_loss"]
    return report


def load_rows(data_root, task: str, split: str, num_samples: int, cache_dir=None) -> list[dict]:
    """The first `num_samples` training-format samples of `task` in `split` (as the trainer reads them)."""
    from gap_mllm.training.config import AuxLossConfig, DataConfig
    from gap_mllm.training.data import load_split

    dataset = load_split(DataConfig(data_root=str(data_root), tasks=[task], cache_dir=cache_dir), split, AuxLossConfig())
    return [dataset[i] for i in range(min(num_samples, len(dataset)))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GAP-MLLM folder")
    parser.add_argument("--data", required=True, help="SynthRooms / ScanNet-layout data root")
    parser.add_argument("--task", required=True, help="a training task, e.g. grounding_stage2, detection, reconstruction")
    parser.add_argument("--split", default="val")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", default=None, help="datasets cache (default: the datasets library's)")
    args = parser.parse_args(argv)
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    model = GapMllmForConditionalGeneration.from_pretrained(args.model)
    processor = GapMllmProcessor.from_pretrained(args.model)
    rows = load_rows(args.data, args.task, args.split, args.samples, args.cache_dir)
    report = {"model": str(args.model), "task": args.task, "split": args.split,
              **input_use(model, processor, rows, batch_size=args.batch_size)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
