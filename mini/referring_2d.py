"""Can the mini LLM learn to find a named object? Grounding stripped to retrieval: one view, a 2D box.

    python -m gap_mllm.mini.referring_2d --model mini/gap-mllm-mini --data runs/mini/data --out runs/referring-2d \
        [--order views_first|text_first] [--steps 4500] [--batch-size 16] [--lr 1e-3] [--eval-every 500] [--device cuda]
    python -m gap_mllm.mini.referring_2d --model runs/referring-2d/model --data runs/mini/data --evaluate-only

3D grounding asks the LLM to find the described object among the views' tokens, then write its box in the
first frame's camera; the mini model answers a constant box (mini/README.md, "Where grounding fails"). This
diagnostic keeps only the finding: one view, the grounding description of an object seen in it, and the
object's 2D box in the image as Qwen3-VL writes 2D grounding, `{"bbox_2d": [x1, y1, x2, y2]}` in coordinates
relative to the image (0-1000). No depth, camera, size or orientation is asked, so the one way to beat the
constant box is to attend to the named object's tokens. It is what the real Qwen3-VL learned in its own
pre-training and the from-scratch mini LLM never did; a run shows whether, and after how many samples, the mini
LLM learns it.

Samples: every grounding stage-1 record of SynthRooms gives the object and its description; its views are the
scene's frames where the object covers at least `min_pixels` (box = the bounds of its pixels in the written
instance mask), `views_per_object` of them drawn at random (a fixed seed per split). Layouts (`order`):
`views_first` is the official one (the view, then the task text); `text_first` puts the description before the
view, so the view's tokens can attend to it (a causal LLM's visual tokens never see a query that follows them).

Training: the package's collator and freezing policy (encoders frozen; LLM, mergers, fusions trained), AdamW,
linear warm-up then cosine, gradient clipping at 1, batches in a fixed shuffled order. It is a short loop rather
than `Trainer` because it evaluates by generation on two fixed slices at set steps and resumes exactly (model,
optimizer, scheduler and step are saved at each evaluation).

Scores (greedy answers, the first four numbers of the first list read as the box, so a malformed answer still says where it
points): Acc@0.5 (2D IoU), mean IoU, and how often the predicted box's centre lies inside the true box, each
with its 95 % interval, and what the predicted box's centre lies on (the named object, another object, the room:
`pointing`, read from the instance mask); next to the mean training box, and on a slice of training samples (fit)
as well as on held-out scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from gap_mllm.evaluation.confidence import bootstrap_interval, wilson_interval
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scannet_layout import posed_images_dir
from gap_mllm.processing.synth.writer import read_instance_mask
from gap_mllm.tasks_gap_mllm import extract_query

ORDERS = ("views_first", "text_first")
INSTRUCTION = "Locate the object described in the text in the image.\nText: {query}\n"
OUTPUT_FORMAT = 'Output a JSON dictionary with its 2D bounding box in "bbox_2d" as [x1, y1, x2, y2], from 0 to 1000.\n'
RELATIVE_SCALE = 1000  # Qwen3-VL writes 2D boxes relative to the image, 0-1000
MIN_PIXELS = 400  # about 2 % of a mini frame (160×128): the object is clearly in view
MAX_NEW_TOKENS = 40  # the longest answer is 24 tokens
STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"
POINTED_AT = ("named_object", "other_object", "room", "nothing")


# ------------------------------------------------------------------------------------------------- samples


def box_2d(instance: np.ndarray, instance_id: int, min_pixels: int = MIN_PIXELS) -> list[int] | None:
    """The bounds `[x1, y1, x2, y2]` (0-1000, x2/y2 past the last pixel) of the pixels of `instance_id` in an
    instance mask `[H, W]`, or None when it covers fewer than `min_pixels`."""
    ys, xs = np.nonzero(instance == instance_id)
    if len(xs) < min_pixels:
        return None
    height, width = instance.shape
    return [round(RELATIVE_SCALE * xs.min() / width), round(RELATIVE_SCALE * ys.min() / height),
            round(RELATIVE_SCALE * (xs.max() + 1) / width), round(RELATIVE_SCALE * (ys.max() + 1) / height)]


def referring_prompt(query: str, order: str) -> str:
    """The human turn with one `<image>`: the view before (`views_first`) or after (`text_first`) the description."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
    text = INSTRUCTION.format(query=query)
    return "<image>" + text + OUTPUT_FORMAT if order == "views_first" else text + "<image>" + OUTPUT_FORMAT


