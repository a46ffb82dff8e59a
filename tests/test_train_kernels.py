"""Attention and loss kernels of a recipe (training/kernels.py): each arm is accepted where its requirement is met and
reaches the model or the loss; refused with one exact message where the package, a CUDA device, a recent enough GPU
or half precision is missing; the default stays sdpa and trains. The GPU requirements are simulated here
(`installed_version`, `cuda_capability`, the device plan's machine arguments): the kernels themselves need a GPU."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from gap_mllm.training import kernels, run
from gap_mllm.training.config import RecipeTypeError, recipe_from_dict
from gap_mllm.training.device import apply_device_plan
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.kernels import KernelUnavailableError, apply_attention_implementation, check_kernels
from gap_mllm.training.packed_attention import FLASH_ONE_ROW
from gap_mllm.training.sample_tensors import collate_samples, split_batch

from .setup_extras import setup_extras
from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401

FLASH = {"flash_attention_2": "flash-attn", "flash_attention_4": "flash-attn-4"}


def attention_of_every_part(model) -> dict[str, str]:
    config = model.config
    return {"llm": model.model.language_model.config._attn_implementation,
            "vit": config.vision_config._attn_implementation,
            "vggt": model.geometry_encoder.config._attn_implementation,
            "fusion": config.geometry_fusion_config._attn_implementation}


def gpu_machine(monkeypatch, capability=(9, 0), installed=("flash-attn", "flash-attn-4", "liger-kernel")):
    """Simulate a CUDA machine of `capability` with the `installed` packages (for kernels.py's checks)."""
    monkeypatch.setattr(kernels, "installed_version", lambda name: "1.0" if name in installed else None)
    monkeypatch.setattr(kernels, "cuda_capability", lambda: capability)


def planned(values: dict, cuda: bool):
    """(recipe, plan) as build_trainer makes them, on a simulated CUDA machine with bf16 or on a CPU."""
    return apply_device_plan(recipe_from_dict(values), cuda_available=cuda, bf16_supported=True if cuda else None)


def test_the_default_stays_sdpa_and_trains(tmp_path, recon_dataset):
    model, processor = tiny()
    setup = build(tmp_path, recon_dataset, model, processor)
    assert set(attention_of_every_part(model).values()) == {"sdpa"}
    setup.trainer.train()
    assert torch.isfinite(torch.tensor(setup.trainer.state.log_history[-1]["train_loss"]))


def test_eager_reaches_every_part_of_a_fresh_model_and_trains(tmp_path, recon_dataset):
    """`model.attn_implementation` used to be passed to from_pretrained only: a fresh model (model.tiny) kept sdpa."""
    settings = recipe(tmp_path, model={"tiny": "tiny", "attn_implementation": "eager"}, training={"max_steps": 1})
    setup = run.build_trainer(settings, train_dataset=recon_dataset)
    assert set(attention_of_every_part(setup.model.gap_model).values()) == {"eager"}
    setup.trainer.train()
    assert setup.trainer.state.global_step == 1


def build(tmp_path, dataset, model, processor, **sections):
    return run.build_trainer(recipe(tmp_path, **sections, training={"max_steps": 1}), model=model, processor=processor,
                             train_dataset=dataset)


@pytest.mark.parametrize("name", list(FLASH))
def test_flash_without_the_package_on_a_cpu_is_refused_naming_both(name, monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    settings, plan = planned({"model": {"attn_implementation": name}}, cuda=False)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == (
        f"model.attn_implementation={name!r} needs the {FLASH[name]} package (not installed) and a CUDA device (this "
        "run trains on the CPU; device plan: auto: torch sees no CUDA device); run on a GPU machine after `make gpu-venv`")


def test_the_refusal_comes_before_the_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    monkeypatch.setattr(run, "load_model_and_processor", lambda source: pytest.fail("the model was loaded"))
    with pytest.raises(KernelUnavailableError, match=r"^model.attn_implementation='flash_attention_2' needs the flash-attn"):
        run.build_trainer(recipe(tmp_path, model={"tiny": "tiny", "attn_implementation": "flash_attention_2"}))


def test_the_encoder_stages_refuse_before_loading_too(tmp_path, monkeypatch):
    from gap_mllm.training import encoder_stage_run

    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    monkeypatch.setattr(encoder_stage_run, "load_model_and_processor", lambda source: pytest.fail("the model was loaded"))
    settings = recipe(tmp_path, stage="geometry", model={"tiny": "tiny", "attn_implementation": "flash_attention_4"})
    with pytest.raises(KernelUnavailableError, match=r"^model.attn_implementation='flash_attention_4' needs the flash-attn-4"):
        encoder_stage_run.build_encoder_stage_trainer(settings)


def test_flash_on_a_gpu_without_the_package_says_how_to_install_it(monkeypatch):
    gpu_machine(monkeypatch, installed=())
    settings, plan = planned({"model": {"attn_implementation": "flash_attention_2"}}, cuda=True)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == ("model.attn_implementation='flash_attention_2' needs the flash-attn package (not "
                                "installed); install the GPU extras with `make gpu-venv`")


def test_flash_attention_4_on_an_ampere_gpu_is_refused(monkeypatch):
    gpu_machine(monkeypatch, capability=(8, 0))
    settings, plan = planned({"model": {"attn_implementation": "flash_attention_4"}}, cuda=True)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == ("model.attn_implementation='flash_attention_4' needs a Hopper or newer GPU (compute "
                                "capability 9.0+; this one is 8.0); on this GPU choose an attention it runs "
                                "(flash_attention_2 from Ampere on, sdpa on any GPU)")  # installing would not help
    settings, plan = planned({"model": {"attn_implementation": "flash_attention_2"}}, cuda=True)
    check_kernels(settings, plan)  # flash-attn 2.x runs on Ampere


@pytest.mark.parametrize("name", list(FLASH))
def test_flash_is_accepted_on_a_gpu_with_the_package_and_half_precision(name, monkeypatch):
    gpu_machine(monkeypatch)
    for values in ({"model": {"attn_implementation": name, "dtype": "bfloat16"}},
                   {"model": {"attn_implementation": name, "dtype": "float32"}, "training": {"bf16": True}},  # autocast
                   {"model": {"attn_implementation": name}}):  # the plan's default on CUDA: bf16 autocast
        settings, plan = planned(values, cuda=True)
        check_kernels(settings, plan)


def test_flash_in_float32_without_autocast_is_refused(monkeypatch):
    gpu_machine(monkeypatch)
    settings, plan = planned({"model": {"attn_implementation": "flash_attention_2", "dtype": "float32"},
                              "training": {"bf16": False, "fp16": False}}, cuda=True)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == ("model.attn_implementation='flash_attention_2' computes in bfloat16 or float16 only, and "
                                "this run computes in float32; set model.dtype: bfloat16 or training.bf16: true")


def test_flash_reaches_every_part_through_transformers(monkeypatch, build_model):
    """The loaded model's precision is checked (model.dtype "auto" is known only then), then transformers'
    `set_attn_implementation` switches the whole model (its flash checks need the package: a stand-in records it)."""
    model = build_model()
    calls = []

    def set_attn_implementation(self, name):
        calls.append(name)
        for config in (self.config, self.config.text_config, self.config.vision_config,
                       self.config.geometry_config, self.config.geometry_fusion_config):
            config._attn_implementation = name

    monkeypatch.setattr(type(model), "set_attn_implementation", set_attn_implementation)
    with pytest.raises(KernelUnavailableError, match="computes in bfloat16 or float16 only, and this run computes in float32"):
        apply_attention_implementation(model, "flash_attention_2", {"bf16": False})
    assert calls == []
    apply_attention_implementation(model, "flash_attention_2", {"bf16": True})
    assert calls == ["flash_attention_2"]
    assert set(attention_of_every_part(model).values()) == {"flash_attention_2"}
    apply_attention_implementation(model, "flash_attention_2", {"bf16": True})  # already set: not again
    apply_attention_implementation(model, None, {})  # unset: the model's own
    assert calls == ["flash_attention_2"]


def test_unknown_attention_names_and_transformers_liger_switch_are_refused_when_read():
    with pytest.raises(ValueError) as error:
        recipe_from_dict({"model": {"attn_implementation": "flash_attention_3"}})
    assert str(error.value) == ("model.attn_implementation='flash_attention_3'; choose from ('sdpa', 'eager', "
                                "'flash_attention_2', 'flash_attention_4') (or leave it unset: the model's own, sdpa)")
    with pytest.raises(RecipeTypeError, match=r"^training.use_liger_kernel: transformers applies Liger only to a "
                                              r"PreTrainedModel .* Set kernels.liger_fused_linear_cross_entropy: true"):
        recipe_from_dict({"training": {"use_liger_kernel": True}})
    with pytest.raises(ValueError, match=r"^kernels.liger_fused_linear_cross_entropy applies to the LLM stages"):
        recipe_from_dict({"stage": "geometry", "kernels": {"liger_fused_linear_cross_entropy": True}})


def test_liger_without_the_package_on_a_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    settings, plan = planned({"kernels": {"liger_fused_linear_cross_entropy": True}}, cuda=False)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == (
        "kernels.liger_fused_linear_cross_entropy=true needs the liger-kernel package (not installed) and a CUDA device "
        "(this run trains on the CPU; device plan: auto: torch sees no CUDA device); run on a GPU machine after "
        "`make gpu-venv`")
    gpu_machine(monkeypatch)
    settings, plan = planned({"kernels": {"liger_fused_linear_cross_entropy": True}}, cuda=True)
    check_kernels(settings, plan)


@pytest.fixture
def liger_stand_in(monkeypatch):
    """`liger_kernel.transformers.functional.liger_fused_linear_cross_entropy` computed in plain torch, recording
    its calls (the real kernel is Triton: CUDA only)."""
    calls = []

    def fused(input, weight, target, bias=None, reduction="mean", **kwargs):
        calls.append({"tokens": input.shape[0], "weight": weight, "reduction": reduction})
        return F.cross_entropy(F.linear(input, weight, bias).float(), target, reduction=reduction)

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = fused
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    return calls


def test_liger_computes_the_answer_loss_of_the_recipe(tmp_path, recon_dataset, liger_stand_in, monkeypatch):
    checked = []
    monkeypatch.setattr(run, "check_kernels", lambda settings, plan: checked.append(settings.kernels))
    model, processor = tiny()
    setup = build(tmp_path, recon_dataset, model, processor, kernels={"liger_fused_linear_cross_entropy": True})
    assert checked and checked[0].liger_fused_linear_cross_entropy and setup.model.liger_cross_entropy
    batch = setup.trainer.data_collator([recon_dataset[i] for i in range(2)])
    batch.pop("num_skipped_samples")
    fused = setup.model(**batch)
    assert len(liger_stand_in) == 1 and liger_stand_in[0]["reduction"] == "sum"
    assert liger_stand_in[0]["weight"] is model.lm_head.weight
    assert liger_stand_in[0]["tokens"] == int(fused.lm_num_tokens) > 0
    plain = GeometryAlignedModel(model)(**batch)
    torch.testing.assert_close(fused.lm_loss_sum, plain.lm_loss_sum, rtol=1e-6, atol=0)
    setup.trainer.train()
    assert len(liger_stand_in) == 2  # the training step went through it too


def test_liger_is_refused_under_deepspeed_zero3():
    def trainer(stage):
        state = types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(zero_stage=stage))
        return types.SimpleNamespace(is_deepspeed_enabled=True, accelerator=types.SimpleNamespace(state=state))

    kernels.check_liger_distribution(trainer(2))
    kernels.check_liger_distribution(types.SimpleNamespace(is_deepspeed_enabled=False))
    with pytest.raises(KernelUnavailableError, match=r"^kernels.liger_fused_linear_cross_entropy=true does not run "
                                                     r"under DeepSpeed ZeRO-3"):
        kernels.check_liger_distribution(trainer(3))


def test_packed_rows_with_flash_attention_stay_one_row(recon_dataset):
    """transformers' flash-attn path keeps the samples of ONE packed row apart; several rows would attend across
    samples, so they are refused (and a recipe's row cap with flash is refused when it is read)."""
    with pytest.raises(ValueError) as error:
        recipe_from_dict({"model": {"attn_implementation": "flash_attention_2"},
                          "data": {"packing": True, "packing_row_tokens": 300}})
    assert str(error.value) == f"data.packing_row_tokens=300 with model.attn_implementation='flash_attention_2': {FLASH_ONE_ROW}"
    recipe_from_dict({"model": {"attn_implementation": "sdpa"}, "data": {"packing": True, "packing_row_tokens": 300}})

    model, processor = tiny()
    settings = recipe_from_dict({})
    from gap_mllm.training.data import sample_collator

    batch = sample_collator(processor, settings.data, settings.aux)([recon_dataset[i] for i in range(3)])
    batch.pop("num_skipped_samples")
    rows = collate_samples(split_batch(batch), processor.tokenizer.pad_token_id, packing=True)  # rows of the longest
    assert rows["input_ids"].shape[0] > 1
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError) as error:
        GeometryAlignedModel(model)(**rows)
    assert str(error.value) == (f"{rows['input_ids'].shape[0]} packed rows with attn_implementation='flash_attention_2': "
                                f"{FLASH_ONE_ROW}")


