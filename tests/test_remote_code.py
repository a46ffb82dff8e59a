"""Hub remote code: a fresh Python process in which `gap_mllm` is NOT importable loads the saved folder
through the Auto classes with trust_remote_code=True, reproduces the original logits exactly and runs
generate + post_process for every task, and decodes with transformers' own `generate` and standard arguments (compiled
or not, a prefilled scene prefix) the package's tokens; the copied files hold no converter, no file export and no
switch on the importing module's name, and the model overrides no generation method but the standard input hook."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import CompileConfig

from gap_mllm.configuration_gap_mllm import PROCESSOR_GEOMETRY_INPUT_NAMES
from gap_mllm.generation import DECODE_COMPILE_CONFIG, encode_scene, generate
from gap_mllm.tasks_gap_mllm import TASKS
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views
from .test_tasks_registry import ANSWERS, TASK_INPUTS

# the start of every fresh process below: `gap_mllm` cannot be imported there, as in a plain transformers environment
BLOCK_GAP_MLLM = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockGapMllm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gap_mllm" or name.startswith("gap_mllm."):
                raise ImportError("gap_mllm is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockGapMllm())
    """
)


def run_without_gap_mllm(tmp_path, script: str, folder, payload, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` (after `BLOCK_GAP_MLLM`) as `python script folder payload` in a fresh offline process."""
    path = tmp_path / "fresh_process.py"
    path.write_text(BLOCK_GAP_MLLM + script)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(path), str(folder), str(payload)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


FRESH_PROCESS = textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    folder, payload_path = sys.argv[1], sys.argv[2]
    payload = torch.load(payload_path, weights_only=False)
    try:
        import gap_mllm  # noqa: F401
        raise SystemExit("gap_mllm should not be importable here")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "GapMllmConfig", type(config)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "GapMllmProcessor", type(processor)
    inputs = processor(images=payload["images"], text=payload["texts"], return_tensors="pt")
    for key, value in payload["inputs"].items():
        assert torch.equal(inputs[key], value), key
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__name__ == "GapMllmForConditionalGeneration", type(model)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        with torch.no_grad():
            logits = model(**inputs).logits
        assert torch.equal(logits, payload["logits"]), (logits - payload["logits"]).abs().max()
    # every task: the processor writes its prompt, generate stops at the answer's end, post_process types it
    views = payload["images"][0]
    for task, (task_inputs, answer, expected) in payload["tasks"].items():
        inputs = processor(images=views, task=task, return_tensors="pt", **task_inputs)
        with torch.no_grad():
            out = model.generate(**inputs, **processor.generation_kwargs(task, inputs))
        result = processor.post_process(out, task=task, input_ids=inputs["input_ids"])[0]
        assert type(result).__name__ == expected.split("(")[0], (task, result)
        assert out.shape[1] - inputs["input_ids"].shape[1] <= 3, (task, out.shape)  # the untrained model rambles
        assert repr(processor.post_process(answer, task=task)[0]) == expected, task
    print("REMOTE-CODE-OK")
    """
)


def test_fresh_process_loads_the_hub_folder_with_remote_code(tmp_path, tiny_processor):
    folder = tmp_path / "gap-mllm-tiny"
    model, processor = build_tiny_model(processor=tiny_processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gap_mllm"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_gap_mllm.GapMllmProcessor"}
    for module in ("configuration_gap_mllm.py", "modeling_gap_mllm.py", "modeling_vggt.py",
                   "modeling_gap_mllm.py", "processing_gap_mllm.py"):
        assert (folder / module).exists(), module

    images = [make_views(2, 64, 96, seed=1), make_views(3, 48, 80, seed=2)]
    texts = ["Detect the objects.", "Where is the chair?"]
    inputs = processor(images=images, text=texts, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    payload = tmp_path / "payload.pt"
    # plain data only: the fresh process cannot unpickle gap_mllm objects (results are compared by repr)
    tasks = {name: (TASK_INPUTS[name], spec.serialize(ANSWERS[name]), repr(ANSWERS[name])) for name, spec in TASKS.items()}
    torch.save({"images": images, "texts": texts, "inputs": dict(inputs), "logits": logits, "tasks": tasks}, payload)

    result = run_without_gap_mllm(tmp_path, FRESH_PROCESS, folder, payload, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK" in result.stdout


# calls the processor refuses, whoever imports it: (method, keyword arguments), JSON for the fresh process
REFUSED_CALLS = [("__call__", {"text": "hi", "colour": "red"}),  # Qwen3VLProcessor would drop it silently
                 ("__call__", {"text": "hi", "query": "the chair"}),  # a task input without a task
                 ("decode_generated", {"generated": [[1, 10**6]]})]  # beyond the tokenizer's vocabulary

REFUSING_PROCESS = textwrap.dedent(
    """
    import json
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert "transformers_modules" in type(processor).__module__, type(processor).__module__
    refused = []
    for method, kwargs in json.loads(open(sys.argv[2]).read()):
        try:
            getattr(processor, method)(**kwargs)
            refused.append(None)
        except Exception as error:
            refused.append([type(error).__name__, str(error)])
    print(json.dumps(refused))
    """
)


def refusal(processor, method: str, kwargs: dict) -> list[str] | None:
    try:
        getattr(processor, method)(**kwargs)
    except Exception as error:
        return [type(error).__name__, str(error)]
    return None


def test_a_remote_code_processor_refuses_bad_arguments_as_the_package_does(tmp_path, tiny_processor):
    folder = tmp_path / "processor"
    tiny_processor.save_pretrained(folder)
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps(REFUSED_CALLS))
    expected = [refusal(tiny_processor, method, kwargs) for method, kwargs in REFUSED_CALLS]
    assert [error[0] for error in expected] == ["TypeError", "ValueError", "ValueError"], expected

    result = run_without_gap_mllm(tmp_path, REFUSING_PROCESS, folder, calls, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def _guarded_imports(tree) -> set[int]:
    """Ids of the import nodes inside a `try` whose handler catches ImportError: transformers' remote-code loader
    does not require those modules (the package's own converter, reached only from the installed package)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                                             for h in node.handlers):
            guarded.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return guarded


def _imported_modules(path) -> tuple[set[str], set[str]]:
    """`(relative, absolute)` top-level module names a file imports anywhere (lazy imports in functions too), those
    guarded by `try: ... except ImportError` aside."""
    relative, absolute = set(), set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = _guarded_imports(tree)
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            relative.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return relative, absolute


def test_saved_remote_code_has_no_converter_and_no_file_export(tmp_path, tiny_processor):
    """`save_pretrained` copies every file reached through relative imports (lazy ones included): the set
    must hold what forward / generate / the processor / the parsers need, and no converter or PLY/GLB export."""
    model, processor = build_tiny_model(processor=tiny_processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    copied = {path.name for path in tmp_path.glob("*.py")}
    assert copied == {"configuration_gap_mllm.py", "modeling_gap_mllm.py", "modeling_vggt.py", "processing_gap_mllm.py",
                      "image_utils_gap_mllm.py", "tasks_gap_mllm.py", "files.py"}, copied
    assert not [name for name in copied if name.startswith("convert_")], copied
    assert "point_cloud.py" not in copied
    # what a remote-code user reads before trusting it: at most 8 files and 5,500 lines, the size of the field's
    # remote-code folders (docs/layout.md)
    lines = sum(len((tmp_path / name).read_text(encoding="utf-8").splitlines()) for name in copied)
    assert len(copied) <= 8 and lines <= 5_500, (len(copied), lines)
    for name in sorted(copied):
        assert "installed_package_module" not in (tmp_path / name).read_text(encoding="utf-8"), name
        relative, absolute = _imported_modules(tmp_path / name)
        assert {f"{module}.py" for module in relative} <= copied, (name, relative)
        assert not absolute & {"trimesh", "gap_mllm", "scipy", "datasets"}, (name, absolute)


def test_the_model_overrides_no_generation_method_but_the_input_hook():
    """transformers' `generate` runs as it is: of `GenerationMixin`'s methods the class defines only
    `prepare_inputs_for_generation`, the hook every transformers model may override (it drops the views after the
    prefill)."""
    from transformers import GenerationMixin

    from gap_mllm import GapMllmForConditionalGeneration

    defined = {name for name in vars(GapMllmForConditionalGeneration)
               if hasattr(GenerationMixin, name) and not name.startswith("__")}
    assert defined == {"prepare_inputs_for_generation"}, defined


# ---- generate without the package: transformers' own `generate` with standard arguments (uncompiled, compiled through
# `cache_implementation="static"` + `compile_config`, and a prefilled scene prefix as `past_key_values`: transformers'
# prefix-cache reuse) gives the package's tokens (greedy)
QUESTION = "Where is the chair?"
GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}

DECODING_PROCESS = textwrap.dedent(
    """
    import copy

    import torch
    from torch._dynamo.utils import counters
    from transformers import AutoModel, AutoProcessor, CompileConfig, DynamicCache

    folder, payload_path = sys.argv[1], sys.argv[2]
    payload = torch.load(payload_path, weights_only=False)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    full = processor(images=payload["frames"], text=payload["question"], return_tensors="pt")
    scene_inputs = processor(images=payload["frames"], text=payload["prefix"], return_tensors="pt")
    compiled = {"cache_implementation": "static", "compile_config": CompileConfig(**payload["compile_config"])}
    compiled["compile_config"]._compile_all_devices = True  # transformers compiles on CUDA only unless told (a CPU test)
    with torch.no_grad():
        for name, options in (("off", {}), ("compiled", compiled)):
            out = model.generate(**full, **options, **payload["greedy"])
            assert torch.equal(out, payload["full"]), (name, out, payload["full"])
        cache = model(**scene_inputs, past_key_values=DynamicCache(config=model.config.get_text_config()),
                      use_cache=True).past_key_values  # the views' prefix, prefilled once
        text = {key: value for key, value in full.items() if key not in payload["view_inputs"]}  # the cache has them
        for _ in range(2):
            out = model.generate(**text, past_key_values=copy.deepcopy(cache), **payload["greedy"])
            assert torch.equal(out[:, -6:], payload["scene_answer"]), (out, payload["scene_answer"])
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled call compiled its decode step
    print("REMOTE-DECODING-OK")
    """
)


def test_a_folder_without_the_package_decodes_with_standard_arguments_to_the_package_tokens(tmp_path, tiny_processor):
    model, processor = build_tiny_model(processor=tiny_processor, seed=2)
    with torch.no_grad():  # sharper logits: greedy answers that change from token to token
        for parameter in model.model.language_model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(4.0)
    folder = tmp_path / "gap-mllm-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    frames = make_views(2, seed=21)
    prefix, suffix = processor.split_scene_prompt(QUESTION, num_views=2)
    full = processor(images=frames, text=QUESTION, return_tensors="pt")
    scene_inputs = processor(images=frames, text=prefix, return_tensors="pt")
    compile_config = {**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None}  # compiles on the CPU, quickly
    view_inputs = ["pixel_values", *PROCESSOR_GEOMETRY_INPUT_NAMES]
    payload = {"frames": frames, "prefix": prefix, "question": QUESTION, "greedy": GREEDY,
               "compile_config": compile_config, "view_inputs": view_inputs}
    torch._dynamo.reset()
    with torch.no_grad():  # the package's calls: its checks, pool and batched scene path
        payload["full"] = generate(model, **full, **GREEDY)
        compiled = generate(model, **full, compile_decoding=CompileConfig(**compile_config), **GREEDY)
        scene = encode_scene(model, **scene_inputs)
        question = processor(text=suffix, return_tensors="pt")
        payload["scene_answer"] = generate(model, scene=scene, **question, **GREEDY)[:, -6:]
    torch._dynamo.reset()
    assert len(set(payload["full"][0, -6:].tolist())) > 1  # an answer that says something
    assert torch.equal(compiled, payload["full"])
    assert torch.equal(payload["scene_answer"], payload["full"][:, -6:])
    assert set(view_inputs) < set(full)  # what the text-only call leaves out exists
    torch.save(payload, tmp_path / "payload.pt")

    result = run_without_gap_mllm(tmp_path, DECODING_PROCESS, folder, tmp_path / "payload.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-DECODING-OK" in result.stdout
