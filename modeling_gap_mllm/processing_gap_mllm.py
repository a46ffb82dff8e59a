"""Processor for GAP-MLLM: Qwen3-VL text and image processing plus the aligned VGGT geometry input.

Sections: the size rules and resizes of both branches (`smart_resize`, `geometry_size_for_qwen_size`,
`vggt_crop_preprocess`, the official crops); view loading (`load_image`: files read upright, arrays and tensors as
RGB); the argument checks, which every copy of this file runs (the installed package's and a model folder's alike);
and `GapMllmProcessor`, which turns multi-view samples (the marker visual prompt painted in) and a task of `TASKS` or
a free prompt into model inputs, and parses answers.
"""

from __future__ import annotations

import io
import json
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as qwen_smart_resize
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.utils import logging

from .configuration_gap_mllm import PROCESSOR_GEOMETRY_INPUT_NAMES
from .image_utils_gap_mllm import (_composite_rgba_on_white, alignment_note, apply_point_prompt, pad_to_vggt_square,
                                   pil_to_rgb, read_image_file, vggt_pad_boxes, view_file_errors)
from .tasks_gap_mllm import (CHAT_MARKER, DetectionResult, FrameSelectionResult, GroundingResult, PointmapResult, TaskSpec,
                             budget_cut_reason, check_chat_text, drop_negative_token_ids, refuse_control_tokens,
                             refuse_invalid_unicode, render_chat_prompt, resolve_task)

# ------------------------------------------------------------------------------------ sizes and resizes

QWEN_PATCH_SIZE = 16
QWEN_MERGE_SIZE = 2
QWEN_FACTOR = QWEN_PATCH_SIZE * QWEN_MERGE_SIZE  # 32 px per merged LLM token side
VGGT_PATCH_SIZE = 14
VGGT_TARGET_WIDTH = 518  # VGGT's training width (37 patches of 14 px)
JPEG_QUALITY = 75  # PIL's default JPEG quality, used by the official inference base64 round trip


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Qwen's resize rule (transformers' `smart_resize`, as the image processor calls it): the (h̄, w̄) closest to
    (height, width), multiples of `factor`, with `min_pixels <= h̄·w̄ <= max_pixels`, aspect ratio kept."""
    h_bar, w_bar = qwen_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h_bar), int(w_bar)


def geometry_size_for_qwen_size(qwen_height: int, qwen_width: int, qwen_patch_size: int = QWEN_PATCH_SIZE,
                                geometry_patch_size: int = VGGT_PATCH_SIZE) -> tuple[int, int]:
    """VGGT input size `(14·h̄/16, 14·w̄/16)` whose 14-px patch grid equals Qwen's 16-px grid (416×544 → 364×476).
    ValueError when the Qwen size is not a multiple of `qwen_patch_size`."""
    if qwen_height % qwen_patch_size or qwen_width % qwen_patch_size:
        raise ValueError(
            f"Qwen input size {qwen_height}x{qwen_width} is not a multiple of the {qwen_patch_size}-px patch size"
        )
    return (qwen_height // qwen_patch_size) * geometry_patch_size, (qwen_width // qwen_patch_size) * geometry_patch_size


def vggt_crop_size(height: int, width: int, target_width: int = VGGT_TARGET_WIDTH) -> tuple[int, int, int]:
    """`(resized_height, crop_top, output_height)` of VGGT's official "crop" preprocessing of a `height × width` input:
    resize to `round(H·518/W / 14)·14 × 518`, then keep rows `[crop_top, crop_top + output_height)` (a centre crop to
    518 when taller). 480×640 and 968×1296 both give `(392, 0, 392)`; ValueError for an image too flat."""
    resized_height = round(height * (target_width / width) / VGGT_PATCH_SIZE) * VGGT_PATCH_SIZE
    if resized_height < VGGT_PATCH_SIZE:
        raise ValueError(f"image of {height}x{width} is too flat for VGGT's crop preprocessing")
    if resized_height > target_width:
        crop_top = (resized_height - target_width) // 2
        return resized_height, crop_top, target_width
    return resized_height, 0, resized_height


def vggt_crop_preprocess(image: PIL.Image.Image, target_width: int = VGGT_TARGET_WIDTH) -> PIL.Image.Image:
    """VGGT's official `load_and_preprocess_images(mode="crop")` on one RGB image (`vggt_crop_size`), as a PIL image."""
    height, width = image.height, image.width
    resized_height, crop_top, out_height = vggt_crop_size(height, width, target_width)
    resized = image.resize((target_width, resized_height), PIL.Image.Resampling.BICUBIC)
    if crop_top or out_height != resized_height:
        resized = resized.crop((0, crop_top, target_width, crop_top + out_height))
    return resized


