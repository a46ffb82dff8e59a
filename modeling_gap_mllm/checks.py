"""The checks the installed package adds around its own copy of the model folder's classes.

Each turns what would be an obscure failure (or a long wait) into an error that names the input: config sizes and
memory, checkpoints on loading, forward inputs, generate's token ids and context, a reused scene's model, the
processor's arguments. The role files call them through `configuration_gap_mllm.installed_package_module`; a model
folder loaded with `trust_remote_code` runs as transformers runs it. Never copied into a model folder.
"""

import contextlib
import json
import numbers
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from gap_mllm.files import regular_file_problem
from gap_mllm.image_utils_gap_mllm import AnimatedImageError
from gap_mllm.processing_gap_mllm import _is_point_prompt, _is_view_stack
from gap_mllm.tasks_gap_mllm import CHAT_MARKER, check_chat_text, refuse_control_tokens

# ---- configuration sizes and memory


# ---- loading: missing weights and damaged checkpoints


# ---- forward inputs


# ---- generate: token ids and context


# ---- scene reuse: the model that encoded a scene


# ---- processor arguments

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


def unreadable_tokenizer_file(source) -> str | None:
    """A message naming the first tokenizer file of folder `source` that cannot be read, or None (all read, or not a
    folder); asked after the tokenizer failed to load, whose own error names no file."""
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
        except Exception as error:  # noqa: BLE001 - whatever the reason, this file cannot be read
            return f"{path} cannot be read as a tokenizer file ({error}); copy it again, or save the processor again"
    return None


def name_unreadable_tokenizer_file(source, error: Exception) -> None:
    """ValueError (from `error`, the processor's failed load of `source`) naming the tokenizer file that cannot be
    read (`unreadable_tokenizer_file`); returns when every file reads, leaving `error` to be raised as it is."""
    unreadable = unreadable_tokenizer_file(source)
    if unreadable is not None:
        raise ValueError(unreadable) from error


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
        raise TypeError(
            f"GapMllmProcessor got unknown keyword argument(s) {', '.join(map(repr, unknown))}; it takes images, text, "
            "task, query, box, point_prompts, return_tensors and the Qwen3-VL processor options (padding, "
            "padding_side, truncation, max_length, ...)"
        )
    for group in (*per_modality, "common_kwargs"):
        if group not in kwargs:
            continue
        if not isinstance(kwargs[group], dict):
            raise TypeError(f"GapMllmProcessor: {group} must be a dict of keyword arguments, got "
                            f"{type(kwargs[group]).__name__} {kwargs[group]!r:.60}")
        unknown = sorted(set(kwargs[group]) - per_modality.get(group, every_modality))
        if unknown:
            raise TypeError(
                f"GapMllmProcessor got unknown keyword argument(s) {', '.join(map(repr, unknown))} in {group}; "
                f"the {group} it knows: {', '.join(sorted(per_modality.get(group, every_modality)))}"
            )


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
            raise ValueError(
                f"sample {sample_idx}: the chat-formatted text contains {placeholders} image placeholder(s) "
                f"({processor.image_placeholder!r}; {found} in total) but {num_views} view(s) were given; it needs "
                "exactly one placeholder per view and no other vision token"
            )
    elif image_token in text or start in text:
        raise ValueError(
            f"sample {sample_idx}: text without chat markup must not contain image placeholders; the processor "
            f"adds one per view (found {text.count(image_token)} {image_token!r})"
        )


def check_patch_grids(image_grid_thw, grids) -> None:
    """RuntimeError when the image processor's `image_grid_thw` `[V, 3]` differs from the geometry branch's patch
    grids `grids` (`(h_p, w_p)` per view): a per-call `do_resize` / `patch_size` would misalign the two branches."""
    grid_thw = np.asarray(image_grid_thw).reshape(-1, 3)
    expected = np.array([[1, h, w] for h, w in grids], dtype=np.int64)
    if grid_thw.shape != expected.shape or not np.array_equal(grid_thw, expected):
        raise RuntimeError(
            "the image processor produced patch grids that differ from the geometry grids "
            f"({grid_thw.tolist()} vs {expected.tolist()}); do not override do_resize/patch_size per call"
        )


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


def check_image_nesting(images) -> None:
    """ValueError for a list `images` that is empty or mixes single images and lists of views (or view stacks)."""
    if len(images) == 0:
        raise ValueError("`images` is an empty list; pass images=None for text-only input")
    nested = [isinstance(x, (list, tuple)) or _is_view_stack(x) for x in images]
    if any(nested) and not all(nested):
        raise ValueError(
            "`images` mixes single images and lists of views; pass a list of views for one sample or a "
            "list of lists (one list of views per sample) for a batch"
        )


