"""Evaluation at benchmark scale: time per 1,000 grounding queries, one at a time vs batched + scene reuse.

    python bench/bench_eval_scale.py --data DATA --split val --queries 120 --batch-size 8 [--two-processes]
    python bench/bench_eval_scale.py --real-size --device cuda --data DATA --queries 11 --batch-size 8 \
        --arms batched_reuse --compile-decoding on        # on a GPU (make gpu-figures), ScanRefer-shaped DATA

Arms, on the same first N grounding queries of the split (two-stage ScanRefer protocol, the official budgets and
stop rules), each answered and scored as `gap-mllm evaluate` does it (the runner's requests, scene groups and batches,
the task's scoring), on one model built or loaded once per process (the real size is never saved: three 6.4 GB
save / loads per run took the whole budget of a GPU call), in one run:

  one_at_a_time    batch 1, every query and stage a full model call (`scene_reuse=False`): the official protocol
  batched_reuse    queries of one scene batched (`--batch-size`) and answered from one encoding of the scene
  two_processes    (with --two-processes) the batched path sharded over 2 processes by `accelerate launch`
                   (wall time including the processes' start-up and model loading, stated as such)

The answers of every arm are checked equal to the one-at-a-time answers before any figure is printed (the paths
must not change what is scored) where the model computes in float32 (mini, small); a bfloat16 model (the real size)
rounds a batched, padded row differently from a lone one, and a random-weight model's near-equal logits then pick
other tokens (seen on the H100: 2 of 8 real-size answers equal), so there the figures are kept with the count of
equal answers (`answers_equal_to_one_at_a_time`), as bench_real_size's scene reuse does; the equality itself is proven
in float32 (tests/test_eval_scene_reuse.py). `--compile-decoding` is the evaluation's switch (default auto: compiled
decode steps on CUDA); with compilation each arm is run once untimed first, since compiling (about 30 s at the real
size) would otherwise swamp a small slice; that run's figures are kept as the arm's `untimed_run` (compiling included),
written before the timed run starts, so an arm killed at its budget keeps them. Building / loading the model is timed
once and left out of the per-query figures.
Each arm's time is split by stage (eval_stage_timer.py: data + processor, VGGT, ViT, LLM prefill, decode, scoring,
other) and its slowest stage named, so a figure says where the time goes; the same split is kept per stage of the task
with the views encoded at each. Per-1,000 and full-split figures are extrapolations of the measured per-query time
(linear in the number of queries), printed as such. For grounding, ScanRefer val's minutes are also estimated from
what each part of the work scales with (`scanrefer_estimate`: the views ScanRefer encodes at each stage, its queries),
on a ScanRefer-shaped slice only: the default SynthRooms preset (640×480 frames, 32 at stage 1, up to 19 at stage 2;
`gap-mllm synth --scenes 0 --val-scenes 1`); a Mini-shaped slice (8 and at most 7 views of 160×128 frames) is refused
by name, since the geometry encoder's seconds per view grow with the views of a scene. `--arms` runs some arms only,
`--preprocessing-mode` picks the random-weight processor's image pipeline (the real size: "official_inference", 221
visual tokens per ScanNet frame, as ScanRefer is evaluated with a converted official checkpoint). Captioning and
detection slices (`--captions`, `--detections`) give the per-sample time of those tasks for their extrapolations.

`--model-size`: `mini` (the embedded GAP-MLLM-Mini, default), `small` (the package's small test configuration,
random weights, built in code) or `real` (Qwen3-VL-2B + VGGT-1B, random weights, built in code: bench/real_size_model.py;
`--real-size` is the same; refused without a CUDA device). Random weights rarely stop early, so `--max-new-tokens`
caps the answers of those sizes (default 64).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from needs_gpu import require_cuda  # noqa: E402

from gap_mllm.cli.command_arguments import add_compile_decoding_argument  # noqa: E402
from gap_mllm.generation import decode_compile_config  # noqa: E402
from gap_mllm.processing.tasks.grounding import OFFICIAL_STAGE2_NEIGHBOURS  # noqa: E402
from gap_mllm.processing_gap_mllm import PREPROCESSING_MODES  # noqa: E402
from gap_mllm.speedups import static_cache_pool  # noqa: E402

# ScanRefer val as the official evaluation answers it (docs/method.md §3.4): 9,508 descriptions of 2,068 objects in
# 141 scenes; stage 1 sees the scene's 32 frames, stage 2 the selected frame and 9 posed frames each way (19)
SCANREFER_VAL = {"queries": 9508, "objects": 2068, "scenes": 141,
                 "stage_views": (32, 2 * OFFICIAL_STAGE2_NEIGHBOURS + 1)}
# split sizes of the extrapolations: ScanRefer val's queries; Scan2Cap evaluates the ScanRefer val objects;
# detection: one 4-frame clip per ScanNet val scene (the official file's size is not known here: an assumption)
FULL_SPLITS = {"grounding": ("ScanRefer val", SCANREFER_VAL["queries"]),
               "captioning": (f"Scan2Cap val ({SCANREFER_VAL['objects']:,} ScanRefer val objects)",
                              SCANREFER_VAL["objects"]),
               "detection": ("ScanNet val, one clip per scene (assumed)", 312)}
ARMS = {"one_at_a_time": False, "batched_reuse": True}  # arm -> scene reuse


def build_model(size: str, device: str, padded_vocab: bool = False,
                preprocessing_mode: str = "grid"):
    """`(model, processor)` of `size` in memory: the embedded Mini loaded from its folder, or a random-weight model built
    in code, once per process (the real size: 6.4 GB, never written to disk). A random model emits any id of its
    vocabulary, so its tokenizer must decode them all: the real size's (Qwen's 151,936 ids) and, with `padded_vocab`,
    the small size's get the tiny tokenizer padded with filler tokens to Qwen's vocabulary
    (`engine_bench_model.padded_tokenizer`, as bench_engines.py); without it the answers of a random real-size model
    ended in "token id 30979, outside the tokenizer's 720 ids". `preprocessing_mode` is the random-weight processor's
    (the real size's ScanRefer figures use "official_inference", as a converted official checkpoint evaluates: 221
    visual tokens per ScanNet frame); the Mini keeps its folder's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if size == "mini":
        from gap_mllm.evaluation.generation import register_auto_classes
        from gap_mllm.mini import default_model_path

        folder = str(default_model_path())
        register_auto_classes()  # the package's classes load the folder (as BatchGenerator does)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).to(device).eval()
        return model, AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    from engine_bench_model import SPECIAL_TOKEN_FIELDS, padded_tokenizer
    from real_size_model import real_size_config, small_config

    from gap_mllm import GapMllmForConditionalGeneration
    from gap_mllm.cli.real_size import QWEN3_VL_2B_TEXT
    from gap_mllm.processing_gap_mllm import GapMllmProcessor
    from gap_mllm.tiny.tiny_tokenizer import build_tiny_tokenizer

    config = small_config() if size == "small" else real_size_config()
    text_config = config.text_config
    if size == "real" or padded_vocab:
        text_config.vocab_size = QWEN3_VL_2B_TEXT["vocab_size"]
        tokenizer = padded_tokenizer(text_config.vocab_size)
    else:
        tokenizer = build_tiny_tokenizer()
    for key, token in SPECIAL_TOKEN_FIELDS.items():  # the tokenizer's special ids (the real size names Qwen's)
        setattr(config, key, tokenizer.convert_tokens_to_ids(token))
    text_config.pad_token_id = tokenizer.pad_token_id
    dtype = torch.bfloat16 if size == "real" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = GapMllmForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), GapMllmProcessor.from_tokenizer(tokenizer, preprocessing_mode=preprocessing_mode)