def referring_samples(data_root, split: str, views_per_object: int, order: str = "views_first",
                      min_pixels: int = MIN_PIXELS, seed: int = 0) -> list[dict]:
    """One sample per (grounding object of `split`, view where it covers `min_pixels`), at most `views_per_object`
    views per object: `{"id", "image", "mask", "instance_id", "prompt", "answer", "box"}` (`image` and `mask` paths,
    `box` the 0-1000 target)."""
    data_root = Path(data_root)
    rng = random.Random(seed)
    samples = []
    for record in load_annotation_file(find_annotation_file(data_root, "grounding_stage1", split)):
        scene, index = record["scene_id"], int(record["object_id"])
        query = extract_query(record["conversations"][0]["value"])
        truth = json.loads((data_root / "synthrooms" / f"{scene}.json").read_text())
        views = []
        for name in truth["frames"]:
            box = box_2d(read_instance_mask(data_root / "synthrooms" / "instance" / scene / f"{name}.png"), index + 1, min_pixels)
            if box is not None:
                views.append((name, box))
        rng.shuffle(views)
        for name, box in views[:views_per_object]:
            samples.append({"id": f"{scene}_{index}_{name}", "image": str(posed_images_dir(data_root) / scene / f"{name}.jpg"),
                            "mask": str(data_root / "synthrooms" / "instance" / scene / f"{name}.png"), "instance_id": index + 1,
                            "prompt": referring_prompt(query, order), "answer": json.dumps({"bbox_2d": box}), "box": box})
    if not samples:
        raise ValueError(f"no {split} object of {data_root} covers {min_pixels} pixels of any view")
    return samples


def collator_rows(samples: list[dict]) -> list[dict]:
    """Samples as the package's collator reads them: the decoded view `image`, or views `images` (paths)."""
    rows = []
    for sample in samples:
        images = []
        for path in sample.get("images") or [sample["image"]]:
            with PIL.Image.open(path) as image:
                images.append(image.convert("RGB"))
        rows.append({"id": sample["id"], "images": images, "prompt": sample["prompt"], "answer": sample["answer"]})
    return rows


# ------------------------------------------------------------------------------------------------- scores


def read_box(text: str) -> list[float] | None:
    """The first four numbers after the answer's first `[` as `[x1, y1, x2, y2]`, or None when it has fewer.
    (Not the first four of the text: the key `bbox_2d` holds a digit.)"""
    start = text.find("[")
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text[start + 1 :]) if start >= 0 else []
    return [float(v) for v in numbers[:4]] if len(numbers) >= 4 else None