def crop_top_left_to_multiple(image: PIL.Image.Image, multiple: int = QWEN_FACTOR) -> PIL.Image.Image:
    """Official training crop: keep the top-left `⌊H/m⌋·m × ⌊W/m⌋·m` pixels (392×518 → 384×512 for m = 32)."""
    height, width = (image.height // multiple) * multiple, (image.width // multiple) * multiple
    if height == 0 or width == 0:
        raise ValueError(f"image of {image.height}x{image.width} is smaller than {multiple} px")
    return image.crop((0, 0, width, height))


def crop_to_even_patch_count(
    image: PIL.Image.Image, patch_size: int = QWEN_PATCH_SIZE, merge_size: int = QWEN_MERGE_SIZE
) -> PIL.Image.Image:
    """Official inference crop: drop a trailing 16-px patch (top-left kept) where the count is odd (530 → 514)."""
    width, height = image.width, image.height
    if (width // patch_size) % merge_size:
        width -= ((width // patch_size) % merge_size) * patch_size
    if (height // patch_size) % merge_size:
        height -= ((height // patch_size) % merge_size) * patch_size
    if (width, height) == (image.width, image.height):
        return image
    return image.crop((0, 0, width, height))


def jpeg_reencode(image: PIL.Image.Image, quality: int = JPEG_QUALITY) -> PIL.Image.Image:
    """JPEG round trip at `quality` (official inference re-encodes every frame through base64 JPEG)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with PIL.Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def resize_bicubic(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """PIL bicubic resize to `height × width` (a copy; no-op sizes still return a new image)."""
    if (image.height, image.width) == (height, width):
        return image.copy()
    return image.resize((width, height), PIL.Image.Resampling.BICUBIC)


def resize_bicubic_antialias(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of float32 `[3, H, W]` or `[N, 3, H, W]` to `height × width`, as torchvision's
    `resize(..., BICUBIC, antialias=True)` of a float tensor: neither clamped nor rounded (values may overshoot [0, 1]
    a little); the input itself when the size is unchanged."""
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    squeeze = tensor.dim() == 3
    batch = tensor.unsqueeze(0) if squeeze else tensor
    out = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out[0] if squeeze else out


def pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """RGB PIL image → float32 tensor `[3, H, W]` in [0, 1] (torchvision's `to_tensor`, without torchvision)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def resize_bilinear(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of `[3, H, W]` or `[N, 3, H, W]` to `height × width` (`align_corners=False`, no antialias)."""
    squeeze = tensor.dim() == 3
    batch = tensor.unsqueeze(0) if squeeze else tensor
    out = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------- loading

def array_to_pil(array: np.ndarray, layout: str, name: str) -> PIL.Image.Image:
    """An HWC or CHW (`layout`) array or 2-D grey, uint8 or float in [0, 1], 1, 3 or 4 channels, as an RGB image;
    ValueError naming view `name` for another shape, an empty image or a float value outside [0, 1] (NaN too)."""
    if array.ndim not in (2, 3):
        raise ValueError(f"{name}: expected an image array with 2 or 3 dimensions, got shape {tuple(array.shape)}")
    if array.ndim == 2:
        array, layout = array[:, :, None], "hwc"
    if layout == "chw":
        array = np.transpose(array, (1, 2, 0))
    if array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got shape {array.shape} ({layout.upper()})")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: float image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(f"{name}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                             "(pass uint8 for 0-255 data)")
        # Rounding makes k/255 floats (e.g. a to_tensor output) map back to exactly k.
        data = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"{name}: unsupported image dtype {array.dtype} (use uint8 or float in [0, 1])")
    data = np.ascontiguousarray(data)
    if array.shape[2] == 1:
        return PIL.Image.fromarray(data[:, :, 0], mode="L").convert("RGB")
    if array.shape[2] == 4:
        return _composite_rgba_on_white(PIL.Image.fromarray(data, mode="RGBA"))
    return PIL.Image.fromarray(data, mode="RGB")


def _guess_layout(shape: tuple[int, ...], prefer: str) -> str:
    """HWC vs CHW for a 3-D array: the channel axis is the one of size 1, 3 or 4; ties go to `prefer`."""
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first and not last:
        return "chw"
    if last and not first:
        return "hwc"
    return prefer


def load_image(image, name: str = "image") -> PIL.Image.Image:
    """Convert one view to a new 8-bit RGB `PIL.Image`.

    Args:
        image: a `PIL.Image.Image` of any mode (`pil_to_rgb`; taken as given, its current frame); a `str` /
            `os.PathLike` image file (regular, not animated), read upright (EXIF orientation applied); a
            `numpy.ndarray` HWC (or unambiguous CHW) or 2-D grey; a `torch.Tensor` CHW (or unambiguous HWC). Arrays
            and tensors are uint8 or float in [0, 1] with 1, 3 or 4 channels.
        name: how the input is named in error messages (e.g. "sample 1, view 3").

    Raises:
        ValueError: a bad shape or range (and, naming the file, an unreadable, missing or animated one).
        TypeError: an unsupported type or dtype.
    """
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image, name)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        with view_file_errors(path, name):
            return pil_to_rgb(read_image_file(path), f"{name} ({str(path)!r})")  # upright: EXIF orientation applied
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dtype in (torch.bfloat16, torch.float16):
            array = array.float()
        array = array.numpy()
        layout = _guess_layout(array.shape, prefer="chw") if array.ndim == 3 else "hwc"
        return array_to_pil(array, layout, name)
    if isinstance(image, np.ndarray):
        layout = _guess_layout(image.shape, prefer="hwc") if image.ndim == 3 else "hwc"
        return array_to_pil(image, layout, name)
    raise TypeError(
        f"{name}: unsupported image type {type(image).__module__}.{type(image).__qualname__}; expected a PIL image, "
        "a file path, a numpy array (HWC) or a torch tensor (CHW)"
    )


# ------------------------------------------------------------------------------------------- processor

logger = logging.get_logger(__name__)

PREPROCESSING_MODES = ("grid", "official_inference", "official_training")
# (min_pixels, max_pixels) fixed by the official scripts
OFFICIAL_PIXEL_LIMITS = {"official_inference": (200_704, 1_605_632), "official_training": (12_544, 451_584)}
# Default limits of a processor built with `from_tokenizer`: the official training limits.
DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS = OFFICIAL_PIXEL_LIMITS["official_training"]
# Qwen3-VL normalises (x - 0.5) / 0.5; the Qwen2-VL image processor class defaults to the CLIP mean/std instead.
QWEN3_VL_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_VL_IMAGE_STD = (0.5, 0.5, 0.5)
# Image-processor settings copied when a non-Pil image processor has to be rebuilt as the Pil one.
_PIL_IMAGE_PROCESSOR_KEYS = (
    "do_resize", "resample", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
    "image_std", "do_convert_rgb", "patch_size", "temporal_patch_size", "merge_size",
)  # fmt: skip


def split_prompt_at_last_view(prompt: str, vision_end_token: str) -> tuple[str, str]:
    """`(scene prefix, question suffix)` of a chat prompt: cut right after its last `vision_end_token`."""
    cut = prompt.rfind(vision_end_token)
    if cut < 0:
        raise ValueError(f"the prompt has no {vision_end_token!r}: no view, so no scene prefix to share.")
    cut += len(vision_end_token)
    if not prompt[cut:]:
        raise ValueError("the prompt ends with its last view: there is no question after the scene prefix.")
    return prompt[:cut], prompt[cut:]


def _is_point_prompt(value) -> bool:
    """True for one `(view_idx, x, y)` triple, not a per-sample list."""
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, numbers.Real) for v in value)
    )


def one_per_sample(value, num_samples: int, what: str, is_single) -> list:
    """One `value` per sample: None for each when absent; a single value (`is_single`) only for one sample."""
    if value is None:
        return [None] * num_samples
    if is_single(value):
        if num_samples != 1:
            raise ValueError(f"one {what} was given for {num_samples} samples; pass a list with one {what} per sample")
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) != num_samples:
        raise ValueError(f"{what} must be one {what} or a list with one per sample ({num_samples}), got {value!r:.80}")
    return list(value)


def is_box(value) -> bool:
    """True for one box (a flat sequence of numbers), not a per-sample list of boxes."""
    return (
        isinstance(value, (Sequence, np.ndarray, torch.Tensor))
        and not isinstance(value, str)
        and all(isinstance(v, numbers.Real) or (hasattr(v, "ndim") and v.ndim == 0) for v in value)
    )