def model_folder(size: str, device: str, out: Path, padded_vocab: bool = False,
                 preprocessing_mode: str = "grid") -> Path:
    """The model folder of `size` (the two-process arm's `gap-mllm evaluate` loads a folder): the embedded Mini's, or
    `build_model`'s random model saved under `out`."""
    if size == "mini":
        from gap_mllm.mini import default_model_path

        return default_model_path()
    model, processor = build_model(size, device, padded_vocab, preprocessing_mode)
    folder = out / f"model_{size}"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder


def load_slice(data, split: str, task_name: str, limit: int):
    """`(task, records, ids, media_root)`: the first `limit` records of `task_name`'s annotation file of `split`."""
    from gap_mllm.evaluation.tasks import get_task, sample_id
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import load_annotation_file
    from gap_mllm.processing.scannet_layout import posed_images_dir

    task = get_task(task_name)
    records = load_annotation_file(find_annotation_file(data, task.annotation_task, split))[:limit]
    return task, records, [sample_id(r, i) for i, r in enumerate(records)], posed_images_dir(data)


def annotated_stage2_frames(request_for, task, records, media_root):
    """`request_for` whose later stages follow the annotated stage-1 answer (the task's oracle) instead of the
    model's: a random-weight model's frame selection is noise that always falls back to frame 0, so all the queries
    of a scene would share one stage-2 scene and batch as a trained model's (each query's own selected frame and
    neighbours) never do; the stage-1 call itself is still the model's (`--stage2-frames`)."""
    oracle = {}

    def following_annotation(i, stage, previous):
        if stage == 0:
            return request_for(i, stage, previous)
        if i not in oracle:
            oracle[i] = task.oracle(records[i], media_root)
        return request_for(i, stage, [*oracle[i][:stage], *previous[stage:]])

    return following_annotation


