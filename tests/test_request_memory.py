"""A request is priced from the config before the weights load (checks.py `request_memory`: the weights and each
frame's activations, calibrated on the real size's measured 0.099 GiB a frame), and one that cannot fit in the memory
left is refused in one line naming the frame count that would: by `gap-mllm predict` (exit status 2, the model never
loaded) and by the Space (the page's user error, the model never run)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from gap_mllm import checks
from gap_mllm.cli import space_backend
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.real_size import real_size_config
from gap_mllm.cli.space_backend import USER_ERRORS, SpaceBackend, SpaceSettings
from gap_mllm.cli.tasks import TaskRequest, check_request
from gap_mllm.tiny.tiny_model import build_tiny_model

GIB = 2**30
# three frames of 96x64 px as the tiny processor gives them: Qwen's grid 1x4x6 (24 patches, 6 LLM tokens), VGGT's
# 56x84 px (4x6 patches + the camera and 4 register tokens: 29 tokens)
TINY_FRAMES = {"image_grid_thw": torch.tensor([[1, 4, 6]] * 3), "geometry_pixel_values": torch.zeros(3, 3, 56, 84)}
# The tiny config (text 64 wide, MLP 128, 4 layers, 4 heads and 2 KV heads of 16; ViT 32 wide, MLP 64, 3 DeepStack
# levels, out 64; VGGT 32 wide, mlp_ratio 4, 4 tapped layers; 4 fusion levels, merger 128), by hand, per frame:
TINY_FRAME_ELEMENTS = (
    6 * (2 * 4 * 2 * 16 + 4 * 64 + 3 * 128 + 4 * 64)  # LLM tokens: KV cache 256, decoder 640, DeepStack 256
    + 24 * (4 * 32 + 64)  # ViT patches: a block's working set
    + 6 * 4 * (128 + 64)  # LLM tokens: each fusion level's merger
    + 29 * (4 * 64 + (4 + 4) * 32)  # VGGT tokens: 4 tapped features of 2·32, a block's working set
)
TINY_PARAMETERS = 714_496  # checks.estimate_num_parameters (test_config_size_fields.py tests it)
TINY_DECODER_PARAMETERS = 4 * (2 * 64 * 4 * 16 + 2 * 64 * 2 * 16 + 3 * 64 * 128)  # q, o; k, v; gate, up, down


@pytest.fixture(scope="module")
def tiny():
    """The tiny model's config and processor."""
    model, processor = build_tiny_model()
    return model.config, processor


@pytest.fixture(scope="module")
def tiny_config(tiny):
    return tiny[0]


def test_the_price_of_a_request_is_its_weights_and_its_frames(tiny_config):
    assert TINY_FRAME_ELEMENTS == 30_976 and TINY_DECODER_PARAMETERS == 147_456
    price = checks.request_memory(tiny_config, TINY_FRAMES)
    per_frame = 138_339  # ceil(1.1165 × 30,976 elements × 4 bytes (float32))
    assert per_frame == int(np.ceil(checks.FRAME_MEMORY_CALIBRATION * TINY_FRAME_ELEMENTS * 4))
    assert price == checks.RequestMemory(frames=3, weights=TINY_PARAMETERS * 4, per_frame=per_frame,
                                         parameters=TINY_PARAMETERS, dtype=torch.float32)
    assert price.total == 2_857_984 + 3 * 138_339
    # --quantize: the decoder layers at 1 byte (int8) or half a byte (int4) a weight, the rest as loaded
    assert checks.request_memory(tiny_config, TINY_FRAMES, "int8").weights == 2_857_984 - 147_456 * 3 == 2_415_616
    assert checks.request_memory(tiny_config, TINY_FRAMES, "bnb-nf4").weights == 2_857_984 - 147_456 * 3.5 == 2_341_888
    assert checks.request_memory(tiny_config, TINY_FRAMES, weights_loaded=True).total == 3 * 138_339
    # an optimum-quanto load peaks at QUANTIZED_LOAD_PEAK × the weights as they load (float32 here), before the answer
    int8 = checks.request_memory(tiny_config, TINY_FRAMES, "int8")
    assert int8.load_peak == int(1.40 * 2_857_984) == 4_001_177 and int8.total == int8.load_peak
    assert int8.frames_that_fit(int8.load_peak - 1) == 0 and int8.frames_that_fit(int8.load_peak) > 3
    assert checks.request_memory(tiny_config, TINY_FRAMES, "bnb-int8").load_peak == 0  # quantized on the GPU
    assert checks.request_memory(tiny_config, TINY_FRAMES, "int8", weights_loaded=True).load_peak == 0


def test_the_price_of_a_frame_at_the_real_size_is_the_measured_slope():
    """bf16, the inference frames (Qwen 26x34 patches: 221 LLM tokens; VGGT 364x476 px: 889 tokens): 0.099 GiB a
    frame, the CPU's fit (docs/install.md "Frames against memory"); the weights 3.24e9 parameters × 2 bytes."""
    config = real_size_config()
    config.dtype = torch.bfloat16
    frames = {"image_grid_thw": torch.tensor([[1, 26, 34]] * 4), "geometry_pixel_values": torch.zeros(4, 3, 364, 476)}
    price = checks.request_memory(config, frames)
    assert round(price.per_frame / GIB, 4) == 0.0990 and price.weights == 3_236_348_928 * 2