def _is_view_stack(value) -> bool:
    """True for a 4-D array / tensor: the N views of one sample."""
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4


# ------------------------------------------------------------------------------------- argument checks

# The image processor's settings that are counts of pixels or patches: a 0 divides by zero at the first image
POSITIVE_IMAGE_PROCESSOR_SIZES = ("patch_size", "temporal_patch_size", "merge_size", "size.shortest_edge",
                                  "size.longest_edge")
# The JSON files a tokenizer is read from (each a JSON object)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "chat_template.json")


def check_image_processor_sizes(image_processor, source) -> None:
    """ValueError naming the file and key of an image-processor size of `source` (a folder or Hub id) that is not a
    positive integer (`patch_size`, `merge_size`, `size.shortest_edge`, ...)."""
    folder = Path(str(source))
    nested = (folder / "processor_config.json").is_file() and "image_processor" in json.loads(
        (folder / "processor_config.json").read_text(encoding="utf-8"))
    nested = nested or not folder.is_dir()  # a Hub id: the file transformers writes now
    where = "processor_config.json's image_processor." if nested else "preprocessor_config.json's "
    for key in POSITIVE_IMAGE_PROCESSOR_SIZES:
        value = image_processor
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: {where}{key} must be a positive integer, got {value!r}")


def name_unreadable_tokenizer_file(source, error: Exception) -> None:
    """ValueError (from `error`, the processor's failed load of `source`, whose own error names no file) naming the
    first tokenizer file of folder `source` that cannot be read; returns when every file reads, or with no folder."""
    from tokenizers import Tokenizer

    for name in TOKENIZER_FILES:
        path = Path(str(source)) / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            content = json.loads(text)
            if not isinstance(content, dict):
                raise ValueError(f"a JSON {type(content).__name__}, not an object")
            if name == "tokenizer.json":
                if not isinstance(content.get("added_tokens"), list):
                    raise ValueError("no 'added_tokens' list")
                Tokenizer.from_str(text)  # the tokenizers library's own reading of the rest
        except Exception as problem:  # noqa: BLE001 - whatever the reason, this file cannot be read
            raise ValueError(f"{path} cannot be read as a tokenizer file ({problem}); copy it again, or save the "
                             "processor again") from error


def modality_kwargs(processor) -> dict[str, set[str]]:
    """`{"text_kwargs": {...}, "images_kwargs": {...}, ...}`: the keywords each modality of `processor` takes."""
    schema = processor.valid_processor_kwargs.__annotations__
    known = {}
    for modality, attribute in (("text_kwargs", "tokenizer"), ("images_kwargs", "image_processor"),
                                ("videos_kwargs", "video_processor"), ("audio_kwargs", "feature_extractor")):
        names = set(getattr(schema.get(modality), "__annotations__", {}))
        sub_processor = getattr(processor, attribute, None)
        known[modality] = names | set(getattr(getattr(sub_processor, "valid_kwargs", None), "__annotations__", {}))
    return known


def check_call_kwargs(processor, kwargs: dict) -> None:
    """TypeError naming each keyword of a `GapMllmProcessor` call (top level or per modality) that Qwen3VLProcessor
    would silently drop."""
    per_modality = modality_kwargs(processor)
    every_modality = set().union(*per_modality.values())
    known = set(processor.valid_processor_kwargs.__annotations__) | {"common_kwargs"} | every_modality
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"GapMllmProcessor got unknown keyword argument(s) {', '.join(map(repr, unknown))}; it takes "
                        "images, text, task, query, box, point_prompts, return_tensors and the Qwen3-VL processor "
                        "options (padding, padding_side, truncation, max_length, ...)")
    for group in (*per_modality, "common_kwargs"):
        if group not in kwargs:
            continue
        if not isinstance(kwargs[group], dict):
            raise TypeError(f"GapMllmProcessor: {group} must be a dict of keyword arguments, got "
                            f"{type(kwargs[group]).__name__} {kwargs[group]!r:.60}")
        unknown = sorted(set(kwargs[group]) - per_modality.get(group, every_modality))
        if unknown:
            raise TypeError(f"GapMllmProcessor got unknown keyword argument(s) {', '.join(map(repr, unknown))} in "
                            f"{group}; the {group} it knows: {', '.join(sorted(per_modality.get(group, every_modality)))}")


def message_segments(message) -> list[str | None]:
    """A chat message's content as chat segments: text items, and `None` for any other block."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    blocks = content if isinstance(content, (list, tuple)) else []
    return [str(block.get("text", "")) if isinstance(block, dict) and block.get("type") == "text" else None
            for block in blocks]


def check_conversation(processor, conversation) -> None:
    """ValueError naming the conversation, the message and the tokens when a message's text or role (of one
    conversation or a batch of them, as `apply_chat_template` takes) holds a control token of the tokenizer."""
    batched = isinstance(conversation, (list, tuple)) and bool(conversation) and isinstance(conversation[0], (list, tuple))
    for c, messages in enumerate(conversation if batched else [conversation]):
        for m, message in enumerate(messages):
            role = message.get("role", "no role") if isinstance(message, dict) else "no role"
            of_conversation = f" of conversation {c}" if batched else ""
            if isinstance(role, str):
                refuse_control_tokens(processor.tokenizer, role, f"the role of message {m}{of_conversation}")
            where = f"message {m} ({role}){of_conversation}"
            check_chat_text(processor.tokenizer, message_segments(message), turn=where)


def check_text_placeholders(processor, text: str, num_views: int, sample_idx: int) -> None:
    """ValueError naming sample `sample_idx` when its free `text` with chat markup holds other than exactly one image
    placeholder per view (and no other vision token), or, without chat markup, holds an image placeholder."""
    placeholders = text.count(processor.image_placeholder)
    image_token, start, end = processor.image_token, processor.vision_start_token, processor.vision_end_token
    if CHAT_MARKER in text:
        counts = {token: text.count(token) for token in (image_token, start, end)}
        if placeholders != num_views or set(counts.values()) != {placeholders}:
            found = ", ".join(f"{count} {token!r}" for token, count in counts.items())
            raise ValueError(f"sample {sample_idx}: the chat-formatted text contains {placeholders} image placeholder(s) "
                             f"({processor.image_placeholder!r}; {found} in total) but {num_views} view(s) were given; "
                             "it needs exactly one placeholder per view and no other vision token")
    elif image_token in text or start in text:
        raise ValueError(f"sample {sample_idx}: text without chat markup must not contain image placeholders; the "
                         f"processor adds one per view (found {text.count(image_token)} {image_token!r})")


def check_patch_grids(image_grid_thw, grids) -> None:
    """RuntimeError when the image processor's `image_grid_thw` `[V, 3]` differs from the geometry branch's patch
    grids `grids` (`(h_p, w_p)` per view): a per-call `do_resize` / `patch_size` would misalign the two branches."""
    grid_thw = np.asarray(image_grid_thw).reshape(-1, 3)
    expected = np.array([[1, h, w] for h, w in grids], dtype=np.int64)
    if grid_thw.shape != expected.shape or not np.array_equal(grid_thw, expected):
        raise RuntimeError(f"the image processor produced patch grids that differ from the geometry grids "
                           f"({grid_thw.tolist()} vs {expected.tolist()}); do not override do_resize/patch_size per call")


def check_no_video_or_audio(videos, audio) -> None:
    """ValueError for `videos=` or `audio=`: GAP-MLLM reads a video's frames as the views of one sample."""
    for name, value in (("videos", videos), ("audio", audio)):
        if value is not None:
            raise ValueError(f"GapMllmProcessor takes no {name}= (GAP-MLLM reads multi-view images): pass a video's "
                             "frames as the views of one sample, images=[[frame_0, frame_1, ...]]")


