"""GAP-MLLM under vLLM vs this package's own generate, on one GPU: agreement of greedy answers and throughput.

    make vllm-venv                                   # vLLM 0.33.0 in .venv-vllm (CUDA machine)
    python bench/bench_engines.py --vllm-python .venv-vllm/bin/python --out engines.json
    python bench/bench_engines.py --dry-run --out dry.json       # CPU, seconds: builds every input, no vLLM

Runs in the gap-mllm environment; vLLM runs as `vllm serve` from its own environment (it pins an older
transformers, gap_mllm/serving/vllm_settings.py) on 127.0.0.1, fed by `gap_mllm.serving` (encoder half here,
`image_embeds` content parts over HTTP). For each model ("real": the real-size random-weight model of
engine_bench_model.py; "mini": the embedded GAP-MLLM-Mini) and dtype (bfloat16, float32), one server, then:

  agreement         8 grounding requests of 4 views (distinct frames): greedy tokens of vLLM vs `model.generate` one
                    request at a time, cut at EOS; identical requests and the first divergence of each
  throughput_c<C>   C concurrent 4-view requests (C = 1, 8, 64; max(2C, 8) requests, each with its own frames),
                    fixed 64 new tokens (ignore_eos / min_new_tokens): tokens/s and requests/s of vLLM (embeddings
                    precomputed; the encoder's time per request reported beside it) and of the package's batched
                    generate (batches of C, image path included)
  grounding_stage1  one scene, 32 frames, every object's query: the package one query at a time, the package's scene
                    reuse (encode_scene once + one batched generate), vLLM (encoder once + all queries concurrently;
                    its prefix cache, on by default, plays the part of scene reuse)

Each measurement records its own error and the run goes on; results are rewritten to --out after each one. Without
a CUDA GPU or without the vLLM environment it exits with status 2 and says which is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from engine_bench_model import REAL_FRAME_SIZE, random_gap_folder, scene_frames, unique_frames  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402

SETTINGS = {
    "gpu": dict(models=("real", "mini"), dtypes=("bfloat16", "float32"), agreement_requests=8, agreement_tokens=32,
                views=4, concurrency=(1, 8, 64), throughput_tokens=64, stage1_frames=32, stage1_tokens=16,
                max_queries=16, max_model_len=12288, gpu_memory_utilization=0.45, server_timeout=900),
    # the CPU run that keeps the script from rotting: every input built, the package arms run, no vLLM
    "dry": dict(models=("tiny",), dtypes=("float32",), agreement_requests=2, agreement_tokens=2, views=2,
                concurrency=(1, 2), throughput_tokens=2, stage1_frames=3, stage1_tokens=2, max_queries=2,
                max_model_len=4096, gpu_memory_utilization=0.45, server_timeout=1),
}
TASK = "grounding_stage2"
SERVED_NAME = "gap-mllm"


def fail(message: str) -> None:
    print(f"bench_engines.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def vllm_version(python: Path) -> str:
    """The vLLM version of the environment of `python`; exits naming what is missing."""
    if not python.exists():
        fail(f"no vLLM environment: {python} does not exist (make vllm-venv installs vllm in .venv-vllm)")
    done = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"{python} cannot import vllm: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout.strip()


class VllmServer:
    """`vllm serve` on an export-llm folder, on 127.0.0.1, logging to a file; stopped by `stop()`."""

    def __init__(self, python: Path, folder: Path, dtype: str, port: int, log: Path, settings: dict, max_images: int):
        from gap_mllm.serving import serve_command

        command = serve_command(str(folder), max_images=max_images, port=port, served_model_name=SERVED_NAME)
        command[0] = str(python.parent / "vllm")
        command += ["--host", "127.0.0.1", "--dtype", dtype, "--max-model-len", str(settings["max_model_len"]),
                    "--gpu-memory-utilization", str(settings["gpu_memory_utilization"]), "--seed", "0"]
        self.url, self.log, self.command = f"http://127.0.0.1:{port}", log, command
        self.process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(2)
        raise TimeoutError(f"vllm serve not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (None when equal; the shorter length when one is a prefix)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


class EngineBench:
    def __init__(self, args):
        self.args = args
        self.settings = SETTINGS["dry" if args.dry_run else "gpu"]
        self.device = "cpu" if args.dry_run else "cuda"
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_engines_"))
        self.start = time.perf_counter()
        self.results = {"meta": self.meta(), "measurements": {}}
        self.server = None

    def meta(self) -> dict:
        import transformers

        from gap_mllm.serving import VLLM_VERSION

        return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "dry_run": self.args.dry_run,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not self.args.dry_run else "cpu",
                "torch": torch.__version__, "transformers": transformers.__version__, "vllm_pinned": VLLM_VERSION,
                "vllm": self.args.vllm_installed, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    # ------------------------------------------------------------------ bookkeeping
    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {text}", flush=True)

    def save(self) -> None:
        path = Path(self.args.out)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(temporary, path)

    def measure(self, name: str, function, *args) -> bool:
        self.log(f"{name} ...")
        try:
            value = function(*args)
        except Exception as error:  # noqa: BLE001 - a bench records every failure and goes on
            value = {"error": f"{type(error).__name__}: {error}"[:800], "traceback": traceback.format_exc()[-2500:]}
        self.results["measurements"][name] = value
        self.save()
        self.log(f"{name}: {json.dumps({k: v for k, v in value.items() if not isinstance(v, (list, dict))}, default=str)[:400]}")
        return "error" not in value

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ setup
    def setup(self, model_name: str, dtype_name: str) -> dict:
        from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
        from gap_mllm.serving import GapMllmEncoder, export_llm_folder

        dtype = getattr(torch, dtype_name)
        start = time.perf_counter()
        folder = self.folder = self.workdir / f"{model_name}_{dtype_name}"
        if model_name == "mini":
            from gap_mllm.mini import default_model_path

            source = default_model_path()
            model = GapMllmForConditionalGeneration.from_pretrained(source, dtype=dtype).to(self.device).eval()
            processor = GapMllmProcessor.from_pretrained(source)
            self.frame_size = None
        else:
            source = folder / "gap"
            model, processor = random_gap_folder(source, model_name, dtype, self.device)
            self.frame_size = REAL_FRAME_SIZE if model_name == "real" else None
        built = time.perf_counter() - start
        exported = export_llm_folder(source, folder / "llm", model=model, processor=processor)
        self.model, self.processor, self.encoder = model, processor, GapMllmEncoder(model, processor)
        self.eos = model.generation_config.eos_token_id
        result = {"source": str(source), "build_s": built, "export_files": len(exported.files), "dtype": dtype_name}
        if not self.args.dry_run:
            self.server = VllmServer(Path(self.args.vllm_python), exported.path, dtype_name, self.args.port,
                                     folder / "vllm.log", self.settings, max_images=self.settings["stage1_frames"])
            result["server_ready_s"] = self.server.wait_ready(self.settings["server_timeout"])
            result["server_command"] = " ".join(self.server.command)
        return result

    def teardown(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.model = self.encoder = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if self.args.workdir is None and getattr(self, "folder", None) is not None:
            shutil.rmtree(self.folder, ignore_errors=True)  # a temporary real-size folder holds ~11 GB per dtype
            self.folder = None

    # ------------------------------------------------------------------ the two arms
    def samples(self, count: int, offset: int = 0) -> tuple[list, list[str]]:
        """`count` samples of `views` distinct frames (8 rooms, rolled per sample) and a grounding query each."""
        frames, queries = [], []
        for index in range(count):
            views, labels = scene_frames(index % 8, self.settings["views"], self.frame_size)
            frames.append(unique_frames(list(views), offset + index // 8))
            queries.append(f"the {labels[index % len(labels)]}" if labels else "the object")
        return frames, queries

    def package_generate(self, frames: list, queries: list[str], new_tokens: int, fixed: bool) -> torch.Tensor:
        inputs = self.processor(images=frames, task=TASK, query=queries, return_tensors="pt").to(self.device)
        options = dict(max_new_tokens=new_tokens, do_sample=False, **({"min_new_tokens": new_tokens} if fixed else {}))
        with torch.inference_mode():
            out = self.model.generate(**inputs, **options)
        return out[:, inputs["input_ids"].shape[1]:]

    def payload(self, request, new_tokens: int, fixed: bool) -> dict:
        from gap_mllm.serving import chat_completion_payload

        extra = {"return_token_ids": True, **({"ignore_eos": True} if fixed else {})}
        return chat_completion_payload(request, model=SERVED_NAME, max_tokens=new_tokens, **extra)

    def vllm_complete(self, payloads: list[dict], concurrency: int) -> tuple[list[dict], float]:
        """`(responses, wall seconds)`; in a dry run the payloads are only serialised (nothing is sent)."""
        from gap_mllm.serving import post_chat_completion

        if self.args.dry_run:
            return [{"dry_run_bytes": len(json.dumps(p))} for p in payloads], 0.0
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            responses = list(pool.map(lambda p: post_chat_completion(self.server.url, p), payloads))
        return responses, time.perf_counter() - start

    # ------------------------------------------------------------------ measurements
    def agreement(self) -> dict:
        count, tokens = self.settings["agreement_requests"], self.settings["agreement_tokens"]
        frames, queries = self.samples(count)
        requests = self.encoder.encode_batch(frames, task=TASK, query=queries)
        responses, _ = self.vllm_complete([self.payload(r, tokens, fixed=False) for r in requests], concurrency=count)
        rows = []
        for index in range(count):
            ours = cut_at_eos(self.package_generate([frames[index]], [queries[index]], tokens, fixed=False)[0].tolist(), self.eos)
            row = {"package": ours, "package_text": self.processor.decode_generated([ours])[0]}
            if not self.args.dry_run:
                choice = responses[index]["choices"][0]
                theirs = cut_at_eos(list(choice["token_ids"]), self.eos)
                row.update(vllm=theirs, vllm_text=choice["message"]["content"], first_divergence=first_divergence(ours, theirs))
            rows.append(row)
        result = {"requests": count, "max_new_tokens": tokens, "rows": rows}
        if not self.args.dry_run:
            result["identical"] = sum(row["first_divergence"] is None for row in rows)
        return result

    def throughput(self, concurrency: int) -> dict:
        tokens = self.settings["throughput_tokens"]
        count = max(2 * concurrency, 8) if not self.args.dry_run else concurrency
        frames, queries = self.samples(count, offset=100)
        self.sync()
        start = time.perf_counter()
        requests = []
        for first in range(0, count, concurrency):
            requests += self.encoder.encode_batch(frames[first:first + concurrency], task=TASK, query=queries[first:first + concurrency])
        self.sync()
        encoder_s = time.perf_counter() - start
        payloads = [self.payload(r, tokens, fixed=True) for r in requests]
        self.vllm_complete(payloads[:concurrency], concurrency)  # warm-up
        responses, vllm_s = self.vllm_complete(payloads, concurrency)
        self.package_generate(frames[:concurrency], queries[:concurrency], tokens, fixed=True)  # warm-up
        self.sync()
        start = time.perf_counter()
        generated = 0
        for first in range(0, count, concurrency):
            generated += self.package_generate(frames[first:first + concurrency], queries[first:first + concurrency], tokens,
                                               fixed=True).numel()
        self.sync()
        package_s = time.perf_counter() - start
        result = {"concurrency": concurrency, "requests": count, "new_tokens_per_request": tokens, "views": self.settings["views"],
                  "encoder_s_per_request": encoder_s / count, "package_s": package_s,
                  "package_tokens_per_s": generated / package_s, "package_requests_per_s": count / package_s}
        if not self.args.dry_run:
            completion = sum(r["usage"]["completion_tokens"] for r in responses)
            result.update(vllm_s=vllm_s, vllm_tokens_per_s=completion / vllm_s, vllm_requests_per_s=count / vllm_s,
                          vllm_with_serial_encoder_requests_per_s=count / (vllm_s + encoder_s),
                          vllm_over_package_tokens_per_s=(completion / vllm_s) / (generated / package_s))
        return result

    def grounding_stage1(self) -> dict:
        from gap_mllm.generation import encode_scene, generate
        from gap_mllm.tasks_gap_mllm import resolve_task

        spec, tokens = resolve_task("grounding_stage1"), self.settings["stage1_tokens"]
        frames, labels = scene_frames(0, self.settings["stage1_frames"], self.frame_size)
        frames = list(frames)
        queries = [f"the {label}" for label in labels][: self.settings["max_queries"]] or ["the object"]
        options = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        result = {"frames": len(frames), "queries": len(queries), "new_tokens": tokens}
        # the package, one full call per query
        self.sync()
        start = time.perf_counter()
        full = []
        for query in queries:
            inputs = self.processor(images=frames, task=spec.name, query=query, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                full.append(self.model.generate(**inputs, **options)[0, inputs["input_ids"].shape[1]:].tolist())
        self.sync()
        result["package_full_s"] = time.perf_counter() - start
        # the package's scene reuse: the views encoded and prefilled once, the queries batched
        prompts = [self.processor.chat_prompt(spec.user_segments(len(frames), query=q)) for q in queries]
        prefix, suffixes = self.processor.split_scene_prompt(prompts, num_views=len(frames))
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            scene = encode_scene(self.model, **self.processor(images=frames, text=prefix, return_tensors="pt").to(self.device))
            question_inputs = self.processor(text=suffixes, return_tensors="pt").to(self.device)
            reused = generate(self.model, scene=scene, **question_inputs, **options)[:, question_inputs["input_ids"].shape[1]:]
        self.sync()
        result["package_scene_reuse_s"] = time.perf_counter() - start
        result["scene_reuse_equal_to_full"] = sum(a == b for a, b in zip(reused.tolist(), full))
        # vLLM: the encoder once, then every query with the same embeddings, concurrently
        self.sync()
        start = time.perf_counter()
        base = self.encoder.encode(frames, task=spec.name, query=queries[0])
        self.sync()
        result["encoder_s"] = time.perf_counter() - start
        requests = [dataclasses.replace(base, segments=tuple(spec.user_segments(len(frames), query=q)), prompt=p, input_ids=())
                    for q, p in zip(queries, prompts)]
        responses, vllm_s = self.vllm_complete([self.payload(r, tokens, fixed=True) for r in requests], len(requests))
        if not self.args.dry_run:
            vllm_tokens = [list(r["choices"][0]["token_ids"]) for r in responses]
            result.update(vllm_s=vllm_s, vllm_with_encoder_s=vllm_s + result["encoder_s"],
                          vllm_equal_to_package=sum(a == b for a, b in zip(vllm_tokens, full)),
                          package_full_over_vllm=result["package_full_s"] / (vllm_s + result["encoder_s"]),
                          scene_reuse_over_vllm=result["package_scene_reuse_s"] / (vllm_s + result["encoder_s"]))
        return result

    def run(self) -> None:
        for model_name in self.args.models or self.settings["models"]:
            for dtype_name in self.args.dtypes or self.settings["dtypes"]:
                key = f"{model_name}_{dtype_name}"
                try:
                    if self.measure(f"{key}/setup", self.setup, model_name, dtype_name):
                        self.measure(f"{key}/agreement", self.agreement)
                        for concurrency in self.settings["concurrency"]:
                            self.measure(f"{key}/throughput_c{concurrency}", self.throughput, concurrency)
                        self.measure(f"{key}/grounding_stage1", self.grounding_stage1)
                finally:
                    self.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results JSON (rewritten after every measurement)")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="python of the vLLM environment")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--models", nargs="*", choices=("real", "mini", "small", "tiny"), default=None)
    parser.add_argument("--dtypes", nargs="*", choices=("bfloat16", "float32"), default=None)
    parser.add_argument("--workdir", default=None,
                        help="keep the GAP folders, exports and server logs there (default: a temporary folder, emptied as it goes)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: build every input and run the package arms, no vLLM")
    args = parser.parse_args(argv)
    from gap_mllm.serving import VLLM_VERSION

    args.vllm_installed = None
    if not args.dry_run:
        require_cuda(Path(__file__).name, "cuda", what="the engine comparison",
                     hint="--dry-run builds the inputs on the CPU", remedy="run on a GPU machine after `make vllm-venv`")
        args.vllm_installed = vllm_version(Path(args.vllm_python))
        if args.vllm_installed != VLLM_VERSION:
            fail(f"{args.vllm_python} has vllm {args.vllm_installed}; this bench is written for vllm=={VLLM_VERSION} (make vllm-venv)")
    bench = EngineBench(args)
    bench.run()
    bench.log(f"done; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