def iou_2d(a, b) -> float:
    """IoU of two `[x1, y1, x2, y2]` boxes (an inverted box has no area)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda box: max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def centre_inside(prediction, truth) -> bool:
    x, y = (prediction[0] + prediction[2]) / 2, (prediction[1] + prediction[3]) / 2
    return truth[0] <= x <= truth[2] and truth[1] <= y <= truth[3]


def score(predictions: list, truths: list) -> dict:
    """Acc@0.5, mean IoU and centre-in-box rate (each with its 95 % interval) of `predictions` (boxes or None,
    which counts as a miss) against `truths`."""
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    ious = np.array([0.0 if p is None else iou_2d(p, t) for p, t in zip(predictions, truths)])
    inside = sum(p is not None and centre_inside(p, t) for p, t in zip(predictions, truths))
    hits = int((ious >= 0.5).sum())
    n = len(truths)
    return {"num_samples": n, "acc@0.5": hits / n, "acc@0.5_ci": wilson_interval(hits, n),
            "miou": float(ious.mean()), "miou_ci": bootstrap_interval(ious),
            "centre_in_box": inside / n, "centre_in_box_ci": wilson_interval(inside, n),
            "unparsed": sum(p is None for p in predictions)}


def pointing(predictions: list, samples: list[dict]) -> dict:
    """What the centre of each predicted box lies on, read from the view's instance mask: the named object, another
    object, the room (floor, wall, ceiling), or nothing (no box, or a centre outside the image). Shares of samples."""
    counts = dict.fromkeys(POINTED_AT, 0)
    for prediction, sample in zip(predictions, samples):
        instance = read_instance_mask(sample["mask"])
        height, width = instance.shape
        if prediction is None:
            counts["nothing"] += 1
            continue
        x = int((prediction[0] + prediction[2]) / 2 * width / RELATIVE_SCALE)
        y = int((prediction[1] + prediction[3]) / 2 * height / RELATIVE_SCALE)
        if not (0 <= x < width and 0 <= y < height):
            counts["nothing"] += 1
        elif instance[y, x] == sample["instance_id"]:
            counts["named_object"] += 1
        else:
            counts["other_object" if instance[y, x] > 0 else "room"] += 1
    return {key: value / len(samples) for key, value in counts.items()}


def mean_box(samples: list[dict]) -> list[float]:
    """The constant baseline: the mean training box, rounded as an answer would be."""
    return np.mean([s["box"] for s in samples], axis=0).round().tolist()


@torch.no_grad()
def predict(model, processor, samples: list[dict], batch_size: int = 32) -> tuple[list, list[str]]:
    """Greedy answers to `samples` and the boxes read from them."""
    from gap_mllm.processing.collator import GapMllmDataCollator

    was_training = model.training
    model.eval()
    collator = GapMllmDataCollator(processor, train=False, padding_side="left")
    texts = []
    for start in range(0, len(samples), batch_size):
        batch = collator(collator_rows(samples[start : start + batch_size])).to(model.device)
        output = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
        texts += processor.decode_generated(output, batch["input_ids"])
    model.train(was_training)
    return [read_box(t) for t in texts], texts


def evaluate(model, processor, slices: dict[str, list[dict]], batch_size: int = 32) -> dict:
    """`score` of the model's answers on each named slice, with three example answers each."""
    report = {}
    for name, samples in slices.items():
        boxes, texts = predict(model, processor, samples, batch_size)
        report[name] = {**score(boxes, [s["box"] for s in samples]), "points_at": pointing(boxes, samples), "examples": texts[:3]}
    return report


# ------------------------------------------------------------------------------------------------- training


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR factor of (0-based) step s: linear warm-up to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""
    return lambda s: min(1.0, (s + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))


def _as_is(batch):
    return batch


class _StepBatches(torch.utils.data.Dataset):
    """Item `step`: the collated batch of `draw(step)` (so DataLoader workers decode the next steps' views)."""

    def __init__(self, draw, collator):
        self.draw, self.collator = draw, collator

    def __len__(self):
        return 1 << 62

    def __getitem__(self, step: int):
        return self.collator(collator_rows(self.draw(step)))


