"""GapMllmProcessor: Qwen/VGGT token alignment, official modes, input types, errors, save/load, decoding.

Also covers the size rules of `processing_gap_mllm.py` and the tiny tokenizer fixture.
"""

import json
import logging
import types

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from gap_mllm.image_utils_gap_mllm import draw_marker, pad_to_vggt_square, vggt_pad_boxes
from gap_mllm.processing_gap_mllm import (
    GapMllmProcessor,
    crop_to_even_patch_count,
    crop_top_left_to_multiple,
    geometry_size_for_qwen_size,
    load_image,
    smart_resize,
    vggt_crop_size,
)
from gap_mllm.tasks_gap_mllm import Box3D, serialize_detection, serialize_frame_selection, serialize_pointmap
from gap_mllm.tiny.tiny_tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_processor, build_tiny_tokenizer

TINY_MIN, TINY_MAX = 32 * 32 * 4, 128 * 128 * 4
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def official_processors():
    tokenizer = build_tiny_tokenizer()
    return {
        mode: GapMllmProcessor.from_tokenizer(
            tokenizer, min_pixels=TINY_MIN, max_pixels=TINY_MAX, preprocessing_mode=mode
        )
        for mode in ("official_inference", "official_training")
    }


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _tokens_per_vision_block(input_ids, tokenizer):
    """Number of <|image_pad|> tokens between each <|vision_start|> and <|vision_end|>, in order."""
    start, end, pad = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
    )
    counts, current = [], None
    for token in input_ids.tolist():
        if token == start:
            current = 0
        elif token == end:
            counts.append(current)
            current = None
        elif current is not None:
            assert token == pad
            current += 1
    return counts


def _expected_geometry(image, h_p, w_p):
    """Grid mode reference, computed without the package: PIL bicubic to 14·h_p × 14·w_p, then /255."""
    resized = image.resize((14 * w_p, 14 * h_p), PIL.Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0).permute(2, 0, 1)


# --------------------------------------------------------------------------------- size rules


def test_smart_resize_and_grid_rule_match_the_official_tables():
    assert smart_resize(392, 518, min_pixels=200_704, max_pixels=1_605_632) == (416, 544)  # 221 tokens
    assert smart_resize(384, 512, min_pixels=12_544, max_pixels=451_584) == (384, 512)  # 192 tokens
    assert geometry_size_for_qwen_size(416, 544) == (364, 476)
    assert geometry_size_for_qwen_size(384, 512) == (336, 448)
    with pytest.raises(ValueError, match="multiple of the 16-px patch"):
        geometry_size_for_qwen_size(100, 64)


def test_smart_resize_equals_transformers():
    for height in range(20, 1400, 37):
        for width in range(20, 1400, 53):
            for limits in ((TINY_MIN, TINY_MAX), (12_544, 451_584), (200_704, 1_605_632)):
                assert smart_resize(height, width, 32, *limits) == hf_smart_resize(height, width, 32, *limits)


@pytest.mark.parametrize(
    "height, width, expected",
    [(480, 640, (392, 0, 392)), (968, 1296, (392, 0, 392)), (640, 480, (686, 84, 518)), (518, 518, (518, 0, 518))],
)
def test_vggt_crop_sizes(height, width, expected):
    assert vggt_crop_size(height, width) == expected


def test_official_crops():
    image = PIL.Image.new("RGB", (518, 392))
    assert crop_top_left_to_multiple(image).size == (512, 384)
    assert crop_to_even_patch_count(image).size == (518, 392)  # 32 × 24 patches: even, no crop
    assert crop_to_even_patch_count(PIL.Image.new("RGB", (530, 392))).size == (514, 392)  # 33 patches → 32


# ------------------------------------------------------------------------- grid-mode alignment

SIZES = {  # (height, width) → Qwen patch grid under the tiny limits (min 4096, max 65536 px)
    (48, 64): (4, 4),
    (75, 100): (4, 6),
    (33, 97): (4, 8),
    (480, 640): (12, 18),
}