def test_the_kernel_report_that_ends_make_gpu_venv(monkeypatch):
    gpu_machine(monkeypatch)
    assert kernels.kernel_report("cuda") == [
        "model.attn_implementation=flash_attention_2: flash-attn 1.0: ready",
        "model.attn_implementation=flash_attention_4: flash-attn-4 1.0: ready",
        "kernels.liger_fused_linear_cross_entropy=true: liger-kernel 1.0: ready"]
    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    assert kernels.kernel_report("cpu")[0] == (
        "model.attn_implementation=flash_attention_2: flash-attn -: needs the flash-attn package (not installed) and a "
        f"CUDA device (torch {torch.__version__} sees none)")


def test_make_gpu_venv_installs_the_gpu_extras_apart_from_the_cpu_path():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[1]
    extras = setup_extras(repo)
    gpu = [*extras["gpu"], *extras["flash"]]
    assert all("==" in requirement for requirement in gpu)  # pinned: versions that exist on PyPI
    names = {requirement.split("[")[0].split("=")[0] for requirement in gpu}
    assert names == {"flash-attn", "flash-attn-4", "liger-kernel", "deepspeed"}
    assert {kernels.FLASH_PACKAGES[name].distribution for name in kernels.FLASH_PACKAGES} | {
        kernels.LIGER_PACKAGE.distribution} <= names  # what the checks ask for is what the extras install
    for name in ("data", "train", "eval", "space"):  # "dev" and "lmms" are unions of these (setup.py)
        assert not names & {requirement.split("[")[0].split("=")[0].split(">")[0] for requirement in extras[name]}

    def dry_run(*targets):
        return subprocess.run(["make", "-n", "ANY_MACHINE=1", *targets], cwd=repo, capture_output=True, text=True, check=True).stdout

    gpu_lines = [line for line in dry_run("gpu-venv").splitlines() if "pip" in line]
    assert [line.split(" install ", 1)[1].strip() for line in gpu_lines] == [
        '"torch==2.13.0" setuptools wheel packaging psutil ninja',
        '--no-build-isolation -e ".[dev,flash]"',  # flash-attn builds against the CUDA torch, then flash-attn-4
        '-e ".[gpu]"']
    assert all(line.startswith(".venv-gpu/bin/python -m pip") for line in gpu_lines)
    cpu = dry_run("-B", "install")  # -B: every step of the CPU path, as on a fresh machine
    assert "gpu" not in cpu and "flash" not in cpu and ".venv-gpu" not in cpu


