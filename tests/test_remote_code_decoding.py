"""The model folder's generate paths without the package: a fresh process in which `gap_mllm` is NOT importable loads
the saved folder with trust_remote_code and answers a full prompt and questions about an encoded scene, uncompiled and
with compiled decoding (transformers' own static cache instead of the package's pool), with the tokens of the installed
package (greedy)."""

import os
import subprocess
import sys
import textwrap

import torch
from transformers import CompileConfig

from gap_mllm.generation_gap_mllm import DECODE_COMPILE_CONFIG
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views

QUESTION = "Where is the chair?"
GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}

FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockGapMllm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gap_mllm" or name.startswith("gap_mllm."):
                raise ImportError("gap_mllm is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockGapMllm())
    import torch
    from torch._dynamo.utils import counters
    from transformers import AutoModel, AutoProcessor, CompileConfig

    folder, payload_path = sys.argv[1], sys.argv[2]
    payload = torch.load(payload_path, weights_only=False)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    frames, prefix, suffix = payload["frames"], payload["prefix"], payload["suffix"]
    full = processor(images=frames, text=payload["question"], return_tensors="pt")
    scene_inputs = processor(images=frames, text=prefix, return_tensors="pt")
    questions = processor(text=[suffix, suffix + " Answer briefly."], padding=True, return_tensors="pt")
    for name, compile_decoding in (("off", "off"), ("compiled", CompileConfig(**payload["compile_config"]))):
        with torch.no_grad():
            out = model.generate(**full, compile_decoding=compile_decoding, **payload["greedy"])
            assert torch.equal(out, payload["full_" + name]), (name, out, payload["full_" + name])
            scene = model.encode_scene(**scene_inputs)
            assert scene.model_identity is None  # the package's identity check is not there to read it
            out = model.generate(scene=scene, **questions, compile_decoding=compile_decoding, **payload["greedy"])
            assert torch.equal(out, payload["scene_" + name]), (name, out, payload["scene_" + name])
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled calls compiled their decode step
    print("REMOTE-DECODING-OK")
    """
)


def test_a_folder_without_the_package_decodes_full_and_scene_calls_compiled_or_not_with_the_same_tokens(
        tmp_path, tiny_processor):
    model, processor = build_tiny_model(processor=tiny_processor, seed=2)
    with torch.no_grad():  # sharper logits: greedy answers that change from token to token
        for parameter in model.vlm.model.language_model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(4.0)
    folder = tmp_path / "gap-mllm-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    frames = make_views(2, seed=21)
    prefix, suffix = processor.split_scene_prompt(QUESTION, num_views=2)
    full = processor(images=frames, text=QUESTION, return_tensors="pt")
    scene_inputs = processor(images=frames, text=prefix, return_tensors="pt")
    questions = processor(text=[suffix, suffix + " Answer briefly."], padding=True, return_tensors="pt")
    compile_config = {**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None}  # compiles on the CPU, quickly
    payload = {"frames": frames, "prefix": prefix, "suffix": suffix, "question": QUESTION, "greedy": GREEDY,
               "compile_config": compile_config}
    torch._dynamo.reset()
    for name, compile_decoding in (("off", "off"), ("compiled", CompileConfig(**compile_config))):
        with torch.no_grad():
            payload["full_" + name] = model.generate(**full, compile_decoding=compile_decoding, **GREEDY)
            scene = model.encode_scene(**scene_inputs)
            payload["scene_" + name] = model.generate(scene=scene, **questions, compile_decoding=compile_decoding,
                                                      **GREEDY)
    torch._dynamo.reset()
    assert len(set(payload["full_off"][0, -6:].tolist())) > 1  # an answer that says something
    assert torch.equal(payload["full_compiled"], payload["full_off"])
    assert torch.equal(payload["scene_compiled"], payload["scene_off"])
    torch.save(payload, tmp_path / "payload.pt")

    script = tmp_path / "decode_fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "payload.pt")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-DECODING-OK" in result.stdout