@pytest.mark.parametrize("available, quantize, loaded, message", [
    (2_857_984 + 2 * 138_339 + 1000, None, False,
     ("3 frame(s) need about 0.00305 GiB (0.00266 GiB of weights + 0.000129 GiB a frame), but 0.00292 GiB are "
      "available on cpu: give at most 2 frame(s) of this size")),
    (2_000_000, None, False,
     ("3 frame(s) need about 0.00305 GiB (0.00266 GiB of weights + 0.000129 GiB a frame), but 0.00186 GiB are "
      "available on cpu: the weights (7.14e+05 parameters in torch.float32, 0.00266 GiB) alone do not fit; use a "
      "smaller model or a machine with more memory, or --quantize int8 / int4")),
    (2_415_616 + 1000, "bnb-int8", False,
     ("3 frame(s) need about 0.00264 GiB (0.00225 GiB of weights + 0.000129 GiB a frame), but 0.00225 GiB are "
      "available on cpu: the weights (7.14e+05 parameters in torch.float32, decoder layers in bnb-int8, 0.00225 GiB) "
      "leave no room for one frame; use a smaller model or a machine with more memory")),
    (4_001_177 - 1, "int8", False,  # room for the int8 weights and every frame, not for the load's peak
     ("loading the weights (7.14e+05 parameters in torch.float32) with --quantize int8 takes about 0.00373 GiB at "
      "its peak (each weight read before it is converted), but 0.00373 GiB are available on cpu; use a machine with "
      "more memory, or load without --quantize")),
    (100_000, None, True,
     ("3 frame(s) need about 0.000387 GiB (0.000129 GiB a frame beside the loaded weights), but 9.31e-05 GiB are "
      "available on cpu: not one frame fits; free memory or use a machine with more")),
], ids=["some-frames-fit", "weights-alone", "no-room-for-a-frame", "quantized-load-peak", "weights-loaded"])
def test_a_request_past_the_memory_left_is_refused_in_one_line(tiny_config, monkeypatch, available, quantize, loaded,
                                                               message):
    monkeypatch.setattr(checks, "available_memory", lambda device: available)
    with pytest.raises(ValueError) as refused:
        checks.check_memory_for_request(tiny_config, TINY_FRAMES, "cpu", quantize, loaded)
    assert str(refused.value) == message


def test_a_request_that_fits_passes_and_an_unknown_memory_is_not_priced(tiny, monkeypatch):
    tiny_config, processor = tiny
    views = [Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8))] * 3
    monkeypatch.setattr(checks, "available_memory", lambda device: 2_857_984 + 3 * 138_339)  # the price exactly
    inputs = check_request(tiny_config, processor, views, TaskRequest("detection"), device="cpu")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]] * 3 and inputs["geometry_pixel_values"].shape[-2:] == (56, 84)
    monkeypatch.setattr(checks, "available_memory", lambda device: None)
    check_request(tiny_config, processor, views, TaskRequest("detection"), device="cuda")


def test_predict_refuses_frames_past_the_memory_before_loading(tmp_path, monkeypatch, no_model_load, capsys):
    frames = []
    for index in range(3):
        frames.append(str(tmp_path / f"f{index}.png"))
        Image.fromarray(np.full((64, 96, 3), 30 * index, dtype=np.uint8)).save(frames[-1])
    monkeypatch.setattr(checks, "available_memory", lambda device: 2_857_984 + 2 * 138_339 + 1000)
    assert gap_mllm(["predict", "--model", "tiny", "--images", *frames, "--task", "detection"]) == 2
    # the tiny model's folder is written first (its progress bar), then the one line
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gap-mllm predict: error: 3 frame(s) need about 0.00305 GiB (0.00266 GiB of weights + 0.000129 GiB a frame), "
        "but 0.00292 GiB are available on cpu: give at most 2 frame(s) of this size")


def test_the_space_refuses_frames_past_the_memory_before_the_model_runs(tmp_path, monkeypatch):
    backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tmp_path / "space")
    monkeypatch.setattr(space_backend, "run_task", lambda *a, **k: pytest.fail("the model ran"))
    monkeypatch.setattr(space_backend, "on_zero_gpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(checks, "available_memory", lambda device: 1000)
    with pytest.raises(USER_ERRORS) as refused:
        backend.run(None, min(space_backend.EXAMPLE_SEEDS), "3D object detection")
    assert re.fullmatch(r"4 frame\(s\) need about \S+ GiB \(\S+ GiB a frame beside the loaded weights\), but 9.31e-07 "
                        r"GiB are available on cpu: not one frame fits; free memory or use a machine with more",
                        str(refused.value))
    backend.close()