def train_steps(model, processor, draw, evaluate_fn, out_dir, steps: int, lr: float = 1e-3, eval_every: int = 500,
                warmup_steps: int = 50, workers: int = 0, time_limit_s: float | None = None, log=print) -> list[dict]:
    """The loop: AdamW on the parameters `FreezingPolicy()` leaves trainable, warm-up then cosine over `steps`,
    clipping at 1; step s trains on the samples `draw(s)` (decoded by `workers` DataLoader processes, 0: in this
    one). Every `eval_every` steps and at the last, `evaluate_fn(model, processor)` (a dict) is appended to
    `<out_dir>/log.jsonl` with the step and the mean of the last 20 losses, and the model, optimizer, scheduler
    and step are saved. Resumes from `out_dir`'s state when one exists (pass the model loaded from
    `<out_dir>/model` then). With `time_limit_s`, a call that has run that long saves the same state after its
    current step and returns, so a later call with the same arguments goes on where it stopped. Returns the
    evaluations of this call."""
    from gap_mllm.processing.collator import GapMllmDataCollator
    from gap_mllm.training.config import FreezingPolicy
    from gap_mllm.training.param_groups import apply_freezing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    apply_freezing(model, FreezingPolicy())
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(steps, warmup_steps))
    first = 1
    if (out_dir / STATE_FILE).exists():
        state = torch.load(out_dir / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first = state["step"] + 1
        log(f"resuming at step {first}")
    batches = torch.utils.data.DataLoader(_StepBatches(draw, GapMllmDataCollator(processor, train=True)),
                                          sampler=range(first, steps + 1), batch_size=None, collate_fn=_as_is, num_workers=workers,
                                          prefetch_factor=4 if workers else None)

    def save(step: int):
        model.save_pretrained(out_dir / "model")
        processor.save_pretrained(out_dir / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}, out_dir / STATE_FILE)

    started = time.monotonic()
    losses, evaluations = [], []
    model.train()
    for step, batch in zip(range(first, steps + 1), batches):
        loss = model(**batch.to(model.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            entry = {"step": step, "loss": float(np.mean(losses[-20:])), **evaluate_fn(model, processor)}
            log(json.dumps(entry))
            with open(out_dir / LOG_FILE, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            save(step)
            evaluations.append(entry)
        elif time_limit_s is not None and time.monotonic() - started >= time_limit_s:
            save(step)
            log(f"stopped after step {step} at the time limit ({time_limit_s:g} s); the same command resumes it")
            break
    return evaluations


class ShuffledDraw:
    """`draw(step)`: the step's `batch_size` samples, walking `samples` in one fixed shuffled order (cyclically)."""

    def __init__(self, samples: list, batch_size: int, seed: int = 0):
        self.samples, self.batch_size = samples, batch_size
        self.order = list(range(len(samples)))
        random.Random(seed).shuffle(self.order)

    def __call__(self, step: int) -> list:
        if self.batch_size == 0:
            return []
        return [self.samples[self.order[(step * self.batch_size + j) % len(self.order)]] for j in range(self.batch_size)]


def train(model, processor, train_samples: list[dict], slices: dict[str, list[dict]], out_dir, steps: int,
          batch_size: int = 16, lr: float = 1e-3, eval_every: int = 500, warmup_steps: int = 50, seed: int = 0,
          workers: int = 0, log=print) -> list[dict]:
    """`train_steps` on `train_samples` in batches of `batch_size`, evaluating `slices` (the model is saved to
    `<out_dir>/model`, the evaluations appended to `<out_dir>/log.jsonl`)."""
    return train_steps(model, processor, ShuffledDraw(train_samples, batch_size, seed),
                       lambda m, p: evaluate(m, p, slices), out_dir, steps, lr, eval_every, warmup_steps, workers=workers, log=log)


def load_run_start(model_dir, out_dir=None, device: str = "cpu"):
    """(model, processor) a run starts from: `<out_dir>/model` when `out_dir` holds a saved training state (the
    run resumes there), else the folder `model_dir`; the model on `device`."""
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    source = Path(out_dir) / "model" if out_dir is not None and (Path(out_dir) / STATE_FILE).exists() else model_dir
    return GapMllmForConditionalGeneration.from_pretrained(source).to(device), GapMllmProcessor.from_pretrained(source)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GAP-MLLM folder to start from (or to evaluate)")
    parser.add_argument("--data", required=True, help="SynthRooms output (needs synthrooms/ instance masks)")
    parser.add_argument("--out", help="run folder (log.jsonl, model/, training_state.pt); resumed when it exists")
    parser.add_argument("--order", choices=ORDERS, default="views_first")
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--views-per-object", type=int, default=4, help="training views per object")
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out samples (one view per object)")
    parser.add_argument("--evaluate-only", action="store_true", help="score --model without training")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="pixels the object covers in a sample's view")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the views (0: in this one)")
    args = parser.parse_args(argv)
    train_samples = referring_samples(args.data, "train", args.views_per_object, args.order, args.min_pixels, seed=0)
    held_out = referring_samples(args.data, "val", 1, args.order, args.min_pixels, seed=1)[: args.eval_samples]
    fit = [train_samples[i] for i in random.Random(5).sample(range(len(train_samples)), len(held_out))]
    slices = {"val": held_out, "train_fit": fit}
    constant = mean_box(train_samples)
    report = {"order": args.order, "num_train": len(train_samples),
              "constant_box": {name: {**score([constant] * len(s), [x["box"] for x in s]), "points_at": pointing([constant] * len(s), s)}
                               for name, s in slices.items()}}
    print(json.dumps(report), flush=True)
    if args.evaluate_only:
        report["model"] = evaluate(*load_run_start(args.model, device=args.device), slices)
    else:
        if args.out is None:
            parser.error("--out is required to train")
        model, processor = load_run_start(args.model, args.out, args.device)
        report["evaluations"] = train(model, processor, train_samples, slices, args.out, args.steps, args.batch_size,
                                      args.lr, args.eval_every, workers=args.workers, log=lambda line: print(line, flush=True))
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