def test_compiled_layers_and_liger_are_on_by_default_on_cuda_only(monkeypatch):
    """Unset kernel switches: on for a CUDA run of an LLM stage where they can run, off on the CPU; a given switch
    stays as given."""
    monkeypatch.setattr(kernels, "compile_problem", lambda device: None)
    switches = ("liger_fused_linear_cross_entropy", "liger_language_model", "compile_layers", "graph_geometry_encoder")

    def decided(values, cuda):
        settings = kernels.resolve_kernels(*planned(values, cuda))
        return {name: getattr(settings.kernels, name) for name in switches}

    earned = dict.fromkeys([*switches, "packing", "compile_towers"], True)
    monkeypatch.setattr(kernels, "earned_switches", lambda **_: earned)
    buckets = {"data": {"length_buckets": [512, 1024]}}
    assert decided(buckets, cuda=False) == dict.fromkeys(switches, False)
    gpu_machine(monkeypatch)
    assert decided(buckets, cuda=True) == dict.fromkeys(switches, True)
    assert decided({}, cuda=True)["compile_layers"] is False  # measured at buckets' static shapes only
    assert decided({**buckets, "kernels": {"compile_layers": False}}, cuda=True)["compile_layers"] is False
    assert decided({**buckets, "stage": "geometry"}, cuda=True) == dict.fromkeys(switches, False)  # encoder stages
    gpu_machine(monkeypatch, installed=())  # no liger-kernel: compiled, no Liger
    assert decided(buckets, cuda=True) == {"liger_fused_linear_cross_entropy": False, "liger_language_model": False,
                                           "compile_layers": True, "graph_geometry_encoder": True}
    monkeypatch.setattr(kernels, "compile_problem", lambda device: "Triton")
    assert decided(buckets, cuda=True)["compile_layers"] is False
    earned["graph_geometry_encoder"] = False  # the committed file today: no GPU figure has earned it
    assert decided(buckets, cuda=True)["graph_geometry_encoder"] is False