def run_arm(generator, slice_, batch_size: int, scene_reuse: bool,
            stage2_frames: str = "answered") -> tuple[dict[str, list[str]], dict, dict]:
    """Answer and score one slice in memory as `gap-mllm evaluate` does (runner.sample_requests, scene_groups,
    answer_in_batches, the task's evaluate): `(answers by sample id, seconds by stage, {"scenes_encoded",
    "generate_calls", "task_stages", "graphs_compiled", "static_cache_allocations"})`, where "task_stages" gives, per
    stage of the task (grounding: frame selection, then the box), its seconds by stage, the views the geometry encoder
    encoded and the views its requests asked about (`views_requested`: one count per request), "graphs_compiled" the
    graphs torch.compile made during the run (`compiled_graphs`) and "static_cache_allocations" the times compiled
    decoding's static cache was allocated (speedups.py: a timed run after its untimed one, 0, so its decode
    steps meet the addresses their CUDA graphs were recorded with). On CUDA also "cuda_graphs_recorded" and
    "cuda_graph_skips" (`cuda_graphs_recorded`, `cuda_graph_skips`). The generator's scenes are forgotten first: an
    untimed run before would otherwise leave them encoded, and the timed one would leave the towers out."""
    from eval_stage_timer import StageTimer

    from gap_mllm.evaluation import scene_generation
    from gap_mllm.evaluation.batched_answers import answer_in_batches
    from gap_mllm.evaluation.runner import sample_requests

    task, records, ids, media_root = slice_
    request_for = sample_requests(task, records, ids, media_root)
    if stage2_frames == "annotated":
        request_for = annotated_stage2_frames(request_for, task, records, media_root)
    groups = scene_generation.scene_groups({i: task.request(records[i], 0, [], media_root) for i in range(len(records))})
    generator.forget_scenes()
    encoded_before = generator.scenes_encoded
    timer = StageTimer(generator)
    views_requested: dict[int, list[int]] = {}
    answering = request_for

    def request_for(i, stage, previous):  # answer_in_batches builds a stage's requests before answering them
        timer.task_stage = stage
        request = answering(i, stage, previous)
        views_requested.setdefault(stage, []).append(len(request.images))
        return request

    cuda = generator.model.device.type == "cuda"  # CUDA graphs exist there only
    graphs_before, skips_before = compiled_graphs(), cuda_graph_skips()
    recorded_before = cuda_graphs_recorded() if cuda else None
    pool = static_cache_pool(generator.model)
    allocations_before = pool.allocations
    start = time.perf_counter()
    answers = {}
    try:
        for batch, texts in answer_in_batches(generator, request_for, groups, task.stages, batch_size, scene_reuse):
            for j, i in enumerate(batch):
                answers[ids[i]] = texts[j]
        stages = timer.seconds()
        task_stages = [{"seconds": seconds, "views_encoded": timer.views_by_stage.get(stage, 0),
                        "views_requested": views_requested.get(stage, [])}
                       for stage, seconds in timer.seconds_by_stage().items()]
        counts = {"scenes_encoded": generator.scenes_encoded - encoded_before, "generate_calls": timer.generate_calls,
                  "task_stages": task_stages, "graphs_compiled": compiled_graphs() - graphs_before,
                  "static_cache_allocations": pool.allocations - allocations_before}
        if cuda:
            recorded = cuda_graphs_recorded()
            counts["cuda_graphs_recorded"] = None if recorded is None else recorded - recorded_before
            counts["cuda_graph_skips"] = cuda_graph_skips() - skips_before
    finally:
        timer.remove()
    scoring = time.perf_counter()
    task.evaluate(records, [answers[sid] for sid in ids], meteor=False)
    stages["scoring"] = time.perf_counter() - scoring
    stages["total"] = time.perf_counter() - start
    stages["other"] = stages["total"] - sum(v for k, v in stages.items() if k != "total")
    return answers, stages, counts


