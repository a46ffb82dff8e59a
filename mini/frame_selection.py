"""Does the description before the views teach grounding's frame selection?

    python -m gap_mllm.mini.frame_selection --model mini/gap-mllm-mini --data runs/mini/data --out runs/frame-order/text \
        --order text_first [--steps 700] [--batch-size 16] [--lr 1e-3] [--eval-every 350] [--device cuda --workers 8]

Grounding's stage 1 (method.md §3.3) asks for the first clear frame k* of a described object among 8 views; no run
of the package has moved it off the prior (frame 0 every time: "Stage 2 continued on an H100", mini/README.md).
In the official layout the views come first and the description last, so in a causal LLM no view token can
attend to what is asked for: the position that writes the frame digit must find the object among all the views'
tokens at once. In one view and 2D, the description first taught the same LLM the finding in half the steps
(referring_2d.py, `--order text_first`). This run asks whether that carries to frame selection.

Samples are the package's grounding stage-1 records (the same views, description and `{"frame": k}` answer):

- `views_first`: the record's prompt verbatim (`Frame-0: <image>...Frame-7: <image>` then the task text);
- `text_first`: the same words, with the instruction and the description before the views and the output
  instruction after them (a deviation from the official format, for this measurement only).

Scores on the validation split (the test split is never read): the frame chosen right (Wilson interval), how
often each frame is answered, answers that do not parse, and the prior (always the most frequent training k*);
teacher-forced, the probability the model gives the true frame's digit against the training k* frequencies
(`frame_distributions`), which moves before the greedy answer leaves the prior. `--evaluate-only --answers FILE`
writes the per-record rows; `--compare A B` pairs two such files (bootstrap intervals of A − B).
Training, resuming and the log are referring_2d.py's loop.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from gap_mllm.evaluation.confidence import wilson_interval
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scannet_layout import posed_images_dir
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1, extract_query

from .referring_2d import ShuffledDraw, collator_rows, load_run_start, train_steps

ORDERS = ("views_first", "text_first")
TASK = GROUNDING_STAGE1
MAX_NEW_TOKENS = 16  # the answer `{"frame": 7}` is 6 tokens of the mini tokenizer


def text_first_prompt(num_views: int, query: str) -> str:
    """The stage-1 task text split at its output instruction, the labelled views in between:
    `Localize ... Text: <query>\\n` + `Frame-0: <image>...` + `\\nOutput a JSON dictionary ...`."""
    text = TASK.task_text(query=query)
    cut = text.index("Output a JSON")
    views = "".join(f"Frame-{i}: <image>" for i in range(num_views))
    return text[:cut] + views + "\n" + text[cut:]


def frame_samples(data_root, split: str, order: str = "views_first") -> list[dict]:
    """Grounding stage-1 records of `split` as `{"id", "images" (paths), "prompt", "answer", "frame"}` in `order`."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
    media = posed_images_dir(data_root)
    samples = []
    for number, record in enumerate(load_annotation_file(find_annotation_file(data_root, TASK, split))):
        human, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        frame = TASK.parse(answer).frame
        if frame is None:
            raise ValueError(f"{split} record {record.get('id', number)!r} has no frame in its answer {answer!r}")
        images = [str(media / p) for p in record["images"]]
        prompt = human if order == "views_first" else text_first_prompt(len(images), extract_query(human))
        samples.append({"id": record.get("id", f"{TASK.name}_{number}"), "images": images, "prompt": prompt,
                        "answer": answer, "frame": frame})
    if not samples:
        raise ValueError(f"no {TASK.name} record in the {split} split of {data_root}")
    return samples


def score_frames(answered: list, truths: list[int]) -> dict:
    """Frame accuracy (Wilson 95 %) of `answered` frames (None: unparsable, counted wrong) against `truths`,
    with how often each frame was answered."""
    if len(answered) != len(truths) or not truths:
        raise ValueError(f"need as many answers as truths, at least one (got {len(answered)} and {len(truths)})")
    right = sum(a == t for a, t in zip(answered, truths))
    low, high = wilson_interval(right, len(truths))
    counts = Counter("unparsable" if a is None else str(a) for a in answered)
    return {"frame_accuracy": right / len(truths), "interval": [low, high], "n": len(truths),
            "unparsable": counts.get("unparsable", 0), "answered": dict(sorted(counts.items()))}


