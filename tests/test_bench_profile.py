"""bench/profile_train_step.py on the CPU (the small config): the profile of a training step sums the kernels'
time by class, counts host syncs, times each tower's forward, and trains through the package's divergence guard
(the same arm session as bench_train_arms.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_train_step  # noqa: E402


def test_kernel_names_fall_into_their_classes():
    cases = {"nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NTT": "matmul", "aten::addmm": "matmul",
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16": "attention",
             "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(": "norm",
             "void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda": "copy",
             "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor": "optimizer",
             "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast": "elementwise",
             "void cub::DeviceRadixSortOnesweepKernel": "other"}
    assert {name: profile_train_step.kernel_class(name) for name in cases} == cases


def test_a_small_profile_on_the_cpu(tmp_path):
    out = tmp_path / "profile.json"
    threads = torch.get_num_threads()
    try:
        assert profile_train_step.main(["--size", "small", "--device", "cpu", "--steps", "3", "--warmup", "2",
                                        "--arms", "sdpa", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    profile = json.loads(out.read_text())["measurements"]["profile_sdpa"]
    assert profile["profiled_steps"] == 1
    assert abs(sum(profile["kernel_classes_s"].values()) - profile["kernel_s_per_step"]) < 1e-9
    assert profile["kernel_classes_s"]["matmul"] > 0 and set(profile["towers_forward_s"]) == {
        "geometry_encoder", "vision_tower", "fusion", "language_model"}
    assert all(value > 0 for value in profile["towers_forward_s"].values())
    assert profile["syncs_per_step"].get("aten::item", 0) >= 1  # the guard reads the gradient norm once a step
