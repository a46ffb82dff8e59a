"""Compiled decoding: every decode step of `generate` replayed as one CUDA graph.

A decode step of the real-size model is ≈ 1,500 small kernels per token, launched one by one from Python: on an H200
the GPU was busy 12 % of the time (issue 53: 44 tokens/s at batch 1 against a bandwidth limit of ≈ 1,400). The cure is
transformers' own: a static cache (`cache_implementation="static"`: keys and values in preallocated tensors at fixed
addresses, the fill counter on the device) and its automatic compilation of the decode forward
(`generation_config.compile_config`; `torch.compile(mode="reduce-overhead")` records the step once as a CUDA graph and
replays it, so a token costs one graph launch instead of ≈ 1,500 kernel launches and no Python in the model).
The prefill (vision tower, geometry encoder, fusion, the prompt) runs uncompiled, as before: its shapes change with
every prompt. `generate(..., compile_decoding=...)` turns it on (without the argument, `generate` takes the model's
attribute `model.compile_decoding`, "off" unless a front end set it):

    "off" / False   the default of `generate`: the dynamic cache, nothing compiled
    "on" / True     static cache + compiled decode step (CUDA graphs on a GPU; on the CPU torch.compile with
                    inductor, which pays little there: tests use a `CompileConfig` instead)
    "auto"          "on" when the model sits on a CUDA device, else "off": the default of `gap-mllm evaluate` and of the
                    Space on a dedicated GPU (`--compile-decoding`; predict's default is "off": one answer does not
                    repay the compilation; a ZeroGPU Space is "off" too: each request runs in a fresh worker)
    CompileConfig   "on" with these compile settings, on any device (how the CPU tests compile with fullgraph=True)

Requirements, checked before anything runs (ValueError naming the option): no cache of the caller's
(`past_key_values`; a scene is fine: its prefix is copied into a static cache), no other `cache_implementation`.

The static cache: a CUDA graph reads the cache at the addresses it was recorded with, so every call of the model
decodes in the same buffers, lent by the model's pool (static_cache_pool.py) for full and scene calls alike; a new
cache per call (transformers' way) made every call record its graph again, and torch <= 2.11 stops replaying a graph
re-recorded 128 times. A cache a compiled call returns is valid until the model's next compiled call.

What compiles: the decode forward is captured whole (`fullgraph=True`: a graph break is an error, not a silent
slowdown), with no host synchronisation inside it (tests/test_compiled_decoding.py counts them). Per generated token the
host still waits once, in transformers' loop (`StopCheck`: `unfinished_sequences.max() == 0` decides whether to go on;
without it `generate` could not stop at EOS), and stopping criteria that read the text (the task answer-end rules,
answer_stopping_criteria.py) read the new tokens at that same point.

Cost: the first call compiles the step for its shapes, as they are (static: the graph GPU rounds measured, one batch
size); the first call of another batch size or cache length compiles it once more with those sizes symbolic
(`dynamic=None`, torch's automatic dynamic shapes), and that graph then serves every later size, with a size-1 batch
its own graph (torch specialises sizes 0 and 1). A few seconds each for the Mini, tens of seconds at the real size;
on a GPU each new size records its own CUDA graph once, which costs a few steps, not a compilation. The sizes vary
in every evaluation: a scene's questions come in batches of 1 to `--batch-size`, and a full call and a scene call
continue caches of other lengths. With `dynamic=False`, as before, each pair of sizes was a graph of its own, and
dynamo stops at 8 graphs of one function: with `fullgraph=True` the ninth is an error (`FailOnRecompileLimitHit`),
which a grounding evaluation of 8 small scenes reached on the CPU. A decode step's inputs are the same in a full call
and in a scene call (model_inputs.py `PREFILL_ONLY_INPUT_NAMES`, and the causal mask's copy), so both use the same
graphs: at most 5 for any mix of batch sizes and lengths (tests/test_compiled_decoding.py).
Exactness: a static cache attends over its whole preallocated length with the unused slots masked, so logits agree
with the dynamic cache's to float rounding and greedy tokens are the same (tested in float32, batch 1 and 8).
"""