def check_call_arguments(spec, images, text, query, box, point_prompts) -> None:
    """ValueError for a processor call whose arguments do not go together: `text=` and a task (`spec`, a `TaskSpec`
    or None) both, a task without images, `query=` / `box=` without a task, `point_prompts` without images."""
    if spec is not None:
        if text is not None:
            raise ValueError(f"pass either text= (a free prompt) or task= ({spec.name!r} writes its own prompt), not both")
        if images is None:
            raise ValueError(f"task {spec.name!r} needs images: the views of each sample")
    elif query is not None or box is not None:
        raise ValueError("query= and box= are task inputs; pass task= as well (or write the prompt yourself with text=)")
    if images is None and point_prompts is not None:
        raise ValueError("point_prompts were given without images")


def check_task_marker(spec, point_prompt, sample_idx: int) -> None:
    """ValueError naming sample `sample_idx` when task `spec` (a `TaskSpec`) asks about a marked pixel and it has no
    `point_prompt`, or asks about none and it has one (the marker would be painted into views its prompt never
    mentions)."""
    if spec.needs_marker and point_prompt is None:
        raise ValueError(f"sample {sample_idx}: task {spec.name!r} asks about a marked pixel; pass "
                         "point_prompts=(view, x, y) (one per sample for a batch)")
    if not spec.needs_marker and point_prompt is not None:
        raise ValueError(f"sample {sample_idx}: task {spec.name!r} does not use a marker, but point_prompts gives "
                         f"{tuple(point_prompt)}; drop point_prompts (only 'reconstruction' asks about a marked "
                         "pixel), or write the prompt yourself with text=")


def split_samples(images) -> list[list]:
    """`images` (one view, a list of views, a list of such lists, or a view stack) as a list (samples) of lists
    (views); ValueError for a list that is empty or mixes single images and lists of views (or view stacks)."""
    if _is_view_stack(images):
        return [list(images)]
    if not isinstance(images, (list, tuple)):
        return [[images]]
    if len(images) == 0:
        raise ValueError("`images` is an empty list; pass images=None for text-only input")
    nested = [isinstance(x, (list, tuple)) or _is_view_stack(x) for x in images]
    if any(nested) and not all(nested):
        raise ValueError("`images` mixes single images and lists of views; pass a list of views for one sample or a "
                         "list of lists (one list of views per sample) for a batch")
    return [list(sample) for sample in images] if all(nested) else [list(images)]


def split_texts(text, num_samples: int | None) -> list[str] | None:
    """`text` (None, a string or a list of strings) as a list, or None; TypeError for anything else, ValueError when
    the count is not `num_samples` (None: any count, for text without images)."""
    if text is None:
        return None
    if not isinstance(text, (str, list, tuple)):
        raise TypeError(f"`text` must be a string or a list of strings (one per sample), got {type(text).__name__} {text!r:.60}")
    texts = [text] if isinstance(text, str) else list(text)
    bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"`text` must be a string or a list of strings; entry {bad[0][0]} is a "
                        f"{type(bad[0][1]).__name__} ({bad[0][1]!r:.60})")
    if num_samples is not None and len(texts) != num_samples:
        raise ValueError(f"got {len(texts)} text(s) for {num_samples} image sample(s); images for one sample are a "
                         "list of views and a batch is a list of such lists, with one text per sample")
    return texts


def split_point_prompts(point_prompts, num_samples: int) -> list:
    """One point prompt (None or `(view_idx, x, y)`) per sample; ValueError unless `point_prompts` is None, one
    `(view_idx, x, y)` (for one sample) or a list with one entry per sample."""
    if point_prompts is None:
        return [None] * num_samples
    if _is_point_prompt(point_prompts):
        if num_samples != 1:
            raise ValueError(f"a single point prompt {tuple(point_prompts)} was given for a batch of {num_samples} "
                             "samples; pass one entry (None or (view_idx, x, y)) per sample")
        return [point_prompts]
    if not isinstance(point_prompts, (list, tuple)) or len(point_prompts) != num_samples:
        raise ValueError(f"`point_prompts` must be None, one (view_idx, x, y) or a list with one entry per sample "
                         f"({num_samples}), got {point_prompts!r}")
    return list(point_prompts)


def token_id_rows(ids, name: str = "generated") -> list[list[int]]:
    """Token ids (an integer tensor or array `[B, L]` / `[L]`, a list of integers, 0-d integer tensors and arrays
    included, or of such rows) as rows of Python ints; TypeError naming `name` for anything else."""

    def plain(value):  # tensors and arrays, 0-d ones included, as Python lists and numbers
        if isinstance(value, (torch.Tensor, np.ndarray)):
            kind = value.dtype.kind if isinstance(value, np.ndarray) else (
                "b" if value.dtype == torch.bool else "f" if value.is_floating_point() or value.is_complex() else "i")
            if kind not in "iu":
                raise TypeError(f"{name}: token ids must be integers, got a {value.dtype} array/tensor")
            return value.tolist()
        return value

    ids = plain(ids)
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{name}: expected text or token ids, got {type(ids).__name__}")
    flat = len(ids) == 0 or not isinstance(plain(ids[0]), (list, tuple))
    rows = []
    for r, row in enumerate([list(ids)] if flat else [plain(row) for row in ids]):
        if not isinstance(row, (list, tuple)):
            raise TypeError(f"{name}: row {r} is a {type(row).__name__}, not a sequence of token ids")
        values = [plain(v) for v in row]
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise TypeError(f"{name}: token ids must be integers; row {r} holds {bad[0]!r} ({type(bad[0]).__name__})")
        rows.append([int(v) for v in values])
    return rows


