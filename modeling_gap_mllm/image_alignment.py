"""Image loading and the size rules that align Qwen3-VL's 16-px patch grid with VGGT's 14-px grid.

Qwen3-VL cuts an image into 16-px patches and merges 2×2 of them into one LLM token, so its input size
(h̄, w̄) is a multiple of 32 chosen by `smart_resize`. VGGT uses 14-px patches. Feeding VGGT the *same
pixel region* at `14·h̄/16 × 14·w̄/16` gives it exactly Qwen's patch grid (h̄/16, w̄/16); the 2×2 geometry
merger then yields one geometry token per merged Qwen token (docs/method.md §2.1-2.2, the "grid" rule).

The official GAP-MLLM preprocessing (VGGT "crop" to width 518, the training top-left crop, the
inference JPEG re-encode and odd-patch crop) is reproduced here for the official-compat modes.

Every image is normalised to an RGB `PIL.Image` (uint8) first: the marker, the JPEG round trip and
the resizes all work on it, and neither the caller's object nor its pixels are ever modified.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .image_files import AnimatedImageError, read_image_file
from .regular_files import regular_file_problem

QWEN_PATCH_SIZE = 16
QWEN_MERGE_SIZE = 2
QWEN_FACTOR = QWEN_PATCH_SIZE * QWEN_MERGE_SIZE  # 32 px per merged LLM token side
VGGT_PATCH_SIZE = 14
VGGT_TARGET_WIDTH = 518  # VGGT's training width (37 patches of 14 px)
JPEG_QUALITY = 75  # PIL's default JPEG quality, used by the official inference base64 round trip


def _smart_resize_fallback(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Copy of transformers' Qwen2-VL `smart_resize`, used only if that import ever moves."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@functools.cache  # looked up once: smart_resize runs for every image
def _transformers_smart_resize():
    """transformers' own `smart_resize` (the Pil module: the torchvision one imports torchvision), None for a version
    without it. Imported at the first call, not with this module: the SynthRooms writer and the CLI import this
    module for its PIL helpers, and transformers' image processing costs about 2 s of imports."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as resize
    except ImportError:  # pragma: no cover - only for transformers versions without the Pil module
        return None
    return resize


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """Qwen's resize rule: the (h̄, w̄) closest to (height, width), multiples of `factor`, with
    `min_pixels <= h̄·w̄ <= max_pixels` (up to one `factor` step), aspect ratio kept as far as possible.

    Delegates to transformers' `smart_resize` (the function the Pil image processor itself calls), so
    the geometry branch can never disagree with the Qwen branch.
    """
    resize = _transformers_smart_resize() or _smart_resize_fallback
    h_bar, w_bar = resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h_bar), int(w_bar)