def test_compiled_layers_and_liger_language_model_are_refused_where_they_cannot_run(monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda _: None)
    settings, plan = planned({"kernels": {"liger_language_model": True}}, cuda=False)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == (
        "kernels.liger_language_model=true needs the liger-kernel package (not installed) and a CUDA device (this run "
        "trains on the CPU; device plan: auto: torch sees no CUDA device); run on a GPU machine after `make gpu-venv`")
    monkeypatch.setattr(kernels, "compile_problem", lambda device: f"a C++ compiler for inductor's {device} code (none)")
    settings, plan = planned({"kernels": {"compile_layers": True}}, cuda=False)
    with pytest.raises(KernelUnavailableError) as error:
        check_kernels(settings, plan)
    assert str(error.value) == ("kernels.compile_layers=true needs a C++ compiler for inductor's cpu code (none); set "
                                "it to false (or leave it unset: compiled on CUDA only)")
    with pytest.raises(ValueError, match=r"^kernels.compile_layers applies to the LLM stages"):
        recipe_from_dict({"stage": "vision", "kernels": {"compile_layers": True}})


@pytest.fixture
def liger_pieces_stand_in(monkeypatch):
    """Liger's three building blocks (`LigerRMSNorm`, `liger_rotary_pos_emb`, `LigerSwiGLUMLP.forward`) computed in
    plain torch with Qwen3's math, counting their calls (the real ones are Triton: CUDA only). `liger_kernel.transformers`
    has no `apply_liger_kernel_to_qwen3_vl` here: in liger-kernel 0.8.5 that patcher fails to import with transformers
    5.23, so the glue must not reach it. Qwen3-VL's module RoPE is restored afterwards."""
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    calls = {"rms_norm": 0, "rope": 0, "swiglu": 0}

    class LigerRMSNorm(torch.nn.Module):
        def __init__(self, hidden_size, eps=1e-6, offset=0.0, casting_mode="llama", init_fn="ones", in_place=True,
                     row_mode=None):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(hidden_size))
            self.variance_epsilon, self.settings = eps, {"offset": offset, "casting_mode": casting_mode}

        def forward(self, hidden_states):
            calls["rms_norm"] += 1
            states = hidden_states.float()
            states = states * torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight * states.to(hidden_states.dtype)

    def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        calls["rope"] += 1
        return original_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    class LigerSwiGLUMLP(torch.nn.Module):
        def forward(self, x):
            calls["swiglu"] += 1
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    original_rope = modeling_qwen3_vl.apply_rotary_pos_emb
    monkeypatch.setattr(modeling_qwen3_vl, "apply_rotary_pos_emb", original_rope)
    pieces = {"rms_norm": {"LigerRMSNorm": LigerRMSNorm}, "rope": {"liger_rotary_pos_emb": liger_rotary_pos_emb},
              "swiglu": {"LigerSwiGLUMLP": LigerSwiGLUMLP}}
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for name, members in pieces.items():
        module = types.ModuleType(f"liger_kernel.transformers.{name}")
        vars(module).update(members)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls, LigerRMSNorm