def check_texts(text, num_samples: int | None) -> None:
    """TypeError unless `text` is a string or a list of strings; ValueError when their count is not `num_samples`
    (None: any count, for text without images)."""
    if not isinstance(text, (str, list, tuple)):
        raise TypeError(f"`text` must be a string or a list of strings (one per sample), got {type(text).__name__} {text!r:.60}")
    texts = [text] if isinstance(text, str) else list(text)
    bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"`text` must be a string or a list of strings; entry {bad[0][0]} is a "
                        f"{type(bad[0][1]).__name__} ({bad[0][1]!r:.60})")
    if num_samples is not None and len(texts) != num_samples:
        raise ValueError(
            f"got {len(texts)} text(s) for {num_samples} image sample(s); images for one sample are a list of "
            "views and a batch is a list of such lists, with one text per sample"
        )


def check_point_prompts(point_prompts, num_samples: int) -> None:
    """ValueError unless `point_prompts` is None, one `(view_idx, x, y)` (for one sample) or a list with one entry
    per sample."""
    if point_prompts is None:
        return
    if _is_point_prompt(point_prompts):
        if num_samples != 1:
            raise ValueError(
                f"a single point prompt {tuple(point_prompts)} was given for a batch of {num_samples} samples; "
                "pass one entry (None or (view_idx, x, y)) per sample"
            )
    elif not isinstance(point_prompts, (list, tuple)) or len(point_prompts) != num_samples:
        raise ValueError(
            f"`point_prompts` must be None, one (view_idx, x, y) or a list with one entry per sample "
            f"({num_samples}), got {point_prompts!r}"
        )


def check_token_id_rows(ids, name: str) -> None:
    """TypeError naming `name` unless `ids` are token ids: an integer tensor or array, or a list of integers (0-d
    integer tensors and arrays included) or of such rows."""

    def plain(value):
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
    rows = [list(ids)] if flat else [plain(row) for row in ids]
    for r, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise TypeError(f"{name}: row {r} is a {type(row).__name__}, not a sequence of token ids")
        bad = [v for v in map(plain, row) if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise TypeError(f"{name}: token ids must be integers; row {r} holds {bad[0]!r} ({type(bad[0]).__name__})")


def check_token_ids_in_vocabulary(rows: list[list[int]], vocabulary: int) -> None:
    """ValueError naming the first row holding a token id ≥ `vocabulary` (the tokenizer's size)."""
    for r, row in enumerate(rows):
        beyond = [i for i in row if i >= vocabulary]
        if beyond:
            raise ValueError(f"row {r} holds token id {beyond[0]}, outside the tokenizer's {vocabulary} ids; "
                             "were these ids produced with another tokenizer?")


def check_task_marker(spec, point_prompt, sample_idx: int) -> None:
    """ValueError naming sample `sample_idx` when task `spec` (a `TaskSpec`) asks about a marked pixel and it has no
    `point_prompt`, or asks about none and it has one (the marker would be painted into views its prompt never
    mentions)."""
    if spec.needs_marker and point_prompt is None:
        raise ValueError(
            f"sample {sample_idx}: task {spec.name!r} asks about a marked pixel; pass point_prompts=(view, x, y) "
            "(one per sample for a batch)"
        )
    if not spec.needs_marker and point_prompt is not None:
        raise ValueError(
            f"sample {sample_idx}: task {spec.name!r} does not use a marker, but point_prompts gives "
            f"{tuple(point_prompt)}; drop point_prompts (only 'reconstruction' asks about a marked pixel), or write "
            "the prompt yourself with text="
        )


def check_image_array(array: np.ndarray, layout: str, name: str) -> None:
    """ValueError naming view `name` unless `array` (`layout` "hwc" or "chw", or 2-D grey) is a non-empty image with
    1, 3 or 4 channels and, when float, finite values in [0, 1]."""
    shape = array.shape if array.ndim != 2 else (*array.shape, 1)
    if len(shape) != 3:
        raise ValueError(f"{name}: expected an image array with 2 or 3 dimensions, got shape {tuple(array.shape)}")
    if array.ndim == 2:
        layout = "hwc"
    if layout == "chw":
        shape = (shape[1], shape[2], shape[0])
    if shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got shape {shape} ({layout.upper()})")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: float image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"{name}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                "(pass uint8 for 0-255 data)"
            )


@contextlib.contextmanager
def view_file_errors(path: Path, name: str):
    """Around the processor's reading of image file `path` as view `name`: refuses a path that is not a regular file
    (a FIFO would be waited on) or is missing before it is read, and names the view and the file in reading errors.

    Raises:
        FileNotFoundError: a missing file. ValueError: not a regular file, an animated image, a possible
            decompression bomb, or a file PIL cannot read.
    """
    kind = regular_file_problem(path)
    if kind is not None:
        raise ValueError(f"{name}: image file {str(path)!r} is {kind}, not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: image file not found: {str(path)!r}")
    try:
        yield
    except AnimatedImageError as err:  # a clip: which of its frames would be the view is the caller's choice
        raise ValueError(f"{name}: {err}") from err
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(
            f"{name}: image file {str(path)!r} is refused as a possible decompression bomb ({err}); "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from err
    except (PIL.UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{name}: cannot read image file {str(path)!r}: {err}") from err
