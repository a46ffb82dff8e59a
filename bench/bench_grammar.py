"""The cost of constrained decoding (issue 54): grammar compilation, and the logits processor per generated token.

Not a test. Three measurements, each the median of `--repeats` runs:

  compile    per vocabulary (GAP-MLLM-Mini's 768 ids; a Qwen-size 151,936: the tiny tokenizer padded as
             bench_engines.py pads it), the tokenizer info plus every task's grammar compiled once, then again
             (the per-tokenizer cache: what every later `generate` call pays)
  processor  `GrammarLogitsProcessor` alone per decoding step (the row's new token accepted, the bitmask filled and
             applied to `[B, V]` logits), replaying the tokens of the longest answers (a 9-entry detection, a grounding
             box), batch 1 and 8, both vocabularies
  mini       GAP-MLLM-Mini's greedy `generate` on a held-out SynthRooms room, free vs constrained, arms interleaved:
             seconds per generated token of each and their ratio, on tasks whose free answer already fits the grammar
             (the tokens are then the same, checked, so the two arms decode the same sequence)

    python bench/bench_grammar.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gap_mllm.answer_grammar_processor import GrammarLogitsProcessor, compiled_grammar
from gap_mllm.target_format import Box3D
from gap_mllm.tasks_gap_mllm import DETECTION, GROUNDING, TASKS

QWEN_VOCAB = 151_936  # Qwen3-VL's logits width


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tokenizers():
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from gap_mllm.mini import default_model_path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_bench_model import padded_tokenizer

    return [("mini (768)", AutoTokenizer.from_pretrained(default_model_path()), 768),
            ("qwen-size (151,936)", padded_tokenizer(QWEN_VOCAB), QWEN_VOCAB)]


def bench_compile(named, repeats: int) -> None:
    print("compile: tokenizer info + every task's grammar, first call / cached call (ms)")
    from gap_mllm import answer_grammar_processor

    for name, tokenizer, width in named:
        def first():
            answer_grammar_processor._COMPILERS.pop(tokenizer, None)
            for spec in TASKS.values():
                compiled_grammar(tokenizer, width, spec.answer_grammar)

        def cached():
            for spec in TASKS.values():
                compiled_grammar(tokenizer, width, spec.answer_grammar)

        cold = _median(first, repeats)
        warm = _median(cached, repeats)
        print(f"  {name:<20} first {cold * 1e3:8.1f}   cached {warm * 1e3:6.2f}   ({len(TASKS)} grammars)")


def _answers():
    box = Box3D.from_list([-1.25, 0.5, 2.75, 0.6, 0.9, 1.2, 0.0, 0.0, 1.57], label="night stand")
    return {"detection (9 entries)": (DETECTION, DETECTION.serialize(DETECTION.result_type([box] * 9))),
            "grounding": (GROUNDING, GROUNDING.serialize(GROUNDING.result_type(box)))}


def bench_processor(named, repeats: int) -> None:
    print("processor: GrammarLogitsProcessor per decoding step (accept + fill + apply), median over the answer (ms)")
    for name, tokenizer, width in named:
        for answer_name, (spec, text) in _answers().items():
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for batch in (1, 8):
                prompt = torch.zeros(batch, 4, dtype=torch.long)
                rows = torch.tensor([ids] * batch)
                scores = torch.randn(batch, width)
                steps = [torch.cat([prompt, rows[:, :step]], dim=1) for step in range(len(ids))]
                compiled_grammar(tokenizer, width, spec.answer_grammar)  # compiled outside the timing
                per_step = []
                for _ in range(repeats):
                    logits = [scores.clone() for _ in steps]  # made outside the timing
                    processor = GrammarLogitsProcessor(tokenizer, spec.answer_grammar, prompt.shape[1])
                    start = time.perf_counter()
                    for input_ids, step_scores in zip(steps, logits):
                        processor(input_ids, step_scores)
                    per_step.append((time.perf_counter() - start) / len(ids))
                print(f"  {name:<20} {answer_name:<22} batch {batch}: {statistics.median(per_step) * 1e3:6.3f} ms/step "
                      f"({len(ids)} steps)")


def bench_mini(repeats: int) -> None:
    from transformers import AutoModel, AutoProcessor

    from gap_mllm.cli.scenes import synthetic_scene
    from gap_mllm.mini import default_model_path

    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    scene = synthetic_scene(seed=0)
    example = scene.example_inputs
    print("mini: GAP-MLLM-Mini greedy generate on a held-out room, free vs constrained (ms per generated token)")
    for task, given in (("grounding", {"query": example["grounding"]["query"]}),
                        ("reconstruction", {"point_prompts": example["reconstruction"]["marker"]}),
                        ("detection", {})):
        inputs = processor(images=scene.views, task=task, return_tensors="pt", **given)
        length = inputs["input_ids"].shape[1]
        outputs, times = {}, {False: [], True: []}
        for _ in range(repeats):
            for constrained in (False, True):  # interleaved
                kwargs = processor.generation_kwargs(task, inputs, constrained=constrained)
                start = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(**inputs, **kwargs)
                times[constrained].append(time.perf_counter() - start)
                outputs[constrained] = out[0, length:].tolist()
        if outputs[False] != outputs[True]:
            print(f"  {task}: the free answer leaves the grammar (the arms decode different tokens); not compared")
            continue
        tokens = len(outputs[False])
        free, constrained = (statistics.median(times[c]) / tokens for c in (False, True))
        print(f"  {task:<15} {tokens:4d} tokens: free {free * 1e3:7.2f}   constrained {constrained * 1e3:7.2f}   "
              f"ratio {constrained / free:.3f} (+{(constrained / free - 1) * 100:.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-mini", action="store_true", help="only the compile and processor measurements")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    named = _tokenizers()
    bench_compile(named, args.repeats)
    bench_processor(named, args.repeats)
    if not args.skip_mini:
        bench_mini(args.repeats)


if __name__ == "__main__":
    main()