@pytest.mark.parametrize("num_views", [1, 2, 4])
@pytest.mark.parametrize("size", list(SIZES))
def test_grid_mode_aligns_qwen_and_geometry_tokens(processor, size, num_views):
    height, width = size
    h_p, w_p = SIZES[size]
    assert hf_smart_resize(height, width, 32, TINY_MIN, TINY_MAX) == (16 * h_p, 16 * w_p)
    views = [_image(height, width, seed=s) for s in range(num_views)]
    out = processor(images=views, text="Detect the 3D bounding boxes.", return_tensors="pt")

    assert out["image_grid_thw"].tolist() == [[1, h_p, w_p]] * num_views
    assert _tokens_per_vision_block(out["input_ids"][0], processor.tokenizer) == [h_p * w_p // 4] * num_views
    assert out["pixel_values"].shape == (num_views * h_p * w_p, 3 * 2 * 16 * 16)
    assert out["mm_token_type_ids"].sum() == num_views * h_p * w_p // 4
    geometry = out["geometry_pixel_values"]
    assert geometry.dtype == torch.float32 and geometry.shape == (num_views, 3, 14 * h_p, 14 * w_p)
    # geometry tokens after the 2×2 merger == Qwen merged tokens
    assert (geometry.shape[-2] // 14 // 2) * (geometry.shape[-1] // 14 // 2) == h_p * w_p // 4
    assert out["geometry_views_per_sample"].tolist() == [num_views]
    for view, g in zip(views, geometry):
        assert torch.equal(g, _expected_geometry(view, h_p, w_p))


def test_grid_mode_qwen_pixels_equal_the_stock_image_processor(processor):
    image = _image(75, 100)
    out = processor(images=image, text="x", return_tensors="np")
    stock = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, size={"shortest_edge": TINY_MIN, "longest_edge": TINY_MAX},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    np.testing.assert_array_equal(out["pixel_values"], stock(image, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("value, expected", [(0, -1.0), (255, 1.0), (51, -0.6)])
def test_from_tokenizer_normalises_as_qwen3_vl(processor, value, expected):
    """Qwen3-VL's preprocessor normalises with mean = std = 0.5, i.e. x / 127.5 - 1 (the CLIP mean/std of
    the Qwen2-VL image processor class would give 1.93 for white)."""
    image = PIL.Image.fromarray(np.full((64, 96, 3), value, dtype=np.uint8))
    pixels = processor(images=image, text="x", return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_batch_with_different_view_counts_and_sizes(processor):
    samples = [
        [_image(48, 64, 1), _image(48, 64, 2)],
        [_image(75, 100, 3)],
        [_image(33, 97, s) for s in range(4, 8)],
    ]
    out = processor(images=samples, text=["a", "bb", "ccc"], return_tensors="pt")
    grids = [SIZES[(48, 64)]] * 2 + [SIZES[(75, 100)]] + [SIZES[(33, 97)]] * 4
    assert out["image_grid_thw"].tolist() == [[1, h, w] for h, w in grids]
    assert out["geometry_views_per_sample"].tolist() == [2, 1, 4]
    assert out["input_ids"].shape[0] == 3 and out["attention_mask"].shape == out["input_ids"].shape
    per_sample = [_tokens_per_vision_block(row, processor.tokenizer) for row in out["input_ids"]]
    assert per_sample == [[4, 4], [6], [8, 8, 8, 8]]
    geometry = out["geometry_pixel_values"]
    assert geometry.shape == (7, 3, 14 * 4, 14 * 8)  # H_max, W_max over the batch
    flat = [v for s in samples for v in s]
    for i, ((h_p, w_p), view) in enumerate(zip(grids, flat)):
        assert torch.equal(geometry[i, :, : 14 * h_p, : 14 * w_p], _expected_geometry(view, h_p, w_p))
        padding = geometry[i].clone()
        padding[:, : 14 * h_p, : 14 * w_p] = 0
        assert padding.abs().sum() == 0  # zeros outside the valid top-left region


def test_views_of_another_size_are_resized_to_the_first_with_a_warning(processor, caplog):
    first, second = _image(48, 64, 1), _image(75, 100, 2)
    with caplog.at_level(logging.WARNING):
        out = processor(images=[first, second], text="x", return_tensors="pt")
    assert "sample 0, view 1: size 75x100 differs from view 0 (48x64)" in caplog.text
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    resized = second.resize((64, 48), PIL.Image.Resampling.BICUBIC)
    assert torch.equal(out["geometry_pixel_values"][1], _expected_geometry(resized, 4, 4))


def _vggt_pad_reference(image: PIL.Image.Image) -> torch.Tensor:
    """VGGT's `load_and_preprocess_images(mode="pad")` on one RGB image, re-derived from its documented rules without
    the package: the longer side 518, the other round(side·518/longer / 14)·14, bicubic, then centred in a 518×518
    square padded with 1.0 (the first half of the padding left / top, the rest right / bottom)."""
    width, height = image.size
    if width >= height:
        new_width, new_height = 518, round(height * (518 / width) / 14) * 14
    else:
        new_width, new_height = round(width * (518 / height) / 14) * 14, 518
    tensor = torch.from_numpy(np.asarray(image.resize((new_width, new_height), PIL.Image.Resampling.BICUBIC)).copy())
    tensor = tensor.permute(2, 0, 1).float() / 255.0
    h_pad, w_pad = 518 - new_height, 518 - new_width
    return F.pad(tensor, (w_pad // 2, w_pad - w_pad // 2, h_pad // 2, h_pad - h_pad // 2), value=1.0)


def test_views_of_another_shape_are_padded_as_vggts_loader_pads_them(processor, caplog):
    """A portrait photo beside landscape ones: each view is the 518×518 square of VGGT's loader in "pad" mode (exact
    pixels), one note for the sample; a marker is painted in its view's own pixels first, so it moves with the view."""
    assert vggt_pad_boxes([(640, 480), (256, 300)], ["a", "b"]) == [(0, 63, 518, 392), (35, 0, 448, 518)]
    # 7·518/100 / 14 = 2.59 → 3 patches; 5·518/74 / 14 = 2.5 → 2 (Python's round, ties to even, as the loader's)
    assert vggt_pad_boxes([(100, 7), (7, 100), (74, 5), (50, 50)], "abcd") == [
        (0, 238, 518, 42), (238, 0, 42, 518), (0, 245, 518, 28), (0, 0, 518, 518)]
    assert vggt_pad_boxes([(1920, 1080), (1920, 1088)], "ab") is None  # one shape (codec padding): resized, not padded
    landscape, portrait = _image(48, 64, 1), _image(300, 256, 2)
    with caplog.at_level(logging.WARNING):
        out = processor(images=[landscape, portrait, landscape], text="x", point_prompts=(1, 128, 150),
                        return_tensors="pt")
    assert caplog.text.count("frames of different shapes (256x300, 64x48): each is scaled to 518 px on its longer "
                             "side and padded with white to 518x518, as VGGT's reference loader does") == 1
    assert out["image_grid_thw"].tolist() == [[1, 16, 16]] * 3  # the 518×518 square within the tiny pixel limits
    marked = draw_marker(portrait, 128, 150)
    for view, image in ((0, landscape), (1, marked)):
        assert torch.equal(out["geometry_pixel_values"][view], _expected_geometry(_vggt_square(image), 16, 16))
    reference = _vggt_pad_reference(marked)
    assert reference.shape == (3, 518, 518) and torch.all(reference[:, :, :35] == 1.0)  # 35 white columns left
    assert torch.equal(torch.from_numpy(np.array(_vggt_square(marked))).permute(2, 0, 1).float() / 255.0, reference)


def _vggt_square(image):
    return pad_to_vggt_square(image, vggt_pad_boxes([image.size, (1, 2)], "ab")[0])


def test_a_view_too_thin_to_align_is_refused_by_name(processor):
    """A 1×4000 strip beside a landscape view keeps no pixel across in VGGT's 518 square: refused, naming it."""
    with pytest.raises(ValueError) as refused:
        processor(images=[[_image(48, 64, 1)], [_image(48, 64, 1), _image(4000, 1, 2)]], text=["a", "b"])
    assert str(refused.value) == (
        "sample 1, view 1 is 1x4000 (portrait): too thin to align with frames of another shape (padded to VGGT's "
        "518x518 square, its shorter side would keep no pixel); crop it or leave this frame out")
    assert vggt_pad_boxes([(73, 1), (1, 1)], "ab")[0] == (0, 252, 518, 14)  # 1·518/73 / 14 = 0.507: one patch
    with pytest.raises(ValueError, match=r"^a is 74x1 \(landscape\): too thin"):
        vggt_pad_boxes([(74, 1), (1, 1)], "ab")  # 0.5 rounds to 0


def test_an_animated_image_file_is_refused_as_one_view(processor, tmp_path):
    """An animated PNG given as one view is a clip: refused, not read as its first frame."""
    animated = tmp_path / "clip.png"
    frames = [PIL.Image.new("RGB", (16, 12), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError) as refused:
        processor(images=[str(animated)], text="x")
    assert str(refused.value) == (
        f"sample 0, view 0: {str(animated)!r} is an animated PNG of 3 frames, a clip rather than one frame: give its "
        "frames as images, or give the file to gap-mllm predict or the Space, which sample it as a clip")
    still = tmp_path / "still.png"
    frames[0].save(still)
    assert np.asarray(load_image(still))[0, 0].tolist() == [0, 0, 0]  # one frame: an image


def test_per_call_pixel_limits_apply_to_both_branches(processor):
    out = processor(images=_image(480, 640), text="x", max_pixels=32 * 32 * 12, return_tensors="pt")
    h_p, w_p = (v // 16 for v in hf_smart_resize(480, 640, 32, TINY_MIN, 32 * 32 * 12))
    assert out["image_grid_thw"].tolist() == [[1, h_p, w_p]]
    assert out["geometry_pixel_values"].shape[-2:] == (14 * h_p, 14 * w_p)


# ------------------------------------------------------------------------------ official modes


def _official_patches(tensor: torch.Tensor, patch: int = 16, merge: int = 2, temporal: int = 2) -> torch.Tensor:
    """Qwen2-VL's patch layout of one normalised `[3, H, W]` image, by hand: rows in merge-block order
    (block row, block column, row in block, column in block), each row channel × temporal copy × 16 × 16."""
    channels, height, width = tensor.shape
    grid_h, grid_w = height // patch, width // patch
    blocks = tensor.reshape(channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    blocks = blocks.permute(1, 4, 2, 5, 0, 3, 6)  # (block h, block w, in-block h, in-block w, C, ph, pw)
    frames = blocks[:, :, :, :, :, None].expand(*blocks.shape[:5], temporal, patch, patch)  # a still image twice
    return frames.reshape(grid_h * grid_w, channels * temporal * patch * patch)


@pytest.mark.parametrize("height, width", [(480, 640), (968, 1296)])
def test_official_inference_sizes_and_pixels(official_processors, height, width):
    processor = official_processors["official_inference"]
    # black and white blocks: edges sharp enough that the bicubic resize overshoots [0, 1]
    blocks = np.random.default_rng(1).integers(0, 2, (-(-height // 24), -(-width // 24), 3), dtype=np.uint8) * 255
    image = PIL.Image.fromarray(blocks.repeat(24, 0).repeat(24, 1)[:height, :width])
    out = processor(images=[image, image], text="x", return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 26, 34]] * 2
    assert _tokens_per_vision_block(out["input_ids"][0], processor.tokenizer) == [221, 221]
    assert out["geometry_pixel_values"].shape == (2, 3, 364, 476)

    # independent reference, the official demo's steps: JPEG q75 → width 518 bicubic (392 rows) → to_tensor
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    jpeg = PIL.Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    crop = jpeg.resize((518, 392), PIL.Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.asarray(crop).astype(np.float32) / 255.0).permute(2, 0, 1)
    # VGGT branch: bilinear to the grid size 364×476
    expected = F.interpolate(tensor[None], size=(364, 476), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["geometry_pixel_values"][0], expected, rtol=0, atol=1e-6)
    # Qwen branch: the FLOAT tensor (392×518: even patch counts, nothing cropped) goes to the Qwen3-VL processor
    # with do_rescale=False, which resizes it to 416×544 with torchvision's bicubic + antialias on the floats
    # (F.interpolate, not clamped, not rounded), normalises (x - 0.5) / 0.5 and cuts Qwen2-VL patches
    assert hf_smart_resize(392, 518, 32, 200_704, 1_605_632) == (416, 544)
    resized = F.interpolate(tensor[None], size=(416, 544), mode="bicubic", antialias=True, align_corners=False)[0]
    assert resized.min() < 0 or resized.max() > 1  # random pixels overshoot: a clamp would be caught here
    official = _official_patches((resized - 0.5) / 0.5)
    torch.testing.assert_close(out["pixel_values"][: 26 * 34], official, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["pixel_values"][26 * 34:], official, rtol=0, atol=1e-6)  # the second view


def test_official_inference_keeps_the_processor_normalisation(official_processors):
    """The official-inference views are normalised with the image processor's own mean and std (a model trained
    with other values, like GAP-MLLM-Mini's CLIP ones, keeps them)."""
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    clip = GapMllmProcessor.from_tokenizer(build_tiny_tokenizer(), preprocessing_mode="official_inference",
                                           image_mean=mean, image_std=std)
    image = _image(480, 640, seed=3)
    reference = official_processors["official_inference"](images=[image], text="x", return_tensors="pt")
    out = clip(images=[image], text="x", return_tensors="pt")
    assert out["pixel_values"].shape == reference["pixel_values"].shape == (26 * 34, 3 * 2 * 16 * 16)
    unnormalised = reference["pixel_values"] * 0.5 + 0.5  # back to the resized [0, 1] values
    channel = torch.arange(3).repeat_interleave(2 * 16 * 16)  # the channel of each column of a patch row
    expected = (unnormalised - torch.tensor(mean)[channel]) / torch.tensor(std)[channel]
    torch.testing.assert_close(out["pixel_values"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(480, 640), (968, 1296)])
def test_official_training_sizes_and_pixels(official_processors, height, width):
    processor = official_processors["official_training"]
    image = _image(height, width)
    out = processor(images=[image], text="x", return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 24, 32]]
    assert _tokens_per_vision_block(out["input_ids"][0], processor.tokenizer) == [192]
    assert out["geometry_pixel_values"].shape == (1, 3, 336, 448)

    crop = image.resize((518, 392), PIL.Image.Resampling.BICUBIC)  # no JPEG in training
    tensor = torch.from_numpy(np.asarray(crop).astype(np.float32) / 255.0).permute(2, 0, 1)
    expected = F.interpolate(tensor[None], size=(336, 448), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["geometry_pixel_values"][0], expected, rtol=0, atol=1e-6)  # UNCROPPED source
    # Qwen branch, the official training data path: the top-left 384×512 of the float tensor goes to the Qwen
    # processor with do_rescale=False; 384×512 is within the pixel limits, so it is not resized, only
    # normalised (x - 0.5) / 0.5 and cut into Qwen2-VL patches
    assert hf_smart_resize(384, 512, 32, 12_544, 451_584) == (384, 512)
    official = _official_patches((tensor[:, :384, :512] - 0.5) / 0.5)
    torch.testing.assert_close(out["pixel_values"], official, rtol=0, atol=1e-6)


def test_official_modes_fix_the_pixel_limits(official_processors):
    with pytest.raises(ValueError, match="cannot be overridden in preprocessing_mode='official_training'"):
        official_processors["official_training"](images=_image(48, 64), text="x", max_pixels=10_000)


# ----------------------------------------------------------------------------- visual prompts


def test_point_prompt_is_drawn_before_resizing(processor):
    views = [_image(75, 100, 1), _image(75, 100, 2)]
    before = [np.asarray(v).copy() for v in views]
    marked = np.asarray(views[1]).copy()
    marked[28:33, 30:51] = (255, 0, 0)  # horizontal bar around (x=40, y=30)
    marked[20:41, 38:43] = (255, 0, 0)  # vertical bar
    reference = processor(images=[views[0], PIL.Image.fromarray(marked)], text="x", return_tensors="pt")
    out = processor(images=views, text="x", point_prompts=(1, 40, 30), return_tensors="pt")
    plain = processor(images=views, text="x", return_tensors="pt")
    for key in ("input_ids", "pixel_values", "geometry_pixel_values"):
        assert torch.equal(out[key], reference[key])
    assert not torch.equal(out["geometry_pixel_values"][1], plain["geometry_pixel_values"][1])
    assert torch.equal(out["geometry_pixel_values"][0], plain["geometry_pixel_values"][0])
    assert all(np.array_equal(np.asarray(v), b) for v, b in zip(views, before))  # caller's images untouched


def test_point_prompts_per_sample(processor):
    samples = [[_image(48, 64, 1)], [_image(48, 64, 2), _image(48, 64, 3)]]
    out = processor(images=samples, text=["a", "b"], point_prompts=[None, (1, 5, 5)], return_tensors="pt")
    plain = processor(images=samples, text=["a", "b"], return_tensors="pt")
    changed = [not torch.equal(a, b) for a, b in zip(out["geometry_pixel_values"], plain["geometry_pixel_values"])]
    assert changed == [False, False, True]


# --------------------------------------------------------------------------------- input types


def test_all_input_types_give_identical_outputs(processor, tmp_path):
    rng = np.random.default_rng(5)
    array = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    path = tmp_path / "view.png"
    PIL.Image.fromarray(array).save(path)
    inputs = {
        "pil": PIL.Image.fromarray(array),
        "numpy_uint8": array,
        "numpy_float": array.astype(np.float32) / 255.0,
        "torch_float_chw": torch.from_numpy(array).permute(2, 0, 1).float() / 255.0,
        "torch_uint8_chw": torch.from_numpy(array).permute(2, 0, 1).contiguous(),
        "path_str": str(path),
        "path": path,
    }
    reference = processor(images=inputs["pil"], text="x", return_tensors="pt")
    for name, image in inputs.items():
        out = processor(images=[image], text="x", return_tensors="pt")
        for key in ("input_ids", "pixel_values", "image_grid_thw", "geometry_pixel_values"):
            assert torch.equal(out[key], reference[key]), (name, key)
    stacked = processor(images=np.stack([array, array]), text="x", return_tensors="pt")  # [N, H, W, 3] = N views
    assert stacked["geometry_views_per_sample"].tolist() == [2]


def test_loader_conversions():
    grey = load_image(np.full((4, 5), 9, dtype=np.uint8))
    assert grey.mode == "RGB" and np.asarray(grey)[0, 0].tolist() == [9, 9, 9]
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)  # fully transparent → white, like VGGT's loader
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]
    original = PIL.Image.new("RGB", (5, 4))
    assert load_image(original) is not original


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.full((8, 8, 3), 2.0, dtype=np.float32), ValueError, r"sample 0, view 0: float images must be in \[0, 1\]"),
        (np.zeros((8, 8, 3), dtype=np.uint16), TypeError, "unsupported image dtype uint16"),
        (np.zeros((8, 8, 2), dtype=np.uint8), ValueError, "1, 3 or 4 channels"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN"),
        (12345, TypeError, "sample 0, view 0: unsupported image type builtins.int"),
        ("/nonexistent/dir/frame_00350.jpg", FileNotFoundError, "frame_00350.jpg"),
    ],
)
def test_bad_images_raise_clear_errors(processor, image, error, message):
    with pytest.raises(error, match=message):
        processor(images=[image], text="x")


def test_unreadable_file_names_the_path(processor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image file .*broken.jpg"):
        processor(images=[str(broken)], text="x")


def test_unsupported_type_in_a_later_view_names_it(processor):
    with pytest.raises(TypeError, match="sample 1, view 1"):
        processor(images=[[_image(8, 8)], [_image(8, 8), {"not": "an image"}]], text=["a", "b"])


# ---------------------------------------------------------------------------------- prompts


def test_auto_built_chat_prompt(processor):
    out = processor(images=[_image(48, 64)] * 2, text="Describe.", return_tensors="pt")
    text = processor.tokenizer.decode(out["input_ids"][0])
    pads = "<|image_pad|>" * 4
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|>{pads}<|vision_end|><|vision_start|>{pads}<|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_markup_is_kept_when_placeholders_match(processor):
    views = [_image(48, 64)] * 2
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{PLACEHOLDER}{PLACEHOLDER}Describe.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert torch.equal(
        processor(images=views, text=text, return_tensors="pt")["input_ids"],
        processor(images=views, text="Describe.", return_tensors="pt")["input_ids"],
    )


def test_literal_image_strings_are_plain_text(processor):
    # official grounding prompts contain literal "<image>" strings (docs/deviations.md §4.1, Q9)
    out = processor(images=[_image(48, 64)], text="Frame-0: <image>Localize the object.", return_tensors="pt")
    assert _tokens_per_vision_block(out["input_ids"][0], processor.tokenizer) == [4]
    assert "Frame-0: <image>Localize" in processor.tokenizer.decode(out["input_ids"][0])


def test_wrong_placeholder_count_names_sample_and_counts(processor):
    text = f"<|im_start|>user\n{PLACEHOLDER}hi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match=r"sample 1: the chat-formatted text contains 1 image placeholder.*but 3 view"):
        processor(images=[[_image(8, 8)], [_image(8, 8)] * 3], text=[text, text])
    with pytest.raises(ValueError, match="must not contain image placeholders"):
        processor(images=[_image(8, 8)], text=f"{PLACEHOLDER} no chat markup")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"images": [[_image(8, 8)], [_image(8, 8)]], "text": "one"},
            ValueError,
            r"got 1 text\(s\) for 2 image sample",
        ),
        (
            {"images": [_image(8, 8), _image(8, 8)], "text": ["a", "b"]},
            ValueError,
            r"got 2 text\(s\) for 1 image sample",
        ),
        ({"images": [_image(8, 8), [_image(8, 8)]], "text": "a"}, ValueError, "mixes single images and lists"),
        ({"images": [], "text": "a"}, ValueError, "empty list"),
        ({"images": [[]], "text": "a"}, ValueError, "sample 0 has no views"),
        (
            {"images": [_image(8, 8)] * 2, "text": "a", "point_prompts": (2, 1, 1)},
            IndexError,
            "view index 2 is out of range",
        ),
        (
            {"images": [[_image(8, 8)]] * 2, "text": ["a", "b"], "point_prompts": (0, 1, 1)},
            ValueError,
            "single point prompt",
        ),
        (
            {"images": [[_image(8, 8)]] * 2, "text": ["a", "b"], "point_prompts": [None]},
            ValueError,
            "one entry per sample",
        ),
        ({"text": "a", "point_prompts": (0, 1, 1)}, ValueError, "without images"),
        ({}, ValueError, "needs `images`, `text` or both"),
    ],
)
def test_bad_calls_raise_clear_errors(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(**kwargs)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown preprocessing_mode 'official'"):
        build_tiny_processor(preprocessing_mode="official")


def test_text_only_and_image_only_calls(processor):
    text_only = processor(text=["hello", "a longer prompt"], return_tensors="pt")
    assert set(text_only) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    assert text_only["mm_token_type_ids"].sum() == 0
    image_only = processor(images=[_image(48, 64)], return_tensors="pt")
    assert set(image_only) == {"pixel_values", "image_grid_thw", "geometry_pixel_values", "geometry_views_per_sample"}
    assert "geometry_pixel_values" in processor.model_input_names


# --------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    processor = build_tiny_processor(
        min_pixels=32 * 32 * 2, max_pixels=32 * 32 * 40, preprocessing_mode="official_training"
    )
    processor.save_pretrained(tmp_path)
    loaded = GapMllmProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GapMllmProcessor and type(loaded.image_processor) is Qwen2VLImageProcessorPil
    assert loaded.preprocessing_mode == "official_training"
    assert (loaded.image_processor.size["shortest_edge"], loaded.image_processor.size["longest_edge"]) == (2048, 40960)
    assert loaded.image_processor.patch_size == 16 and loaded.image_processor.merge_size == 2
    assert loaded.chat_template == processor.chat_template
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    views = [_image(120, 160, 1), _image(120, 160, 2)]
    a = processor(images=views, text="x", point_prompts=(0, 3, 3), return_tensors="pt")
    b = loaded(images=views, text="x", point_prompts=(0, 3, 3), return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    grid = build_tiny_processor(min_pixels=2048, max_pixels=40960)
    grid.save_pretrained(tmp_path / "grid")
    assert GapMllmProcessor.from_pretrained(tmp_path / "grid").pixel_limits == (2048, 40960)


def test_loading_always_returns_the_pil_image_processor(tmp_path, monkeypatch):
    build_tiny_processor(min_pixels=2048, max_pixels=40960).save_pretrained(tmp_path)
    stock = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, size={"shortest_edge": 2048, "longest_edge": 40960})
    # stand-in for the torchvision backend that AutoImageProcessor picks when torchvision is installed
    fake = types.SimpleNamespace(to_dict=lambda: {**stock.to_dict(), "image_processor_type": "Qwen2VLImageProcessor"})
    from transformers import AutoImageProcessor

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    loaded = GapMllmProcessor.from_pretrained(tmp_path)
    assert type(loaded.image_processor) is Qwen2VLImageProcessorPil
    assert loaded.pixel_limits == (2048, 40960) and loaded.image_processor.patch_size == 16


@pytest.mark.parametrize("key, value", [("patch_size", 0), ("merge_size", 0), ("temporal_patch_size", -2),
                                        ("patch_size", 16.0), ("size.longest_edge", 0)])
def test_image_processor_sizes_that_are_not_positive_integers_are_refused_naming_the_file_and_key(tmp_path, key,
                                                                                                value):
    build_tiny_processor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    if key.startswith("size."):
        config["image_processor"]["size"][key.removeprefix("size.")] = value
    else:
        config["image_processor"][key] = value
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as refused:
        GapMllmProcessor.from_pretrained(tmp_path)  # patch_size 0 used to be a ZeroDivisionError at the first image
    assert str(refused.value) == (f"{tmp_path}: processor_config.json's image_processor.{key} must be a positive "
                                  f"integer, got {value!r}")


@pytest.mark.parametrize("file, damage, problem", [
    ("tokenizer.json", lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "added_tokens"}),
     "no 'added_tokens' list"),
    ("tokenizer.json", lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}),
     "Model missing"),
    ("tokenizer.json", lambda text: text[: len(text) // 2], "Expecting"),
    ("tokenizer_config.json", lambda text: "[]", "a JSON list, not an object"),
])
def test_an_unreadable_tokenizer_file_is_named(tmp_path, file, damage, problem):
    build_tiny_processor().save_pretrained(tmp_path)
    path = tmp_path / file
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError) as refused:  # KeyError: 'added_tokens', a JSON error naming no file, ...
        GapMllmProcessor.from_pretrained(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{path} cannot be read as a tokenizer file (") and problem in message
    assert message.endswith("); copy it again, or save the processor again")


# ---------------------------------------------------------------------------------- decoding

ANSWER_BOXES = [
    Box3D("chair", (0.1, 0.2, 1.5), (0.5, 0.5, 0.9), (0.0, 1.57, 0.0)),
    Box3D("table", (-0.4, 0.3, 2.0), (1.2, 0.8, 0.7), (0.1, 0.0, -0.2)),
]


def _fake_generate(processor, prompt_ids, answers):
    """What `generate` returns: the (left-padded) prompt, then the answer ids + eos, right-padded."""
    tokenizer = processor.tokenizer
    answer_ids = [tokenizer(a)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    width = max(len(a) for a in answer_ids)
    tails = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answer_ids])
    return torch.cat([prompt_ids, tails], dim=1)


def test_post_process_strips_the_prompt_and_parses(processor):
    inputs = processor(
        images=[[_image(48, 64)], [_image(48, 64)] * 2], text=["Detect.", "Detect the boxes."], return_tensors="pt"
    )
    answers = [serialize_detection(ANSWER_BOXES), serialize_detection(ANSWER_BOXES[:1])]
    generated = _fake_generate(processor, inputs["input_ids"], answers)
    results = processor.post_process_detection(generated, input_ids=inputs["input_ids"])
    assert [r.boxes for r in results] == [ANSWER_BOXES, ANSWER_BOXES[:1]]
    assert all(r.reason is None for r in results)
    assert processor.decode_generated(types.SimpleNamespace(sequences=generated), inputs["input_ids"]) == answers
    # without stripping, the prompt text is decoded too and the answer is read line by line
    assert processor.post_process_detection(generated[0].tolist())[0].boxes == ANSWER_BOXES


def test_post_process_other_tasks(processor):
    assert processor.post_process_grounding('{"bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 9]}')[0].box.to_list() == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
        6.0,
        7.0,
        8.0,
        9.0,
    ]
    frames = processor.post_process_frame_selection(
        [serialize_frame_selection(40), serialize_frame_selection(3)], num_frames=[32, 4]
    )
    assert [f.frame for f in frames] == [31, 3] and "clamped" in frames[0].reason and frames[1].reason is None
    ids = processor.tokenizer(serialize_pointmap((0.5, 1.0, 2.25), "bed"), return_tensors="pt")["input_ids"][0]
    point = processor.post_process_pointmap(ids)[0]
    assert point.point == (0.5, 1.0, 2.25) and point.label == "bed"
    assert processor.post_process_detection("garbage")[0].reason is not None
    with pytest.raises(ValueError, match="input_ids has 3 rows"):
        processor.decode_generated(torch.zeros(2, 5, dtype=torch.long), input_ids=torch.zeros(3, 2, dtype=torch.long))


# --------------------------------------------------------------------------------- tiny tokenizer


def test_tiny_tokenizer_is_deterministic_and_small(tmp_path):
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer(tmp_path)
    assert first.get_vocab() == second.get_vocab()
    assert 600 <= len(first) <= 1000
    sample = serialize_detection(ANSWER_BOXES)
    assert first(sample)["input_ids"] == second(sample)["input_ids"]
    assert first.decode(first(sample)["input_ids"]) == sample
    # Trained on the task texts: words and JSON keys are single tokens; only digits stay one per token
    # (the Qwen split regex isolates every digit, as in the real tokenizer).
    assert len(first(sample)["input_ids"]) < 0.75 * len(sample)
    tokens = first.convert_ids_to_tokens(first(sample)["input_ids"])
    assert {"label", "chair", "table", "```", "json"} <= set(tokens)
    prompt = "Detect the 3D bounding boxes in the camera coordinate system of the first frame."
    assert len(first(prompt)["input_ids"]) <= 20
    for token in SPECIAL_TOKENS:
        assert len(first(token)["input_ids"]) == 1
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.image_token == "<|image_pad|>" and reloaded.image_token_id == first.convert_tokens_to_ids(
        "<|image_pad|>"
    )
    assert reloaded.vision_start_token_id == first.convert_tokens_to_ids("<|vision_start|>")
    assert reloaded.chat_template == CHAT_TEMPLATE and reloaded.padding_side == "left"
    assert (reloaded.eos_token, reloaded.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_tiny_chat_template_default_system_and_generation_prompt():
    tokenizer = build_tiny_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{PLACEHOLDER}Hi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


# ------------------------------------------------------------------------------- remote code

REMOTE_CODE_SCRIPT = """
import sys
sys.modules["gap_mllm"] = None  # only the saved folder's code may be used
from transformers import AutoProcessor
import PIL.Image
p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
out = p(images=[PIL.Image.new("RGB", (640, 480))] * 2, text="hi", point_prompts=(0, 5, 5), return_tensors="pt")
print(type(p).__module__.split(".")[0], type(p).__name__, type(p.image_processor).__name__, p.preprocessing_mode,
      out["image_grid_thw"].tolist(), tuple(out["geometry_pixel_values"].shape),
      p.post_process_frame_selection('{"frame": 9}', num_frames=4)[0].frame)
"""


def test_flat_hub_folder_loads_with_trust_remote_code(tmp_path, monkeypatch):
    """The processor files use only relative imports and allowed dependencies (docs/transformers-notes.md §4)."""
    import os
    import subprocess
    import sys

    monkeypatch.setattr(GapMllmProcessor, "_auto_class", "AutoProcessor")  # what register_for_auto_class sets
    build_tiny_processor(preprocessing_mode="official_inference").save_pretrained(tmp_path / "saved")
    copied = {p.name for p in (tmp_path / "saved").glob("*.py")}
    # the processor reaches the configuration (input names), the task registry and the file reading; never the model
    assert copied == {"processing_gap_mllm.py", "configuration_gap_mllm.py", "tasks_gap_mllm.py", "image_utils_gap_mllm.py",
                      "files.py"}
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path / "saved")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == (
        "transformers_modules GapMllmProcessor Qwen2VLImageProcessorPil official_inference "
        "[[1, 26, 34], [1, 26, 34]] (2, 3, 364, 476) 3"
    )