def compiled_graphs() -> int:
    """The graphs torch.compile has made in this process so far (dynamo's count): a run's difference is what it
    compiled (the decode step's: at most 5 in a run, gap_mllm/generation.py; a timed run after its untimed one, 0)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


_RECORDED: dict = {"counting": False, "count": 0}  # CUDA graphs recorded by torch's cudagraph trees in this process


def cuda_graphs_recorded() -> int | None:
    """The CUDA graphs torch's cudagraph trees have recorded in this process since the first call (which starts the
    count): compiled decoding's, one per shape of the decode step, and one more each time a call's static cache sat at
    other addresses than at the recording (torch <= 2.11 stops replaying a graph re-recorded 128 times:
    speedups.py). Counted by wrapping `CUDAGraphTreeManager.record_function`, a private torch method (a
    bench's instrument, not the package's): None for a torch without it."""
    if not _RECORDED["counting"]:
        _RECORDED["counting"] = True
        from torch._inductor import cudagraph_trees

        record_function = getattr(cudagraph_trees.CUDAGraphTreeManager, "record_function", None)
        if record_function is None:
            _RECORDED["count"] = None
            return None

        def counted(self, *args, **kwargs):
            _RECORDED["count"] += 1
            return record_function(self, *args, **kwargs)

        cudagraph_trees.CUDAGraphTreeManager.record_function = counted
    return _RECORDED["count"]


def cuda_graph_skips() -> int:
    """The times torch's cudagraph trees ran a compiled graph without CUDA graphs (torch's own counter)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def raw_answers(out: Path) -> dict[str, list[str]]:
    from gap_mllm.evaluation import reports

    return reports.read_raw_outputs(out)