from __future__ import annotations

# torch and transformers are imported where used: the front ends' `--help` reads the choices below (tests/test_cli_startup.py)
COMPILE_DECODING_CHOICES = ("auto", "on", "off")
# The GPU setting: the whole decode step in one graph, replayed as a CUDA graph; the first shapes static (the graph
# whose speed was measured), other batch sizes and cache lengths served by one graph with those sizes symbolic (see
# "Cost" above: a graph per size would reach dynamo's limit of 8 in any evaluation).
DECODE_COMPILE_CONFIG = dict(fullgraph=True, dynamic=None, mode="reduce-overhead")


def decode_compile_config(compile_decoding, device):
    """The transformers `CompileConfig` of the decode step for `compile_decoding` (see the module docstring) on
    `device` (a `torch.device` or its name), or None when decoding stays uncompiled. ValueError naming the option for
    any other value."""
    import torch
    from transformers import CompileConfig

    if isinstance(compile_decoding, CompileConfig):
        config = CompileConfig(**compile_decoding.to_dict())
        config._compile_all_devices = True  # a config given on purpose compiles on the CPU too (tests)
        return config
    choice = "off" if compile_decoding is None else check_compile_decoding(compile_decoding)
    if choice == "off" or (choice == "auto" and torch.device(device).type != "cuda"):
        return None
    config = CompileConfig(**DECODE_COMPILE_CONFIG)
    config._compile_all_devices = torch.device(device).type != "cuda"  # "on" asked for on purpose
    return config


def check_compile_decoding(value) -> str:
    """`value` as one of `COMPILE_DECODING_CHOICES` (True → "on", False → "off"), or ValueError naming the option."""
    choice = {True: "on", False: "off"}.get(value, value) if isinstance(value, (bool, str)) else value
    if choice not in COMPILE_DECODING_CHOICES:
        raise ValueError(f"compile_decoding={value!r}: expected one of {COMPILE_DECODING_CHOICES}, True, False or a "
                         "transformers CompileConfig.")
    return choice


def add_compile_decoding_argument(parser, default: str) -> None:
    """The front ends' `--compile-decoding {auto,on,off}` (predict, evaluate), with their own default."""
    parser.add_argument("--compile-decoding", choices=COMPILE_DECODING_CHOICES, default=default,
                        help="static cache + every decode step compiled to a CUDA graph (same tokens, faster on a GPU; "
                             "compiles a few times per run, tens of seconds each at the real size); auto: on CUDA only "
                             f"(default: {default})")


def compiled_decoding_kwargs(compile_decoding, device, kwargs: dict, scene: bool = False) -> dict:
    """The `generate` options that compile the decode step (`cache_implementation="static"`, `compile_config`), or {}
    when `compile_decoding` leaves it off. `kwargs` are the call's other options, checked to allow it.

    Raises:
        ValueError: an option that rules out compiled decoding (a cache of the caller's, another cache implementation).
    """
    config = decode_compile_config(compile_decoding, device)
    if config is None:
        return {}
    if kwargs.get("past_key_values") is not None and not scene:
        raise ValueError("compile_decoding needs generate's own static cache, but past_key_values were given: pass no "
                         "cache, or compile_decoding='off'.")
    implementation = kwargs.get("cache_implementation")
    if implementation not in (None, "static"):
        raise ValueError(f"compile_decoding needs cache_implementation='static', got {implementation!r}: drop the "
                         "option, or compile_decoding='off'.")
    if kwargs.get("use_cache") is False:
        raise ValueError("compile_decoding needs use_cache=True (the decode step continues a static cache).")
    return {"compile_config": config} if scene else {"cache_implementation": "static", "compile_config": config}


__all__ = ["COMPILE_DECODING_CHOICES", "DECODE_COMPILE_CONFIG", "add_compile_decoding_argument", "check_compile_decoding",
           "compiled_decoding_kwargs", "decode_compile_config"]
