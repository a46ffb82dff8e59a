"""`--quantize` on GAP-MLLM-Mini: memory, CPU time and answers against the model as saved (not a test).

Each mode runs in a process of its own (its peak resident memory is its own), on one torch thread:
  saved   the weights as saved (float32): what the front ends load without --quantize
  bf16    `dtype=torch.bfloat16`: every weight in bfloat16
  int8    `--quantize int8`: the language model's Linear weights int8 (optimum-quanto), the rest as saved
  int4    `--quantize int4`: the same, int4 weights (group-wise)
  torchao-int8  the candidate not chosen: torchao's int8 weight-only config (`TorchAoConfig(Int8WeightOnlyConfig())`)
                through `from_pretrained`, the same modules skipped (torchao 0.18 has no int4 layout for the CPU; HQQ
                does not load through transformers 5.23's loader: "HQQ is not available yet")
and answers the Mini's four tasks (detection, grounding, captioning, reconstruction: each bundled room's own request,
constrained decoding, the front ends' default) on --rooms held-out SynthRooms rooms (the bundled examples' seeds,
`cli/example_rooms.py`: no training, validation or test split uses them), through `gap-mllm predict`'s loading
(`load_model_and_processor`) and `run_task`. Printed per mode: the bytes of the weights (a quantized tensor's data and
scales), all and the language model's, peak resident memory of the process (MiB), its growth
over the process before the load (MiB), CPU seconds of the load and per answer (mean), the share of parsed answers equal
to the saved model's (`TaskResult.summary()`), and the rooms' reference scores (detection: boxes found at IoU > 0.25;
grounding: mean IoU; reconstruction: mean point error, labels right).

    OMP_NUM_THREADS=1 python bench/bench_quantize.py [--rooms 3] [--modes saved bf16 int8 int4 torchao-int8]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time

TASKS = ("detection", "grounding", "captioning", "reconstruction")
MODES = ("saved", "bf16", "int8", "int4", "torchao-int8")


def rss_mib() -> float:
    """The current resident memory of this process, MiB (Linux: /proc/self/statm)."""
    import os

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tensor_bytes(tensor) -> int:
    """The bytes `tensor` holds: a quantizer's tensor subclass counted by its inner tensors (data, scales)."""
    import torch

    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)


def run_mode(mode: str, rooms: int) -> dict:
    """Load the Mini in `mode`, answer every room's request of every task; what the module docstring lists."""
    import torch

    torch.set_num_threads(1)
    from gap_mllm.cli.example_reference import reference_score
    from gap_mllm.cli.loading import load_model_and_processor, load_model_source
    from gap_mllm.cli.scenes import synthetic_scene
    from gap_mllm.cli.task_request import TaskRequest
    from gap_mllm.cli.tasks import run_task

    scenes = [synthetic_scene(seed) for seed in range(rooms)]  # rendered before the load: not in its figures
    before = rss_mib()
    start = time.process_time()
    if mode in ("bf16", "torchao-int8"):
        found = load_model_source("mini")
        from transformers import AutoModel, TorchAoConfig

        if mode == "bf16":
            kwargs = {"dtype": torch.bfloat16}
        else:
            from torchao.quantization import Int8WeightOnlyConfig

            kwargs = {"quantization_config": TorchAoConfig(Int8WeightOnlyConfig())}
        model = AutoModel.from_pretrained(found.source, trust_remote_code=True, **kwargs).eval()
        processor = found.processor
    else:
        model, processor, _ = load_model_and_processor("mini", quantize=None if mode == "saved" else mode)
    load_s = time.process_time() - start
    language = sum(tensor_bytes(t) for n, t in model.state_dict().items() if n.startswith("model.language_model."))
    weights = sum(tensor_bytes(t) for t in model.state_dict().values())
    answers, scores, seconds = {}, {}, []
    for index, scene in enumerate(scenes):
        for task in TASKS:
            given = scene.example_inputs.get(task, {})
            request = TaskRequest(task, query=given.get("query"), box=given.get("box") if task == "captioning" else None,
                                  marker=given.get("marker"))
            start = time.process_time()
            result = run_task(model, processor, scene.views, request)
            seconds.append(time.process_time() - start)
            answers[f"{index}/{task}"] = result.summary()
            scores[f"{index}/{task}"] = reference_score(scene, task, given, result)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "weights_mib": weights / 2**20, "language_mib": language / 2**20, "peak_mib": peak, "growth_mib": peak - before, "load_cpu_s": load_s,
            "answer_cpu_s": sum(seconds) / len(seconds), "answers": answers, "scores": scores}


def summary_of_scores(scores: dict) -> str:
    """The rooms' reference scores in one line (module docstring)."""
    found = total = 0
    ious, errors, labels = [], [], []
    for key, text in scores.items():
        if match := re.match(r"(\d+) of (\d+) reference", text):
            found, total = found + int(match[1]), total + int(match[2])
        elif match := re.match(r"IoU ([\d.]+)", text):
            ious.append(float(match[1]))
        elif key.endswith("grounding"):
            ious.append(0.0)  # no box parsed
        elif match := re.match(r"point error ([\d.]+) m; label (\w+)", text):
            errors.append(float(match[1]))
            labels.append(match[2] == "correct")
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return (f"detection {found}/{total} boxes; grounding IoU {mean(ious):.2f}; reconstruction error "
            f"{mean(errors):.2f} m, labels {sum(labels)}/{len(labels)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child process: one mode, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args.rooms)))
        return
    results = {}
    for mode in args.modes:
        done = subprocess.run([sys.executable, __file__, "--one", mode, "--rooms", str(args.rooms)],
                              capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = results.get("saved")
    print(f"GAP-MLLM-Mini, {args.rooms} held-out rooms x {len(TASKS)} tasks = {args.rooms * len(TASKS)} answers per "
          "mode, one torch thread")
    print("| mode | weights MiB (language model) | peak RSS MiB | growth MiB | load CPU-s | CPU-s / answer | same parsed "
          "answer as saved | scores |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, result in results.items():
        same = "" if reference is None else (
            f"{sum(result['answers'][k] == v for k, v in reference['answers'].items())}/{len(reference['answers'])}")
        print(f"| {mode} | {result['weights_mib']:.1f} ({result['language_mib']:.1f}) | {result['peak_mib']:.0f} | {result['growth_mib']:.0f} | {result['load_cpu_s']:.2f} | "
              f"{result['answer_cpu_s']:.2f} | {same} | {summary_of_scores(result['scores'])} |")


if __name__ == "__main__":
    main()