def geometry_size_for_qwen_size(
    qwen_height: int,
    qwen_width: int,
    qwen_patch_size: int = QWEN_PATCH_SIZE,
    geometry_patch_size: int = VGGT_PATCH_SIZE,
) -> tuple[int, int]:
    """The grid rule: VGGT input size `(14·h̄/16, 14·w̄/16)` whose 14-px patch grid equals Qwen's 16-px grid.

    Example: Qwen 416×544 (26×34 patches, 221 tokens) → VGGT 364×476; Qwen 384×512 → VGGT 336×448.
    """
    if qwen_height % qwen_patch_size or qwen_width % qwen_patch_size:
        raise ValueError(
            f"Qwen input size {qwen_height}x{qwen_width} is not a multiple of the {qwen_patch_size}-px patch size"
        )
    return (qwen_height // qwen_patch_size) * geometry_patch_size, (qwen_width // qwen_patch_size) * geometry_patch_size


def vggt_crop_size(height: int, width: int, target_width: int = VGGT_TARGET_WIDTH) -> tuple[int, int, int]:
    """Sizes of VGGT's official "crop" preprocessing for an input of `height × width`.

    Returns `(resized_height, crop_top, output_height)`: the image is resized (bicubic) to
    `resized_height × target_width` with `resized_height = round(H·518/W / 14)·14` (Python's `round`,
    as in the official code), then rows `[crop_top, crop_top + output_height)` are kept, which centre-
    crops the height to 518 when it is larger. 480×640 and 968×1296 both give `(392, 0, 392)`.
    """
    resized_height = round(height * (target_width / width) / VGGT_PATCH_SIZE) * VGGT_PATCH_SIZE
    if resized_height < VGGT_PATCH_SIZE:
        raise ValueError(f"image of {height}x{width} is too flat for VGGT's crop preprocessing")
    if resized_height > target_width:
        crop_top = (resized_height - target_width) // 2
        return resized_height, crop_top, target_width
    return resized_height, 0, resized_height


def vggt_crop_preprocess(image: PIL.Image.Image, target_width: int = VGGT_TARGET_WIDTH) -> PIL.Image.Image:
    """VGGT's official `load_and_preprocess_images(mode="crop")` on one RGB image, kept as a PIL image.

    Width → 518 and height → `round(H·518/W/14)·14` (bicubic), centre crop of the height to 518 if larger.
    Cropping the PIL image gives the same pixels as the official crop of the `to_tensor` output.
    """
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
    """Official inference crop: drop trailing 16-px patches (top-left kept) only where the count is odd.

    No-op for 392×518 (24 and 32 patches); e.g. a width of 530 (33 patches) becomes 514.
    """
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
    """Bicubic resize of a float image tensor with antialiasing, as torchvision resizes a float32 tensor
    (`transforms.v2.functional.resize(..., InterpolationMode.BICUBIC, antialias=True)`, the resize of the
    Qwen3-VL torchvision image processor that the official inference feeds): `F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)`, the result neither clamped nor rounded (torchvision does both for
    integer images only, so values may overshoot [0, 1] a little), and the input returned as is when the size
    does not change. Without torchvision.

    Args:
        tensor: `[3, H, W]` or `[N, 3, H, W]` float32.
    Returns:
        the same rank, spatial size `height × width`, float32.
    """
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
    """Bilinear resize with `align_corners=False`, no antialias (what the official model does inside).

    Args:
        tensor: `[3, H, W]` or `[N, 3, H, W]` float.
    Returns:
        the same rank, spatial size `height × width`.
    """
    squeeze = tensor.dim() == 3
    batch = tensor.unsqueeze(0) if squeeze else tensor
    out = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------- loading


def _composite_rgba_on_white(rgba: PIL.Image.Image) -> PIL.Image.Image:
    # VGGT's loader blends transparency onto white; doing it for every input keeps both branches equal.
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


# Pillow modes of single-channel images with more than 8 bits: 16-bit PNG / TIFF ("I;16*"), 32-bit
# integer ("I") and float ("F"). `convert("RGB")` clips them at 255, which turns a 16-bit frame white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UINT16_MAX = 65535


def _high_bit_depth_to_l(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """A 16-bit ("I;16*", or "I" holding values in 0..65535) grey image as 8-bit "L", scaled by the
    full 16-bit range: v -> round(v · 255 / 65535). Other ranges ("F", "I" beyond 16 bits) are refused."""
    if image.mode == "F":
        raise ValueError(
            f"{name}: a 32-bit float image (mode F) has no defined brightness range; convert it to 8-bit RGB "
            "(or pass a float array in [0, 1]) before giving it to the processor"
        )
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > UINT16_MAX):
        raise ValueError(
            f"{name}: a 32-bit integer image (mode {image.mode}) with values in [{values.min()}, {values.max()}] "
            "beyond the 16-bit range; convert it to 8-bit RGB first"
        )
    scaled = np.rint(values.astype(np.float64) * (255.0 / UINT16_MAX)).astype(np.uint8)
    return PIL.Image.fromarray(scaled, mode="L")


def pil_to_rgb(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """A new RGB (8-bit) copy of a PIL image of any mode.

    Transparency is blended onto white (as VGGT's loader does). 16-bit grey frames (16-bit PNG) are
    scaled by their full range, 0..65535 -> 0..255; 32-bit float images are refused (ValueError naming
    `name`): their range is undefined.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = _high_bit_depth_to_l(image, name)
    return _pil_to_rgb(image)


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode == "RGBA":
        return _composite_rgba_on_white(image)
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _composite_rgba_on_white(image.convert("RGBA"))
    return image.convert("RGB")  # always a new object, so later drawing never touches the caller's image


def _array_to_pil(array: np.ndarray, layout: str, name: str) -> PIL.Image.Image:
    """`array` is HWC (`layout="hwc"`) or CHW; uint8 or float in [0, 1]; 1, 3 or 4 channels."""
    if array.ndim == 2:
        array = array[:, :, None]
        layout = "hwc"
    if array.ndim != 3:
        raise ValueError(f"{name}: expected an image array with 2 or 3 dimensions, got shape {tuple(array.shape)}")
    if layout == "chw":
        array = np.transpose(array, (1, 2, 0))
    channels = array.shape[2]
    if channels not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got shape {tuple(array.shape)} ({layout.upper()})")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: float image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"{name}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                "(pass uint8 for 0-255 data)"
            )
        # Rounding makes k/255 floats (e.g. a to_tensor output) map back to exactly k.
        data = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"{name}: unsupported image dtype {array.dtype} (use uint8 or float in [0, 1])")
    data = np.ascontiguousarray(data)
    if channels == 1:
        return PIL.Image.fromarray(data[:, :, 0], mode="L").convert("RGB")
    if channels == 4:
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
    """Convert one view to a new RGB `PIL.Image` (uint8).

    Accepted inputs:
        - `PIL.Image.Image` (any mode; transparency is blended onto white, as VGGT's loader does;
          16-bit grey, e.g. a 16-bit PNG, is scaled by its full range to 8 bits; float mode "F" is refused);
        - `str` / `os.PathLike` path to an image file, read upright (its EXIF orientation applied, as a photo viewer
          shows it: image_files.py; an animated file is refused); a PIL image is taken as given (its current frame);
        - `numpy.ndarray` HWC (or unambiguous CHW), uint8 or float in [0, 1], 1/3/4 channels, or 2-D grey;
        - `torch.Tensor` CHW (or unambiguous HWC), uint8 or float in [0, 1].

    Args:
        name: how the input is named in error messages (e.g. "sample 1, view 3").

    Raises:
        FileNotFoundError: path that does not exist. ValueError: unreadable file, bad shape or range.
        TypeError: unsupported type or dtype.
    """
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image, name)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        kind = regular_file_problem(path)  # regular files only (regular_files.py): a FIFO would be waited on
        if kind is not None:
            raise ValueError(f"{name}: image file {str(path)!r} is {kind}, not a regular file")
        if not path.is_file():
            raise FileNotFoundError(f"{name}: image file not found: {str(path)!r}")
        try:
            return pil_to_rgb(read_image_file(path), f"{name} ({str(path)!r})")  # upright: EXIF orientation applied
        except AnimatedImageError as err:  # a clip: which of its frames would be the view is the caller's choice
            raise ValueError(f"{name}: {err}") from err
        except PIL.Image.DecompressionBombError as err:
            raise ValueError(
                f"{name}: image file {str(path)!r} is refused as a possible decompression bomb ({err}); "
                "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
            ) from err
        except (PIL.UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{name}: cannot read image file {str(path)!r}: {err}") from err
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dtype in (torch.bfloat16, torch.float16):
            array = array.float()
        array = array.numpy()
        layout = _guess_layout(array.shape, prefer="chw") if array.ndim == 3 else "hwc"
        return _array_to_pil(array, layout, name)
    if isinstance(image, np.ndarray):
        layout = _guess_layout(image.shape, prefer="hwc") if image.ndim == 3 else "hwc"
        return _array_to_pil(image, layout, name)
    raise TypeError(
        f"{name}: unsupported image type {type(image).__module__}.{type(image).__qualname__}; expected a PIL image, "
        "a file path, a numpy array (HWC) or a torch tensor (CHW)"
    )
