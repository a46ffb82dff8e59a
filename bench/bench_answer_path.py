"""The answer path, from frames to one answer: CPU seconds of `gap-mllm predict`, of the README's Python snippet for
the same answer, and of `import torch, transformers`, measured side by side in one run (arms interleaved, fresh
interpreters, one thread each), with the calls each path makes beside them.

    python bench/bench_answer_path.py --repeats 5 --out runs/bench_answer_path.json

Arms (each a fresh interpreter with OMP_NUM_THREADS=1; CPU seconds = the child's user + system time):

    import torch, transformers   python -c "import torch, transformers" (the floor every path pays)
    README snippet               the README's snippet for one answer: AutoModel / AutoProcessor with
                                 trust_remote_code on the embedded Mini, synthetic_scene(seed=0), one grounding
                                 answer of the example query (constrained, as the snippet's `ask`)
    gap-mllm predict             python -m gap_mllm.cli.main predict --example "synthetic room A" --task grounding

Calls, counted once per path in a separate run of the same code with the real functions wrapped: the processor's
`__call__`, the geometry encoder's forward (a forward hook) and the command line's model-source resolution
(`resolve_model_source`; the snippet names its folder itself). The ratio predict / snippet is the figure
bench/README.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

IMPORT_ONLY = "import torch, transformers"

SNIPPET = """
from transformers import AutoModel, AutoProcessor

from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.mini import default_model_path

MODEL = default_model_path()
model = AutoModel.from_pretrained(MODEL, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(MODEL, trust_remote_code=True)
COUNT = {COUNT}
if COUNT:
    calls = {"processor": 0, "encoder": 0}
    call = type(processor).__call__

    def counted(self, *args, **kwargs):
        calls["processor"] += 1
        return call(self, *args, **kwargs)

    type(processor).__call__ = counted
    model.geometry_encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
scene = synthetic_scene(seed=0)
frames = scene.views
query = scene.example_inputs["grounding"]["query"]
inputs = processor(images=frames, task="grounding", return_tensors="pt", query=query)
out = model.generate(**inputs, **processor.generation_kwargs("grounding", inputs, constrained=True))
print(processor.post_process(out, task="grounding", input_ids=inputs["input_ids"])[0])
if COUNT:
    import json
    print("CALLS " + json.dumps({**calls, "model_source": 0}))
"""

PREDICT_ARGS = ["predict", "--example", "synthetic room A", "--task", "grounding"]

PREDICT_COUNTED = """
import json, sys
from gap_mllm.cli import model_source
from gap_mllm.cli.main import main
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder
from gap_mllm.processing_gap_mllm import GapMllmProcessor

calls = {"processor": 0, "encoder": 0, "model_source": 0}


def counting(name, function):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)
    return wrapper


GapMllmProcessor.__call__ = counting("processor", GapMllmProcessor.__call__)
GapMllmGeometryEncoder.forward = counting("encoder", GapMllmGeometryEncoder.forward)
resolve = counting("model_source", model_source.resolve_model_source)
for module in list(sys.modules.values()):  # every module that imported the resolver by name
    if getattr(module, "__name__", "").startswith("gap_mllm.cli") and hasattr(module, "resolve_model_source"):
        module.resolve_model_source = resolve
status = main(ARGS)
print("CALLS " + json.dumps(calls))
sys.exit(status or 0)
"""


def arms() -> dict[str, list[str]]:
    """Arm name -> the command line of one fresh interpreter."""
    return {
        "import torch, transformers": [sys.executable, "-c", IMPORT_ONLY],
        "README snippet": [sys.executable, "-c", SNIPPET.replace("{COUNT}", "False")],
        "gap-mllm predict": [sys.executable, "-m", "gap_mllm.cli.main", *PREDICT_ARGS],
    }


def child_cpu_seconds(command: list[str], env: dict) -> tuple[float, str]:
    """(user + system CPU seconds of one run of `command`, its stdout); RuntimeError when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def counted_calls(env: dict) -> dict[str, dict]:
    """The calls of the snippet and of predict, each from one counted run."""
    found = {}
    for name, command in (("README snippet", [sys.executable, "-c", SNIPPET.replace("{COUNT}", "True")]),
                          ("gap-mllm predict", [sys.executable, "-c",
                                                PREDICT_COUNTED.replace("ARGS", repr(PREDICT_ARGS))])):
        _, out = child_cpu_seconds(command, env)
        line = [row for row in out.splitlines() if row.startswith("CALLS ")][-1]
        found[name] = json.loads(line[len("CALLS "):])
    return found


def summary(seconds: dict[str, list[float]]) -> dict[str, dict]:
    """Per arm: the runs, their median, and the median's ratio to the snippet's (the README's own path)."""
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {name: {"cpu_s": values, "median_cpu_s": medians[name],
                   "ratio_to_snippet": medians[name] / medians["README snippet"]}
            for name, values in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each arm, interleaved (default: 5)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    commands = arms()
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # one untimed run each: the file cache and the remote-code module cache
        child_cpu_seconds(command, env)
    for _ in range(args.repeats):
        for name, command in commands.items():
            seconds[name].append(child_cpu_seconds(command, env)[0])
    figures = {"arms": summary(seconds), "calls": counted_calls(env), "load_average": os.getloadavg(),
               "cores": os.cpu_count(), "repeats": args.repeats}
    print(f"{'arm':<28}{'median CPU s':>14}{'ratio to snippet':>18}  calls (processor, encoder, model source)")
    for name, row in figures["arms"].items():
        calls = figures["calls"].get(name)
        shown = "" if calls is None else f"  {calls['processor']}, {calls['encoder']}, {calls['model_source']}"
        print(f"{name:<28}{row['median_cpu_s']:>14.2f}{row['ratio_to_snippet']:>18.2f}{shown}")
    print(f"load average {figures['load_average'][0]:.2f} on {figures['cores']} cores")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