def run_two_processes(task, data, split, limit, model, out: Path, batch_size: int, max_new_tokens) -> float:
    launcher = Path(sys.executable).parent / "accelerate"
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "0", "-m", "gap_mllm.cli.evaluate", "--task", task,
               "--data", str(data), "--split", split, "--model", str(model), "--out", str(out), "--batch-size", str(batch_size),
               "--limit", str(limit), "--no-plots", "--quiet", "--no-meteor"]
    if max_new_tokens is not None:
        command += ["--max-new-tokens", str(max_new_tokens)]
    threads = max(1, (os.cpu_count() or 2) // 2)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"accelerate launch failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def equal_answers(texts: dict[str, list[str]], reference: dict[str, list[str]]) -> int:
    """How many samples of `texts` (sample id -> raw answers of its stages) answer exactly as in `reference`."""
    return sum(texts.get(sample) == answer for sample, answer in reference.items())


def count_scenes(records) -> tuple[int, int]:
    """(samples, scenes) of a slice's records (`load_slice`)."""
    from gap_mllm.processing.held_out import record_scene_id

    return len(records), len({record_scene_id(r) for r in records})


def scanrefer_estimate(arm: dict, samples: int, scene_reuse: bool) -> dict:
    """ScanRefer val's minutes from one arm's figures (`run_arm`'s) on a ScanRefer-shaped grounding slice, by what
    each part of the work scales with, instead of a flat per-query time:

        the views            reading and processing the frames, the geometry encoder, the vision tower and the LLM
                             prefill, in seconds per view encoded at each stage (the processor reads a scene's frames
                             where the model encodes them), × the views ScanRefer val encodes there: stage 1, its 141
                             scenes' 32 frames once each with scene reuse (every query's without); stage 2, the
                             selected frame and 9 posed frames each way (19), between once per object (2,068:
                             descriptions of one object select the same frame and share that scene, `low`) and once
                             per frame stage 1 can select, 32 per scene (4,512, `high`: stage 2 encodes each scene
                             once, batched_answers.stage_batches; without scene reuse once per query, 9,508);
        the rest             decoding and the loop's own time: seconds per query × 9,508.

    The seconds per view carry over only at ScanRefer's views per scene (the geometry encoder attends across all the
    views of a scene), so a slice whose stage-1 requests do not all have 32 views, or whose stage-2 requests never
    reach 19, gets `refused` with the reason and no minutes (the H200 run's ~22 minutes came from the Mini's 8 and
    at most 7 views of 160×128 frames). Compiling the decode step (a few graphs per run, gap_mllm/generation.py) is
    not in it."""
    stages = arm.get("task_stages", [])
    views = [stage["views_requested"] for stage in stages]
    wanted = SCANREFER_VAL["stage_views"]
    if len(views) != 2 or set(views[0]) != {wanted[0]} or max(views[1]) != wanted[1]:
        shape = " and ".join(f"stage {k + 1} {min(v)}-{max(v)}" for k, v in enumerate(views) if v) or "none"
        return {"refused": f"not a ScanRefer-shaped slice: its requests have {shape} views, ScanRefer's {wanted[0]} "
                           f"and up to {wanted[1]} (write the data with the default SynthRooms preset)"}
    if any(stage["views_encoded"] == 0 for stage in stages):
        return {"refused": "a stage encoded no view in the timed run (its scenes were kept from an earlier run)"}
    towers = [sum(stage["seconds"][k] for k in ("data_processor", "vggt", "vit", "prefill_llm")) for stage in stages]
    per_view = [seconds / stage["views_encoded"] for seconds, stage in zip(towers, stages)]
    per_query = (arm["stages_s"]["total"] - sum(towers) - arm["stages_s"]["scoring"]) / samples
    n = SCANREFER_VAL
    stage1_views = (n["scenes"] if scene_reuse else n["queries"]) * wanted[0]
    selectable = min(n["queries"], n["scenes"] * wanted[0])  # a scan's stage-2 scenes: one per frame it can select
    bounds = {"low": (stage1_views, (n["objects"] if scene_reuse else n["queries"]) * wanted[1]),
              "high": (stage1_views, (selectable if scene_reuse else n["queries"]) * wanted[1])}
    minutes = {name: (sum(s * v for s, v in zip(per_view, counts)) + per_query * n["queries"]) / 60
               for name, counts in bounds.items()}
    return {"minutes_low": minutes["low"], "minutes_high": minutes["high"], "seconds_per_view_encoded": per_view,
            "seconds_per_query_rest": per_query, "views_encoded": {name: list(v) for name, v in bounds.items()}}


def arm_figures(task: str, stages: dict, counts: dict, samples: int, scene_reuse: bool) -> dict:
    """One run of an arm (`run_arm`'s seconds by stage and counts) as the figures file keeps it: seconds, per sample,
    the counts, the stages and the slowest, and for grounding ScanRefer val's minutes (`scanrefer_estimate`)."""
    seconds = stages["total"]
    figures = {"seconds": seconds, "per_sample_s": seconds / samples, **counts, "stages_s": stages,
               "slowest_stage": max((k for k in stages if k not in ("total", "other")), key=stages.get)}
    if task == "grounding":
        figures["scanrefer_val"] = scanrefer_estimate(figures, samples, scene_reuse)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root (SynthRooms or the ScanNet posed_images layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--queries", type=int, default=120, help="grounding queries measured (the first N of the split)")
    parser.add_argument("--captions", type=int, default=0, help="also time N captioning samples (both paths)")
    parser.add_argument("--detections", type=int, default=0, help="also time N detection samples (both paths)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--two-processes", action="store_true", help="also the batched path on 2 processes (accelerate launch)")
    parser.add_argument("--model-size", choices=("mini", "small", "real"), default="mini")
    parser.add_argument("--real-size", action="store_true", help="the real-size model (Qwen3-VL-2B + VGGT-1B, random weights); needs --device cuda")
    parser.add_argument("--padded-vocab", action="store_true",
                        help="small size: Qwen's 151,936-id vocabulary and a tokenizer padded to it, as the real size has "
                             "(its evaluation path on the CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, help="cap on the answers (default: none for mini, 64 for random weights)")
    parser.add_argument("--stage2-frames", choices=("answered", "annotated"),
                        help="the frames of a two-stage task's later stage: those the model's stage-1 answer selects "
                             "(the protocol; default for mini), or those of the annotated answer (default for random "
                             "weights, whose selection always falls back to frame 0: `annotated_stage2_frames`)")
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS),
                        help="the arms run (default both); answers are compared with one_at_a_time's where it runs")
    parser.add_argument("--preprocessing-mode", choices=PREPROCESSING_MODES,
                        help="the random-weight processor's image pipeline (default: official_inference at the real "
                             "size, as ScanRefer is evaluated with a converted official checkpoint; grid for small); "
                             "the Mini keeps its folder's")
    add_compile_decoding_argument(parser, default="auto")  # compiled arms get an untimed run first
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    size = "real" if args.real_size else args.model_size
    require_cuda(Path(__file__).name, args.device)
    if size == "real" and not args.device.startswith("cuda"):
        parser.error("--real-size needs --device cuda (Qwen3-VL-2B + VGGT-1B: 3.2 B parameters)")
    if args.two_processes and args.device != "cpu":
        parser.error("--two-processes is the 2-process CPU arm; on GPUs run one process per GPU with accelerate launch")
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else (None if size == "mini" else 64)
    stage2_frames = args.stage2_frames or ("answered" if size == "mini" else "annotated")
    if size == "mini" and args.preprocessing_mode:
        parser.error("--preprocessing-mode is for the random-weight sizes; the Mini keeps its folder's processor")
    preprocessing = args.preprocessing_mode or ("official_inference" if size == "real" else "grid")

    work = Path(tempfile.mkdtemp(prefix="bench_eval_scale_"))
    try:
        from gap_mllm.evaluation.scene_generation import SceneGenerator

        start = time.perf_counter()
        model, processor = build_model(size, args.device, padded_vocab=args.padded_vocab,  # on args.device
                                       preprocessing_mode=preprocessing)
        generator = SceneGenerator.from_model(model, processor, max_new_tokens=max_new_tokens,
                                              compile_decoding=args.compile_decoding)
        load_s = time.perf_counter() - start
        print(f"model {size}: built / loaded once in {load_s:.2f} s (left out of the per-query figures)", flush=True)

        slices = [("grounding", args.queries)] + [(t, n) for t, n in (("captioning", args.captions), ("detection", args.detections)) if n]
        exact = size != "real"  # float32 sizes: answers must be equal; bfloat16: counted (module docstring)
        warmup = decode_compile_config(args.compile_decoding, args.device) is not None  # the decode steps compile
        figures = {"model": size, "padded_vocab": size == "real" or args.padded_vocab, "device": args.device, "batch_size": args.batch_size, "max_new_tokens": max_new_tokens,
                   "threads": torch.get_num_threads(), "load_s": load_s, "compile_decoding": args.compile_decoding,
                   "untimed_warmup_run": warmup, "dtype": "float32" if exact else "bfloat16",
                   "stage2_frames": stage2_frames, "preprocessing_mode": processor.preprocessing_mode, "tasks": {}}
        for task, limit in slices:
            slice_ = load_slice(args.data, args.split, task, limit)
            samples, scenes = count_scenes(slice_[1])
            row = {"samples": samples, "scenes": scenes}
            arms = {name: (args.batch_size if reuse else 1, reuse) for name, reuse in ARMS.items() if name in args.arms}
            answers = {}
            for name, (batch, reuse) in arms.items():
                untimed = None
                if warmup:  # compile outside the timed run (same slice, so the same shapes)
                    _, stages, counts = run_arm(generator, slice_, batch, reuse, stage2_frames)
                    # its time less the timed run's: about what compiling the decode step cost (`graphs_compiled`);
                    # written at once, so that a run stopped at its budget during the timed run keeps it
                    untimed = row[name] = {"untimed_run": arm_figures(task, stages, counts, samples, reuse)}
                    figures["tasks"][task] = row
                    if args.out:
                        Path(args.out).write_text(json.dumps(figures, indent=2))
                answers[name], stages, counts = run_arm(generator, slice_, batch, reuse, stage2_frames)
                seconds = stages["total"]
                row[name] = {**arm_figures(task, stages, counts, samples, reuse), **(untimed or {})}
                print(f"{task} {name}: {seconds:.1f} s for {samples} samples ({counts['scenes_encoded']} scenes "
                      f"encoded, {counts['generate_calls']} generate calls); stages "
                      + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k != "total"), flush=True)
            if args.two_processes:
                folder = model_folder(size, args.device, work, padded_vocab=args.padded_vocab,
                                      preprocessing_mode=preprocessing)
                out = work / f"{task}_two_processes"
                seconds = run_two_processes(task, args.data, args.split, limit, folder, out, args.batch_size, max_new_tokens)
                answers["two_processes"] = raw_answers(out)
                row["two_processes"] = {"seconds": seconds, "per_sample_s": seconds / samples, "includes_startup_and_loading": True}
                print(f"{task} two_processes: {seconds:.1f} s for {samples} samples (start-up and loading included)", flush=True)
            reference = answers.get("one_at_a_time")
            different = [name for name, texts in answers.items() if reference is not None and texts != reference]
            if different and exact:
                raise SystemExit(f"{task}: the answers of {', '.join(different)} differ from one at a time; no figures")
            for name, texts in answers.items():
                equal = None if reference is None else equal_answers(texts, reference)
                row[name]["answers_equal_to_one_at_a_time"] = equal
            base = row["one_at_a_time"]["per_sample_s"] if "one_at_a_time" in row else None
            for name in row:
                if isinstance(row[name], dict):
                    row[name]["speedup_vs_one_at_a_time"] = None if base is None else base / row[name]["per_sample_s"]
                    row[name]["extrapolated_s_per_1000"] = 1000 * row[name]["per_sample_s"]
                    split_name, split_size = FULL_SPLITS[task]
                    row[name]["extrapolated_hours_full_split"] = split_size * row[name]["per_sample_s"] / 3600
            row["full_split"] = FULL_SPLITS[task][0]
            figures["tasks"][task] = row
            if args.out:  # after each task: a run stopped at its budget keeps what it measured
                Path(args.out).write_text(json.dumps(figures, indent=2))
        print_table(figures)
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(figures: dict) -> None:
    print(f"\nmodel {figures['model']} on {figures['device']} ({figures['threads']} threads), batch {figures['batch_size']}, "
          f"max_new_tokens {figures['max_new_tokens']}; per-1,000 and full-split figures are EXTRAPOLATIONS of the measured slice")
    print("| task | samples (scenes) | arm | measured s | s per sample | vs one at a time | s per 1,000 (extrap.) | full split, h (extrap.) | answers equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, row in figures["tasks"].items():
        for name, arm in row.items():
            if not isinstance(arm, dict):
                continue
            speedup = arm["speedup_vs_one_at_a_time"]
            equal = arm["answers_equal_to_one_at_a_time"]
            equal = "—" if equal is None else f"{equal} / {row['samples']}"
            print(f"| {task} | {row['samples']} ({row['scenes']}) | {name} | {arm['seconds']:.1f} | {arm['per_sample_s']:.3f} | "
                  f"{'—' if speedup is None else f'{speedup:.2f}×'} | {arm['extrapolated_s_per_1000']:.0f} | "
                  f"{arm['extrapolated_hours_full_split']:.2f} ({row['full_split']}) | "
                  f"{equal} |")
    print("\nScanRefer val from the work each part scales with (`scanrefer_estimate`; decode compilation not "
          "included):")
    for name, arm in figures["tasks"].get("grounding", {}).items():
        if isinstance(arm, dict) and "scanrefer_val" in arm:
            estimate = arm["scanrefer_val"]
            print(f"  grounding {name}: " + (f"refused: {estimate['refused']}" if "refused" in estimate else
                  f"{estimate['minutes_low']:.1f}-{estimate['minutes_high']:.1f} min (stage-2 views encoded "
                  f"{estimate['views_encoded']['low'][1]:,}-{estimate['views_encoded']['high'][1]:,}); s per view "
                  f"encoded by stage "
                  + ", ".join(f"{v:.4f}" for v in estimate["seconds_per_view_encoded"])
                  + f"; the rest {estimate['seconds_per_query_rest']:.3f} s per query"))
    print("\nseconds by stage (eval_stage_timer.py):")
    for task, row in figures["tasks"].items():
        for name, arm in row.items():
            if isinstance(arm, dict) and "stages_s" in arm:
                print(f"  {task} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in arm["stages_s"].items())
                      + f"; slowest: {arm['slowest_stage']}")


if __name__ == "__main__":
    sys.exit(main())