def test_the_switches_reach_the_language_model(tmp_path, recon_dataset, liger_pieces_stand_in, monkeypatch):
    """`liger_language_model` puts Liger's RMSNorm in every norm of Qwen3-VL's text model (sharing the weights: the
    state dict keeps its names and tensors), its SwiGLU in every MLP and its RoPE in the attention, and the patched
    model computes the unpatched loss (stand-ins with Qwen3's math; kernels.apply_liger_to_qwen3_vl_text);
    `compile_layers` compiles every decoder layer on its own (regional), statically with length buckets."""
    calls, liger_norm = liger_pieces_stand_in
    compiled = []
    monkeypatch.setattr(run, "check_kernels", lambda settings, plan: None)
    reference_setup = build(tmp_path, recon_dataset, *tiny(), kernels={"liger_language_model": False})
    batch = reference_setup.trainer.data_collator([recon_dataset[i] for i in range(2)])
    batch.pop("num_skipped_samples")
    reference = reference_setup.model(**batch).lm_loss_sum
    model, processor = tiny()
    language_model = model.model.language_model
    names_before = model.state_dict(keep_vars=True)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append((self, kwargs)))
    setup = build(tmp_path, recon_dataset, model, processor, data={"length_buckets": [256]},
                  kernels={"liger_language_model": True, "compile_layers": True})
    layers = len(language_model.layers)
    norms = [module for module in language_model.modules() if isinstance(module, liger_norm)]
    assert len(norms) == 4 * layers + 1  # input, post-attention, q and k norms per layer; the final norm
    assert not [module for module in language_model.modules() if type(module).__name__ == "Qwen3VLTextRMSNorm"]
    assert all(norm.settings == {"offset": 0.0, "casting_mode": "llama"} for norm in norms)
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(names_before) and all(after[name] is names_before[name] for name in after)
    assert all(layer.mlp.forward.__func__.__qualname__.endswith("LigerSwiGLUMLP.forward")
               for layer in language_model.layers)
    patched = setup.model(**batch).lm_loss_sum
    assert calls == {"rms_norm": 4 * layers + 1, "rope": layers, "swiglu": layers}
    torch.testing.assert_close(patched, reference, rtol=1e-6, atol=0)
    assert [module for module, _ in compiled] == list(language_model.layers)
    assert all(kwargs == {"dynamic": False, "backend": "inductor"} for _, kwargs in compiled)
    compiled.clear()
    build(tmp_path, recon_dataset, *tiny(), kernels={"liger_language_model": False, "compile_layers": False})
    assert compiled == []