def prior_frame(samples: list[dict]) -> int:
    """The most frequent k* of `samples` (ties: the lowest frame)."""
    counts = Counter(s["frame"] for s in samples)
    return min(counts, key=lambda f: (-counts[f], f))


def predict_frames(model, processor, samples: list[dict], batch_size: int = 32) -> tuple[list, list[str]]:
    """Greedy answers to `samples` and the frames parsed from them (None where none parses)."""
    import torch

    from gap_mllm.processing.collator import GapMllmDataCollator

    was_training = model.training
    model.eval()
    collator = GapMllmDataCollator(processor, train=False, padding_side="left")
    texts = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = collator(collator_rows(chunk)).to(model.device)
            output = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
            texts += processor.decode_generated(output, batch["input_ids"])
    model.train(was_training)
    frames = [TASK.parse(text, num_frames=len(s["images"])).frame for text, s in zip(texts, samples)]
    return frames, texts


def frame_distributions(model, processor, samples: list[dict], batch_size: int = 16):
    """Teacher-forced: the model's distribution over the frame digits `0 .. V-1` (V = views of the sample) at
    the answer's digit, renormalised over those digits, as `[N, V]` probabilities (V equal for all samples).

    Greedy answers show only the most likely frame; this shows whether the true frame's probability moves
    while the answer still is the prior. The digit is the answer's only token that is one of the frame digits
    (`{"frame": k}`; the key's letters and punctuation are other tokens)."""
    import torch

    from gap_mllm.processing.collator import GapMllmDataCollator
    from gap_mllm.model_inputs import IGNORE_INDEX

    views = {len(s["images"]) for s in samples}
    if len(views) != 1 or max(views) > 10:
        raise ValueError(f"samples must share one view count of at most 10 (got {sorted(views)})")
    digits = [processor.tokenizer.convert_tokens_to_ids(str(k)) for k in range(views.pop())]
    was_training = model.training
    model.eval()
    collator = GapMllmDataCollator(processor, train=True)
    rows = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collator(collator_rows(samples[start : start + batch_size])).to(model.device)
            labels = batch.pop("labels")
            logits = model(**batch).logits  # [B, T, vocab]
            is_digit = (labels != IGNORE_INDEX) & torch.isin(labels, torch.tensor(digits, device=labels.device))
            if not bool((is_digit.sum(dim=1) == 1).all()):
                raise ValueError("every answer must hold exactly one frame digit token")
            position = is_digit.int().argmax(dim=1)  # [B]: the digit; its logits sit one position earlier
            chosen = logits[torch.arange(len(position)), position - 1][:, digits]  # [B, V]
            rows.append(torch.softmax(chosen.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(rows).numpy()


def frame_prior(samples: list[dict], num_frames: int):
    """The share of each k* `0 .. num_frames-1` among `samples` (the constant answer distribution)."""
    counts = Counter(s["frame"] for s in samples)
    return [counts.get(k, 0) / len(samples) for k in range(num_frames)]


def answer_rows(model, processor, samples: list[dict], batch_size: int = 32) -> list[dict]:
    """Per sample: `{"id", "frame" (k*), "answered" (greedy, None if unparsable), "p_true" (teacher-forced
    probability of k*'s digit among the views' digits), "answer" (text)}`."""
    frames, texts = predict_frames(model, processor, samples, batch_size)
    probabilities = frame_distributions(model, processor, samples, batch_size)
    return [{"id": s["id"], "frame": s["frame"], "answered": f, "p_true": float(p[s["frame"]]), "answer": t}
            for s, f, t, p in zip(samples, frames, texts, probabilities)]


def score_rows(rows: list[dict], prior) -> dict:
    """score_frames of the greedy answers and, under "digit", the mean log-likelihood of k* (model and prior)."""
    import numpy as np

    truths = [row["frame"] for row in rows]
    p_true = np.array([row["p_true"] for row in rows])
    digit = {"log_likelihood": float(np.log(p_true).mean()),
             "prior_log_likelihood": float(np.log(np.asarray(prior, dtype=float)[truths]).mean()),
             "mean_true_probability": float(p_true.mean())}
    return {**score_frames([row["answered"] for row in rows], truths), "digit": digit,
            "examples": [row["answer"] for row in rows[:3]]}


def evaluate(model, processor, held_out: list[dict], prior, batch_size: int = 32) -> dict:
    """`{"val": score_rows(...)}` of the model's answers to `held_out` against the training prior."""
    return {"val": score_rows(answer_rows(model, processor, held_out, batch_size), prior)}


def compare(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """Paired differences A − B (bootstrap 95 %) on the same records: frame chosen right, log-likelihood of k*."""
    import numpy as np

    from gap_mllm.evaluation.confidence import paired_difference

    if [row["id"] for row in rows_a] != [row["id"] for row in rows_b]:
        raise ValueError("the two answer files do not hold the same records in the same order")
    right = lambda rows: np.array([row["answered"] == row["frame"] for row in rows], dtype=float)  # noqa: E731
    log_p = lambda rows: np.log(np.array([row["p_true"] for row in rows]))  # noqa: E731
    return {"num_samples": len(rows_a), "frame_accuracy": paired_difference(right(rows_a), right(rows_b)),
            "log_likelihood": paired_difference(log_p(rows_a), log_p(rows_b))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GAP-MLLM folder to start from (or to evaluate)")
    parser.add_argument("--data", help="SynthRooms output with grounding stage-1 annotations")
    parser.add_argument("--out", help="run folder (log.jsonl, model/, training_state.pt); resumed when it exists")
    parser.add_argument("--order", choices=ORDERS, default="views_first")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=350)
    parser.add_argument("--eval-samples", type=int, default=None, help="the first N validation records (default: all)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--evaluate-only", action="store_true", help="score --model without training")
    parser.add_argument("--time-limit-s", type=float, default=None, help="save and stop after this long; the same command resumes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the views (0: in this one)")
    parser.add_argument("--answers", help="with --evaluate-only: write the per-record rows here (JSON lines)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired differences of two --answers files")
    args = parser.parse_args(argv)
    if args.compare:
        rows = [[json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()] for path in args.compare]
        report = compare(*rows)
        print(json.dumps(report), flush=True)
        return report
    if args.model is None or args.data is None:
        parser.error("--model and --data are needed (or --compare A B)")
    train_samples = frame_samples(args.data, "train", args.order)
    held_out = frame_samples(args.data, "val", args.order)[: args.eval_samples]
    prior = prior_frame(train_samples)
    shares = frame_prior(train_samples, len(held_out[0]["images"]))
    report = {"order": args.order, "num_train": len(train_samples), "prior_frame": prior, "prior_shares": shares,
              "prior": score_frames([prior] * len(held_out), [s["frame"] for s in held_out])}
    print(json.dumps(report), flush=True)

    def evaluate_fn(model, processor):
        return evaluate(model, processor, held_out, shares, args.eval_batch_size)

    if args.evaluate_only:
        rows = answer_rows(*load_run_start(args.model, device=args.device), held_out, args.eval_batch_size)
        report["model"] = {"val": score_rows(rows, shares)}
        if args.answers:
            Path(args.answers).write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        if args.out is None:
            parser.error("--out is required to train")
        model, processor = load_run_start(args.model, args.out, args.device)
        report["evaluations"] = train_steps(model, processor, ShuffledDraw(train_samples, args.batch_size, seed=0), evaluate_fn, args.out,
                                            args.steps, args.lr, args.eval_every, workers=args.workers,
                                            time_limit_s=args.time_limit_s, log=lambda line: print(line, flush=True))
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