def check_token_ids_in_vocabulary(rows: list[list[int]], vocabulary: int) -> None:
    """ValueError naming the first row holding a token id ≥ `vocabulary` (the tokenizer's size)."""
    for r, row in enumerate(rows):
        beyond = [i for i in row if i >= vocabulary]
        if beyond:
            raise ValueError(f"row {r} holds token id {beyond[0]}, outside the tokenizer's {vocabulary} ids; "
                             "were these ids produced with another tokenizer?")


class GapMllmProcessor(Qwen3VLProcessor):
    r"""Qwen3-VL processor (images only: no video processor, no torchvision) that also builds GAP-MLLM's VGGT geometry
    input, paints the marker visual prompt and parses task answers.

        inputs = processor(images=[view_0, view_1], task="grounding", query="the chair", return_tensors="pt")
        out = model.generate(**inputs, **processor.generation_kwargs("grounding", inputs, constrained=True))
        result = processor.post_process(out, task="grounding", input_ids=inputs["input_ids"])[0]

    Every view gets h_p·w_p/4 `<|image_pad|>` tokens and a VGGT input whose 14-px patch grid is (h_p, w_p), so the 2×2
    geometry merger gives one geometry token per merged Qwen token. Preprocessing modes (the VGGT size always follows
    the Qwen grid):

    - "grid": Qwen gets the view `smart_resize`d to (h̄, w̄); VGGT a bicubic resize of it to 14·h̄/16 × 14·w̄/16.
    - "official_inference": JPEG q75 round trip, `vggt_crop_preprocess` (ScanNet frames → 392×518); Qwen gets that
      image (odd 16-px patch counts cropped) with pixel limits 200,704 / 1,605,632 (→ 416×544, 221 tokens), resized as a
      float [0, 1] tensor (`resize_bicubic_antialias`); VGGT a bilinear resize of the 392×518 image (→ 364×476).
    - "official_training": `vggt_crop_preprocess`; Qwen gets its top-left crop to multiples of 32 (→ 384×512) with
      limits 12,544 / 451,584 (192 tokens); VGGT a bilinear resize of the whole 392×518 image (→ 336×448).

    The views of one sample share one size: of one aspect ratio, they are resized to the first one's; of different
    shapes, each is first padded into the white 518×518 square of VGGT's "pad" loader (`vggt_pad_boxes`), one note.

    User text (`query=`, a free `text=` without chat markup) may hold no added token of the tokenizer (`<|im_end|>`,
    `<|vision_end|>`, ...) and must be valid Unicode, else a ValueError names it; a `text=` with chat markup
    (`<|im_start|>`) is tokenized as written: one `<|vision_start|><|image_pad|><|vision_end|>` per view.

    Args:
        image_processor (`Qwen2VLImageProcessorPil`): patch 16, temporal patch 2, merge 2; its
            `size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}` is used in "grid" mode.
        tokenizer: a Qwen tokenizer with the vision special tokens and a chat template.
        chat_template (`str`, *optional*): defaults to the tokenizer's.
        preprocessing_mode (`str`): "grid" (default), "official_inference" or "official_training"; saved in
            processor_config.json.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, preprocessing_mode="grid", **kwargs):
        if preprocessing_mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"unknown preprocessing_mode {preprocessing_mode!r}; expected one of {', '.join(PREPROCESSING_MODES)}"
            )
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        # no video_processor: ProcessorMixin finds sub-processors by signature, and the video one needs torchvision
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )
        self.preprocessing_mode = preprocessing_mode
        self.image_placeholder = f"{self.vision_start_token}{self.image_token}{self.vision_end_token}"

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_tokenizer(cls, tokenizer, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                       preprocessing_mode: str = "grid", chat_template: str | None = None,
                       **image_processor_kwargs) -> GapMllmProcessor:
        """The processor around `tokenizer` with a new Pil image processor: patch 16, temporal patch 2, merge 2, the
        given pixel limits and mean = std = 0.5 (`image_mean=` / `image_std=` in `image_processor_kwargs` override)."""
        image_processor_kwargs.setdefault("image_mean", list(QWEN3_VL_IMAGE_MEAN))
        image_processor_kwargs.setdefault("image_std", list(QWEN3_VL_IMAGE_STD))
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            size={"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
            **image_processor_kwargs,
        )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            preprocessing_mode=preprocessing_mode,
        )

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # always the Pil image processor: AutoImageProcessor picks the torchvision one when torchvision is installed
        try:
            args = super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        except Exception as error:
            name_unreadable_tokenizer_file(pretrained_model_name_or_path, error)
            raise
        index = cls.get_attributes().index("image_processor")
        args[index] = cls._as_pil_image_processor(args[index])
        check_image_processor_sizes(args[index], pretrained_model_name_or_path)
        return args

    @staticmethod
    def _as_pil_image_processor(image_processor) -> Qwen2VLImageProcessorPil:
        if isinstance(image_processor, Qwen2VLImageProcessorPil):
            return image_processor
        config = image_processor.to_dict()
        logger.info(f"rebuilding {type(image_processor).__name__} as Qwen2VLImageProcessorPil")
        return Qwen2VLImageProcessorPil(**{k: config[k] for k in _PIL_IMAGE_PROCESSOR_KEYS if k in config})

    @property
    def model_input_names(self):
        return super().model_input_names + list(PROCESSOR_GEOMETRY_INPUT_NAMES)

    # ---------------------------------------------------------------------------------- sizing

    @property
    def pixel_limits(self) -> tuple[int, int]:
        """`(min_pixels, max_pixels)` the Qwen branch uses in the current mode."""
        if self.preprocessing_mode in OFFICIAL_PIXEL_LIMITS:
            return OFFICIAL_PIXEL_LIMITS[self.preprocessing_mode]
        size = self.image_processor.size
        return int(size["shortest_edge"]), int(size["longest_edge"])

    def qwen_size(self, height: int, width: int, pixel_limits: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h̄, w̄) the image processor resizes a `height × width` Qwen input to."""
        min_pixels, max_pixels = pixel_limits or self.pixel_limits
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)

    def _prepare_view(self, image: PIL.Image.Image, pixel_limits: tuple[int, int]):
        """One marked view → `(qwen_image, geometry [3, Hg, Wg], (h_p, w_p))`; `qwen_image` is a PIL image, or in
        "official_inference" an already resized float32 `[3, h̄, w̄]` array in about [0, 1]."""
        patch = self.image_processor.patch_size
        mode = self.preprocessing_mode
        if mode == "grid":
            qwen_image = image
            geometry_source = None
        else:
            if mode == "official_inference":
                image = jpeg_reencode(image)  # official: base64 JPEG round trip of every frame
            cropped = vggt_crop_preprocess(image)  # ScanNet frames → 392×518
            geometry_source = pil_to_tensor(cropped)
            if mode == "official_inference":
                qwen_image = crop_to_even_patch_count(cropped, patch, self.image_processor.merge_size)
            else:
                qwen_image = crop_top_left_to_multiple(cropped, patch * self.image_processor.merge_size)
        h_bar, w_bar = self.qwen_size(qwen_image.height, qwen_image.width, pixel_limits)
        geo_h, geo_w = geometry_size_for_qwen_size(h_bar, w_bar, patch, VGGT_PATCH_SIZE)
        if geometry_source is None:
            geometry = pil_to_tensor(resize_bicubic(image, geo_h, geo_w))
        else:
            geometry = resize_bilinear(geometry_source, geo_h, geo_w)
        if mode == "official_inference":
            # the official demo's processor resizes the crop's float [0, 1] tensor, not an 8-bit image
            qwen_image = resize_bicubic_antialias(pil_to_tensor(qwen_image), h_bar, w_bar).numpy()
        return qwen_image, geometry, (h_bar // patch, w_bar // patch)

    def _qwen_image_kwargs(self) -> dict:
        """Image-processor settings of this mode: "official_inference" views arrive resized and in [0, 1]."""
        if self.preprocessing_mode == "official_inference":
            return {"do_resize": False, "do_rescale": False}
        return {}

    # -------------------------------------------------------------------------------- batching

    def _load_sample(self, views: list, point_prompt, sample_idx: int) -> list[PIL.Image.Image]:
        if len(views) == 0:
            raise ValueError(f"sample {sample_idx} has no views; pass images=None for text-only input")
        names = [f"sample {sample_idx}, view {j}" for j in range(len(views))]
        loaded = [load_image(view, name=name) for view, name in zip(views, names)]
        boxes = vggt_pad_boxes([view.size for view in loaded], names)  # resized to one size, they would stretch
        # The marker goes into the ORIGINAL pixel grid of its view, before any resizing or padding: it moves with it.
        loaded = apply_point_prompt(loaded, point_prompt, name=f"point prompt of sample {sample_idx}")
        if boxes is not None:
            logger.warning_once(f"sample {sample_idx}: {alignment_note([view.size for view in loaded])}")
            return [pad_to_vggt_square(view, box) for view, box in zip(loaded, boxes)]
        for j, view in enumerate(loaded):  # VGGT attends across a sample's frames, so they share one size
            if view.size != loaded[0].size:
                logger.warning(f"sample {sample_idx}, view {j}: size {view.height}x{view.width} differs from view 0 "
                               f"({loaded[0].height}x{loaded[0].width}); resizing it to {loaded[0].height}x{loaded[0].width}")
                loaded[j] = resize_bicubic(view, loaded[0].height, loaded[0].width)
        return loaded

    def chat_prompt(self, segments, answer: str | None = None) -> str:
        """The chat text of one sample: system prompt, the user turn `segments` (`None` = one view, str = a text item),
        then `answer` (training) or the generation prompt. ValueError for a control token of the tokenizer in the
        text items (adjacent items checked joined) or the answer."""
        return render_chat_prompt(self.tokenizer, segments, answer, self.chat_template)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        check_conversation(self, conversation)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _text_prompt(self, text: str, num_views: int, sample_idx: int) -> str:
        """Chat prompt of a free text: text with chat markup as written, plain text wrapped after the views."""
        refuse_invalid_unicode(text, f"the text of sample {sample_idx}")
        check_text_placeholders(self, text, num_views, sample_idx)
        if CHAT_MARKER in text:  # tokenized as written: one image placeholder per view
            return text
        refuse_control_tokens(self.tokenizer, text, f"the text of sample {sample_idx}")
        return self.chat_prompt([None] * num_views + [text])

    def _task_prompts(self, spec: TaskSpec, views_per_sample: list[int], point_prompts: list, query, box) -> list[str]:
        """The chat prompt of `spec` for every sample."""
        queries = one_per_sample(query, len(views_per_sample), "query", lambda v: isinstance(v, str))
        boxes = one_per_sample(box, len(views_per_sample), "box", is_box)
        prompts = []
        for i, (num_views, point, q, b) in enumerate(zip(views_per_sample, point_prompts, queries, boxes, strict=True)):
            check_task_marker(spec, point, i)
            prompts.append(self.task_prompt(spec, num_views, query=q, box=b, sample_idx=i))
        return prompts

    def task_prompt(self, task, num_views: int, query: str | None = None, box=None, sample_idx: int = 0) -> str:
        """The chat prompt of `task` (the views, then the task text with `query` / `box`), as `processor(task=...)`
        writes it; ValueError naming the sample for a missing or malformed task input or a control token in `query`."""
        spec = resolve_task(task)
        if isinstance(query, str):
            refuse_control_tokens(self.tokenizer, query, f"sample {sample_idx}: the query")
        try:
            segments = spec.user_segments(num_views, query=query, box=box)
        except ValueError as error:
            raise ValueError(f"sample {sample_idx}: {error}") from None
        return self.chat_prompt(segments)

    def split_scene_prompt(self, text: str | list[str], num_views: int) -> tuple[str, str | list[str]]:
        """Split chat prompts into the scene prefix they share and their question suffixes, for scene reuse
        (`model.encode_scene` / `model.generate(scene=...)`).

        Args:
            text: one question or several about the same views: plain text (the chat prompt `__call__`
                would build is used) or chat-formatted text with one placeholder per view.
            num_views: the number of views of the scene.

        Returns:
            `(prefix, suffix)` (or `(prefix, [suffix, ...])` for a list): the prefix runs up to and including
            the last view's `<|vision_end|>`; prefix + suffix is exactly the full prompt.

        Raises:
            ValueError: prompts that do not share one prefix, and the text `__call__` refuses.
        """
        texts = [text] if isinstance(text, str) else list(text)
        parts = [split_prompt_at_last_view(self._text_prompt(t, num_views, i), self.vision_end_token)
                 for i, t in enumerate(texts)]
        prefixes = sorted({prefix for prefix, _ in parts})
        if len(prefixes) != 1:
            raise ValueError(f"the {len(texts)} prompts do not share one scene prefix (found {len(prefixes)} different "
                             "texts up to the last view); group them by prefix and encode one scene per group.")
        suffixes = [suffix for _, suffix in parts]
        return prefixes[0], suffixes[0] if isinstance(text, str) else suffixes

    def _pixel_limits_from_kwargs(self, kwargs: dict) -> tuple[int, int]:
        """Pop per-call `size` / `min_pixels` / `max_pixels` (grid mode only) so both branches use them."""
        overrides = {k: kwargs.pop(k) for k in ("size", "min_pixels", "max_pixels") if k in kwargs}
        if not overrides:
            return self.pixel_limits
        if self.preprocessing_mode != "grid":
            raise ValueError(
                f"{', '.join(overrides)} cannot be overridden in preprocessing_mode={self.preprocessing_mode!r}; "
                "the official modes fix the pixel limits"
            )
        min_pixels, max_pixels = self.pixel_limits
        size = overrides.get("size") or {}
        min_pixels = overrides.get("min_pixels", size.get("shortest_edge", min_pixels))
        max_pixels = overrides.get("max_pixels", size.get("longest_edge", max_pixels))
        return int(min_pixels), int(max_pixels)

    # ---------------------------------------------------------------------------------- __call__

    def __call__(self, images=None, text=None, point_prompts=None, return_tensors=None, task=None, query=None,
                 box=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """Process a batch of multi-view samples.

        Args:
            images: one image (one sample, one view); a list of N views (one sample); a list of lists
                (a batch; view counts may differ); a 4-D array/tensor is the view stack of one sample.
                Each view: PIL image, file path, numpy HWC (uint8 or float in [0, 1]) or torch CHW.
            text: a free prompt: `str` or one `str` per sample. Without `<|im_start|>` the chat prompt is
                built (system prompt, every view as an image item, then the text, generation prompt added); with
                chat markup it must hold one image placeholder per view.
            point_prompts: None, one `(view_idx, x, y)` (single sample) or one entry per sample (None or
                `(view_idx, x, y)`); the red "+" is painted at pixel (x, y) of that view's original grid.
            return_tensors: "pt", "np" or None.
            task: instead of `text`, a task of `TASKS` (name or `TaskSpec`) whose prompt the processor writes; a
                task with a marker (`TaskSpec.needs_marker`) needs `point_prompts`, the others take none.
            query, box: the task's inputs, one per sample (`TaskSpec.user_segments`): `query` a text, `box` 9
                numbers `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` in the first view's camera.
            **kwargs: forwarded to Qwen3VLProcessor (e.g. `padding`, `padding_side`, `truncation`, `max_length`);
                in "grid" mode `size` / `min_pixels` / `max_pixels` override the pixel limits of both branches.
            videos, audio: accepted as None only (a video's frames are the views of one sample).

        Raises:
            ValueError: a `query` or plain `text` holding a control token of the tokenizer, `point_prompts` for a
                task without a marker, and malformed inputs (named). TypeError: a keyword neither knows.

        Returns:
            `BatchFeature` (text keys only with a prompt, image keys only with `images`; V = views in the batch):
                input_ids, attention_mask, mm_token_type_ids  `[B, L]`
                pixel_values                                  `[Σ h_p·w_p, 3·2·16·16]` Qwen ViT patches
                image_grid_thw                                `[V, 3]`, one row (1, h_p, w_p) per view, in order
                geometry_pixel_values                         `[V, 3, H_max, W_max]` float32 in [0, 1]; view i
                                                              fills its top-left 14·h_p × 14·w_p block, zeros elsewhere
                geometry_views_per_sample                     `[B]` int64
        """
        check_no_video_or_audio(videos, audio)
        pixel_limits = self._pixel_limits_from_kwargs(kwargs)
        check_call_kwargs(self, kwargs)
        spec = resolve_task(task) if task is not None else None
        check_call_arguments(spec, images, text, query, box, point_prompts)
        if images is None:
            texts = split_texts(text, None)
            if texts is None:
                raise ValueError("GapMllmProcessor needs `images`, `text` or both")
            prompts = [self._text_prompt(t, 0, i) for i, t in enumerate(texts)]
            if len(prompts) > 1:
                kwargs.setdefault("padding", True)
            return super().__call__(text=prompts, return_tensors=return_tensors, **kwargs)

        samples = split_samples(images)
        texts = split_texts(text, len(samples))
        prompts_per_sample = split_point_prompts(point_prompts, len(samples))
        views_per_sample = [len(views) for views in samples]
        # Prompts first: a wrong task input is reported before any image is decoded.
        prompts = None
        if spec is not None:
            prompts = self._task_prompts(spec, views_per_sample, prompts_per_sample, query, box)
        elif texts is not None:
            prompts = [self._text_prompt(t, n, i) for i, (t, n) in enumerate(zip(texts, views_per_sample, strict=True))]

        qwen_images, geometries, grids = [], [], []
        for i, (views, point_prompt) in enumerate(zip(samples, prompts_per_sample, strict=True)):
            for j, view in enumerate(self._load_sample(views, point_prompt, i)):
                try:
                    qwen_image, geometry, grid = self._prepare_view(view, pixel_limits)
                except ValueError as error:  # e.g. smart_resize's aspect-ratio limit: say which view
                    raise ValueError(f"sample {i}, view {j} ({view.width}x{view.height} px): {error}") from error
                qwen_images.append(qwen_image)
                geometries.append(geometry)
                grids.append(grid)

        size = {"shortest_edge": pixel_limits[0], "longest_edge": pixel_limits[1]}
        if prompts is None:
            data = dict(self.image_processor(qwen_images, size=size, return_tensors=None, **self._qwen_image_kwargs()))
        else:
            if len(prompts) > 1:
                kwargs.setdefault("padding", True)
            kwargs.update(self._qwen_image_kwargs())
            data = dict(super().__call__(images=qwen_images, text=prompts, size=size, return_tensors=None, **kwargs))

        check_patch_grids(data["image_grid_thw"], grids)
        data["geometry_pixel_values"] = self._pad_geometry(geometries)
        data["geometry_views_per_sample"] = np.asarray(views_per_sample, dtype=np.int64)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _pad_geometry(geometries: list[torch.Tensor]) -> np.ndarray:
        """Stack `[3, Hg_i, Wg_i]` views top-left aligned into zeros `[V, 3, H_max, W_max]` float32."""
        height = max(g.shape[1] for g in geometries)
        width = max(g.shape[2] for g in geometries)
        out = np.zeros((len(geometries), 3, height, width), dtype=np.float32)
        for i, g in enumerate(geometries):
            out[i, :, : g.shape[1], : g.shape[2]] = g.numpy()
        return out

    # ---------------------------------------------------------------------------- post-processing

    def decode_generated(self, generated, input_ids=None) -> list[str]:
        """Texts of generated answers.

        Args:
            generated: a `str`, a list of `str`, token ids (`[B, L]` / `[L]` tensor or array, list of ints,
                list of lists) or a generate output with `.sequences`. Negative ids (-100 padding) are
                dropped; an id beyond the tokenizer's vocabulary is a ValueError, a non-integer id (a float
                tensor, 3.7 in a list) a TypeError.
            input_ids: the prompt ids given to `generate` (`[B, L_prompt]` or list of rows); that many tokens
                are stripped from the front of each row, since `generate` returns prompt + new tokens.
        Returns:
            one decoded string per row (`skip_special_tokens=True`).
        """
        rows = self._new_token_rows(generated, input_ids)
        if rows is None:
            return [generated] if isinstance(generated, str) else list(generated)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _new_token_rows(self, generated, input_ids=None) -> list[list[int]] | None:  # None: `generated` is text
        generated = generated.sequences if hasattr(generated, "sequences") else generated
        if isinstance(generated, str) or isinstance(generated, (list, tuple)) and all(isinstance(g, str) for g in generated):
            return None
        rows = token_id_rows(generated, "generated")
        if input_ids is not None:
            lengths = [len(r) for r in token_id_rows(input_ids, "input_ids")]
            if len(lengths) == 1 and len(rows) > 1:
                lengths = lengths * len(rows)
            if len(lengths) != len(rows):
                raise ValueError(f"input_ids has {len(lengths)} rows but the generated ids have {len(rows)}")
            rows = [row[n:] for row, n in zip(rows, lengths, strict=True)]
        rows = drop_negative_token_ids(rows)  # -100 / padding conventions: not tokens
        check_token_ids_in_vocabulary(rows, len(self.tokenizer))
        return rows

    def post_process(self, generated, task, input_ids=None, max_new_tokens: int | None = None,
                     constrained: bool = False, **options) -> list:
        """Typed results of generated answers, one per row (the task's parser); an answer of tokens that its budget
        ended says so in its `reason` (`budget_cut_reason`, as `gap-mllm predict` says it).

        Args:
            generated: what `decode_generated` accepts (generate output, token ids, or texts).
            task: the task name (or `TaskSpec`) the prompt asked.
            input_ids: the prompt ids given to `generate` (stripped from the front of each row).
            max_new_tokens, constrained: those given to `generation_kwargs` (a list the grammar closed for the budget).
            **options: the task's `parse_options`, one value or one per row (e.g. `num_frames`, which clamps a
                frame index to `[0, num_frames − 1]`).

        Returns:
            `list[spec.result_type]`, the task's result type.
        """
        spec = resolve_task(task)
        unknown = sorted(set(options) - set(spec.parse_options))
        if unknown:
            raise TypeError(f"post_process(task={spec.name!r}) takes no {', '.join(unknown)} "
                            f"(its options: {list(spec.parse_options) or 'none'})")
        texts = self.decode_generated(generated, input_ids)
        per_row = {}
        for name, value in options.items():
            per_row[name] = list(value) if isinstance(value, (list, tuple)) else [value] * len(texts)
            if len(per_row[name]) != len(texts):
                raise ValueError(f"{name} has {len(per_row[name])} entries for {len(texts)} answers")
        results = [spec.parse(text, **{name: values[i] for name, values in per_row.items()}) for i, text in enumerate(texts)]
        for result, row in zip(results, self._new_token_rows(generated, input_ids) or []):
            cut = budget_cut_reason(spec, self.tokenizer, row, max_new_tokens, constrained)
            result.reason = "; ".join(filter(None, (result.reason, cut))) or None
        return results

    def generation_kwargs(self, task, inputs, max_new_tokens: int | None = None, constrained: bool = False) -> dict:
        """`generate` arguments for `task`: greedy decoding, the task's token budget (or `max_new_tokens`)
        and its stop rule, so generation ends with the answer instead of running to the budget.

        Args:
            task: the task name (or `TaskSpec`).
            inputs: this processor's output (or the prompt `input_ids` `[B, L]`, left-padded for a batch).
            max_new_tokens: overrides the task's token budget.
            constrained: keep every answer inside the task's answer grammar (an llguidance `logits_processor`).
        """
        input_ids = inputs if isinstance(inputs, (torch.Tensor, np.ndarray)) else inputs["input_ids"]
        prompt_length = input_ids.shape[-1] if hasattr(input_ids, "shape") else len(token_id_rows(input_ids, "input_ids")[0])
        views = inputs.get("geometry_views_per_sample") if hasattr(inputs, "get") else None  # stage 1's frame indices
        num_views = [int(n) for n in views] if views is not None else None
        return resolve_task(task).generation_kwargs(self.tokenizer, prompt_length, max_new_tokens, constrained, num_views)

    def post_process_detection(self, generated, input_ids=None) -> list[DetectionResult]:
        """Parse detection answers, one result per row."""
        return self.post_process(generated, "detection", input_ids)

    def post_process_grounding(self, generated, input_ids=None) -> list[GroundingResult]:
        """Parse grounding answers `{"bbox_3d": [...]}`, one result per row."""
        return self.post_process(generated, "grounding_stage2", input_ids)

    def post_process_frame_selection(self, generated, input_ids=None, num_frames=None) -> list[FrameSelectionResult]:
        """Parse `{"frame": k}` answers; `num_frames` (an int or one per row) clamps k to `[0, num_frames − 1]`."""
        return self.post_process(generated, "grounding_stage1", input_ids, num_frames=num_frames)

    def post_process_pointmap(self, generated, input_ids=None) -> list[PointmapResult]:
        """Parse pre-training answers `{"pointmap": [x, y, z], "label": ...}`, one result per row."""
        return self.post_process(generated, "reconstruction", input_ids)


# `save_pretrained` writes the auto_map entry and copies the remote code for this class, however it was imported
GapMllmProcessor.register_for_auto_class("AutoProcessor")


__all__ = ["OFFICIAL_PIXEL_LIMITS", "PREPROCESSING_MODES", "QWEN3_VL_IMAGE_MEAN", "QWEN3_VL_IMAGE_STD", "GapMllmProcessor"]