def test_liger_pieces_that_do_not_import_are_named(monkeypatch):
    """A liger-kernel whose building blocks fail to import (here: absent) is named with the option, not a bare
    ImportError from inside the first step."""
    from gap_mllm.training.kernels import apply_liger_to_qwen3_vl_text

    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    language_model = tiny()[0].model.language_model
    with pytest.raises(ImportError, match=r"^kernels.liger_language_model: liger-kernel's RMSNorm, RoPE or SwiGLU "
                                          r"does not import \(.*liger_kernel.*\)$"):
        apply_liger_to_qwen3_vl_text(language_model)


def test_liger_refuses_a_mlp_it_cannot_compute(liger_pieces_stand_in, monkeypatch):
    """A non-SiLU MLP is refused before anything is patched (Liger's SwiGLU computes SiLU only)."""
    from gap_mllm.training.kernels import apply_liger_to_qwen3_vl_text

    language_model = tiny()[0].model.language_model
    monkeypatch.setattr(language_model.config, "hidden_act", "gelu")
    with pytest.raises(ValueError, match=r"^kernels.liger_language_model: the text model's MLP activation is 'gelu'; "
                                         r"Liger's SwiGLU computes silu / swish only"):
        apply_liger_to_qwen3_vl_text(language_model)
    assert liger_pieces_stand_in[0] == {"rms_norm": 0, "rope": 0, "swiglu": 0}


def test_liger_on_by_default_turns_off_under_zero3_and_asked_for_is_refused(tmp_path, recon_dataset, monkeypatch):
    """The default must not refuse a ZeRO-3 run that trained before it: unset, the fused loss is off there; asked for
    (`true`), it is refused as before."""
    monkeypatch.setattr(run, "check_kernels", lambda settings, plan: None)

    def as_on_cuda(settings, plan):  # what resolve_kernels decides on a CUDA machine with liger-kernel (no compile)
        liger = settings.kernels.liger_fused_linear_cross_entropy is not False
        return dataclasses.replace(settings, kernels=dataclasses.replace(
            settings.kernels, liger_fused_linear_cross_entropy=liger, liger_language_model=False, compile_layers=False))

    monkeypatch.setattr(run, "resolve_kernels", as_on_cuda)
    for module in (run, kernels):
        monkeypatch.setattr(module, "under_zero3", lambda trainer: True)
    setup = build(tmp_path, recon_dataset, *tiny())
    assert setup.model.liger_cross_entropy is False
    with pytest.raises(KernelUnavailableError, match=r"^kernels.liger_fused_linear_cross_entropy=true does not run "
                                                     r"under DeepSpeed ZeRO-3"):
        build(tmp_path, recon_dataset, *tiny(), kernels={"liger_fused_linear_cross_entropy": True})
