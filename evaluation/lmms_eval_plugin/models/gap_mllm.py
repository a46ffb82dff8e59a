"""The `gap_mllm` lmms-eval model: a GAP-MLLM folder (or Hub id) answering the plugin's tasks.

    --model gap_mllm --model_args pretrained=CKPT,batch_size=8,device=cuda,dtype=bfloat16,scene_reuse=true

    --model gap_mllm --model_args pretrained=CKPT,backend=vllm,base_url=http://HOST:8000,served_model_name=gap-mllm

It answers two kinds of documents. The plugin's own (`gap-mllm export-lmms`: ScanRefer, Scan2Cap, detection, spatial
QA) are answered as `gap-mllm evaluate` answers their records (below). Any other task whose documents give images or a
video (`doc_to_visual`) and a text prompt (`output_type: generate_until`; e.g. lmms-eval's own `vsibench`) is answered
on frames sampled as `read_frames` documents (`max_frames`, default 32), with the task's prompt after the views,
greedy, the task's budget and stop strings (`generation_of`); documents showing the same video are batched together
and answered from one encoding of it (scene reuse).

    --model gap_mllm --model_args pretrained=CKPT,max_frames=32 --tasks vsibench

Arguments: `pretrained` (a model folder or Hub id, `mini` or nothing for the embedded GAP-MLLM-Mini), `device`
(default: the accelerate process device under `accelerate launch`, else cuda if there is one, else cpu), `batch_size`,
`max_new_tokens` (a cap on the registry budgets, for smoke runs; `--gen_kwargs max_new_tokens=N` caps the same
way), `max_frames` (upstream tasks: frames per document, default 32), `dtype` (e.g. bfloat16), `scene_reuse` (default
true), `constrained` (default false, the paper's protocol: true decodes the plugin's own tasks inside their answer
grammar, as `gap-mllm evaluate --constrained`, with either backend; upstream tasks such as vsibench stay free, their
answers having no registry grammar), `backend` (`hf`, default: this process generates; or
`vllm`: this process runs the encoder half and a vLLM server the language half, ../vllm_backend.py). With
`backend=vllm`: `base_url` (required), `served_model_name` (default gap-mllm), `max_concurrency` (requests in flight,
default 8), `timeout` (seconds per request, default 600), `verify_export` (default true: the served folder must be
the export of `pretrained`); `device`, `dtype` and `batch_size` then apply to the encoder.

Each document is answered (HF backend) as `gap-mllm evaluate` answers its record: the same requests (documents.request_for =
Benchmark.request), greedy decoding with the task's stop rule, and the same batching (evaluation/batched_answers.py:
documents about one scene are batched together and answered from one encoding of the scene). All the requests of
one call (lmms-eval sends every document of an output type at once) are grouped by task; a multi-round call
(ScanRefer) answers stage 1 of a batch, builds the stage-2 requests from those answers (the frames around the
selected frame) and answers them, which is what lmms-eval's round protocol (task_functions.grounding_doc_to_text)
describes for one document at a time. With `backend=vllm` the same requests are encoded here and answered by the
server, all documents of a stage at once, and read back as the HF backend's stop rule would have cut them
(../vllm_backend.py).

Under `accelerate launch` lmms-eval deals the documents to the processes itself (round-robin by document), so a
scene's questions may be answered on several processes; each process still groups its own share by scene.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from gap_mllm.cli.model_source import check_model_source
from gap_mllm.cli.uploads import CLI_WORDS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, UploadLimits, load_frames, uniform_indices
from gap_mllm.mini import default_model_path
from gap_mllm.processing.held_out import check_held_out, record_scene_id
from gap_mllm.tasks_gap_mllm import IMAGE_PLACEHOLDER, placeholders_from_segments

from ...batched_answers import answer_in_batches
from ...generation import Request
from ...scene_generation import SceneGenerator, scene_groups
from .. import LMMS_EVAL_REQUIREMENT, LMMS_EVAL_VERSION
from ..documents import DOCUMENT_KEYS, benchmark_of, check_document, record_of, request_for
from ..vllm_backend import DEFAULT_MAX_CONCURRENCY, DEFAULT_SERVED_MODEL_NAME, DEFAULT_TIMEOUT_S, VllmAnswerer

BACKENDS = ("hf", "vllm")
VLLM_ARGS = ("base_url", "served_model_name", "max_concurrency", "timeout", "verify_export")


def check_lmms_eval_version() -> None:
    """ImportError unless the installed lmms-eval is the release the plugin follows (its request and round formats
    are what the answers are read through; another release could pair answers and documents differently)."""
    from importlib.metadata import version

    installed = version("lmms-eval")
    if installed != LMMS_EVAL_VERSION:
        raise ImportError(f"gap_mllm: the lmms-eval plugin follows lmms-eval {LMMS_EVAL_VERSION}, this environment has "
                          f"{installed}: pip install --no-deps {LMMS_EVAL_REQUIREMENT}")


def _flag(value) -> bool:
    """lmms-eval passes model_args as strings ("true", "False", "0")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _optional_int(value, name: str) -> int | None:
    if value in (None, "", "None", "none"):
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return number


def _positive_float(value, name: str) -> float | None:
    if value in (None, "", "None", "none"):
        return None
    number = float(value)
    if not number > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


class GapMllm(lmms):
    """GAP-MLLM for lmms-eval (simple model: documents come with frames and prompts, no chat messages)."""

    is_simple = True

    def __init__(self, pretrained=None, device=None, batch_size=1, max_new_tokens=None, dtype=None, scene_reuse=True,
                 backend="hf", max_batch_size=None, base_url=None, served_model_name=None, max_concurrency=None,
                 timeout=None, verify_export=None, max_frames=None, constrained=None, **unknown) -> None:
        super().__init__()
        check_lmms_eval_version()
        if unknown:
            raise TypeError(f"gap_mllm: unknown model_args {', '.join(sorted(unknown))}; known: pretrained, device, "
                            "batch_size, max_new_tokens, max_frames, dtype, scene_reuse, constrained, backend, and with backend=vllm: "
                            f"{', '.join(VLLM_ARGS)}")
        self.frames = FrameCache(_optional_int(max_frames, "max_frames") or DEFAULT_MAX_FRAMES)
        if backend not in BACKENDS:
            raise ValueError(f"gap_mllm: backend {backend!r}; choose from {', '.join(BACKENDS)}")
        vllm_args = {"base_url": base_url, "served_model_name": served_model_name, "max_concurrency": max_concurrency,
                     "timeout": timeout, "verify_export": verify_export}
        if backend != "vllm" and any(value is not None for value in vllm_args.values()):
            given = [name for name, value in vllm_args.items() if value is not None]
            raise ValueError(f"gap_mllm: {', '.join(given)} belong to backend=vllm (this run has backend={backend})")
        if pretrained in (None, "", "mini"):
            pretrained = default_model_path()
        self.model_source = check_model_source(pretrained, "pretrained")
        self.backend = backend
        self.batch_size_per_call = _optional_int(batch_size, "batch_size") or 1
        self.max_new_tokens = _optional_int(max_new_tokens, "max_new_tokens")
        self.scene_reuse = _flag(scene_reuse)
        self.constrained = False if constrained is None else _flag(constrained)
        self._device = self._choose_device(device)
        torch_dtype = getattr(torch, str(dtype), None) if dtype not in (None, "", "None", "auto") else None
        if dtype not in (None, "", "None", "auto") and not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"gap_mllm: dtype {dtype!r} is not a torch dtype")
        self.generator = self.engine = None
        if backend == "vllm":

            self.engine = VllmAnswerer(
                self.model_source, base_url, served_model_name=served_model_name or DEFAULT_SERVED_MODEL_NAME,
                device=self._device, dtype=torch_dtype, max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size_per_call,
                max_concurrency=_optional_int(max_concurrency, "max_concurrency") or DEFAULT_MAX_CONCURRENCY,
                scene_reuse=self.scene_reuse, timeout=_positive_float(timeout, "timeout") or DEFAULT_TIMEOUT_S,
                verify_export=True if verify_export is None else _flag(verify_export))
        else:
            self.generator = SceneGenerator(self.model_source, device=self._device, max_new_tokens=self.max_new_tokens,
                                            dtype=torch_dtype)
        self._checked_held_out: set[tuple[str, frozenset]] = set()

    def _choose_device(self, device) -> torch.device:
        """The accelerate process's device when launched with several processes (lmms-eval shards by rank)."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            return accelerator.device
        if device not in (None, "", "None"):
            chosen = torch.device(device)
            if chosen.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"gap_mllm: device={device} but this machine has no CUDA GPU (torch "
                                 f"{torch.__version__}); give device=cpu, or run on a GPU machine")
            return chosen
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_call

    # ------------------------------------------------------------------------------------ lmms-eval API

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError("gap_mllm answers generative tasks only (generate_until, generate_until_multi_round)")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        mine = [i for i, request in enumerate(requests) if self._is_gap_document(request)]
        answers: list[str | None] = [None] * len(requests)
        for i, texts in zip(mine, self._answer([requests[i] for i in mine], multi_round=False)):
            answers[i] = texts[0]
        others = sorted(set(range(len(requests))) - set(mine))
        for i, text in zip(others, self._answer_upstream([requests[i] for i in others])):
            answers[i] = text
        return answers

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        upstream = sorted({request.task_name for request in requests if not self._is_gap_document(request)})
        if upstream:
            raise ValueError(f"gap_mllm: task(s) {', '.join(upstream)} ask for several rounds; gap_mllm answers the "
                             "multi-round tasks of gap-mllm export-lmms and other tasks of output_type generate_until")
        # a list of round texts (lmms-eval passes a list through to process_results; a tuple would be read as
        # (text, token counts))
        return [list(texts) for texts in self._answer(requests, multi_round=True)]

    # -------------------------------------------------------------------------------------- internals

    def _document(self, request: Instance) -> dict:
        doc_id, task, split = request.args[-3:]
        doc = self.task_dict[task][split][doc_id]
        check_document(doc)
        return doc

    def _is_gap_document(self, request: Instance) -> bool:
        """Whether the request's document is one of `gap-mllm export-lmms` (else an upstream task's)."""
        doc_id, task, split = request.args[-3:]
        doc = self.task_dict[task][split][doc_id]
        return all(key in doc for key in DOCUMENT_KEYS)

    def _answer_upstream(self, requests: list[Instance]) -> list[str]:
        """Texts of upstream `generate_until` requests (`read_frames`, `generation_of`), in request order: grouped by task settings, then by scene (documents of one video together, encoded once)."""
        if not requests:
            return []
        if self.engine is not None:
            raise ValueError("gap_mllm: backend=vllm answers the plugin's own tasks (gap-mllm export-lmms); run other "
                             "lmms-eval tasks with backend=hf")
        items = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            where = f"task {task!r}, document {doc_id}"
            visuals = check_visuals(doc_to_visual(self.task_dict[task][split][doc_id]), where)
            items.append((context, visuals, scene_name(visuals, self.frames.max_frames),
                          generation_of(gen_kwargs, task, self.max_new_tokens), where))
        by_settings: dict = {}
        for index, item in enumerate(items):
            by_settings.setdefault(item[3], []).append(index)

        def request_for_item(i, stage, previous):  # one stage; frames decoded when the item's batch is answered
            context, visuals, scene, generation, where = items[i]
            return upstream_request(context, self.frames.frames(scene, visuals), scene, generation, where)

        answers: list[str | None] = [None] * len(requests)
        for generation, members in by_settings.items():
            by_scene: dict[str, list[int]] = {}
            for index in members:
                by_scene.setdefault(items[index][2], []).append(index)
            for batch, texts in answer_in_batches(self.generator, request_for_item, list(by_scene.values()), 1,
                                                  self.batch_size_per_call, self.scene_reuse):
                for j, i in enumerate(batch):
                    answers[i] = cut_at_stop_strings(texts[j][0], generation.until)
        return answers

    def _budget_cap(self, request: Instance) -> int | None:
        """`max_new_tokens` of the request's generation kwargs, a cap like the model argument; anything that
        would change greedy decoding with the task's stop rule is refused rather than ignored."""
        kwargs = dict(request.args[1] or {})
        until = kwargs.pop("until", None)
        if until not in (None, [], ()):
            raise ValueError(f"gap_mllm: task {request.task_name!r} asks to stop at {until!r}; GAP-MLLM answers stop at the "
                             "end of the task's answer (gap_mllm.tasks_gap_mllm): set `until: []`")
        if _flag(kwargs.pop("do_sample", False)) or float(kwargs.pop("temperature", 0) or 0) > 0:
            raise ValueError(f"gap_mllm: task {request.task_name!r} asks for sampling; GAP-MLLM is evaluated greedily")
        cap = kwargs.pop("max_new_tokens", None)
        return None if cap is None else int(cap)

    def _check_held_out(self, docs: list[dict]) -> None:
        """One line when a model is scored on SynthRooms scenes it trained on (processing/held_out.py), as in gap-mllm
        evaluate; each set of scenes is checked once."""
        by_root: dict[str, set] = {}
        for doc in docs:
            by_root.setdefault(doc["data_root"], set()).add(record_scene_id(record_of(doc)))
        for root, scenes in by_root.items():
            key = (root, frozenset(scenes))
            if key not in self._checked_held_out:
                check_held_out(self.model_source, root, scenes)
                self._checked_held_out.add(key)

    def _answer(self, requests: list[Instance], multi_round: bool) -> list[list[str]]:
        """Texts per request (one per stage), in request order."""

        docs = [self._document(request) for request in requests]
        caps = [self._budget_cap(request) for request in requests]
        self._check_held_out(docs)
        by_task: dict[tuple, list[int]] = {}
        for index, doc in enumerate(docs):
            benchmark = benchmark_of(doc)
            if (benchmark.stages > 1) != multi_round:
                kind = "generate_until_multi_round" if benchmark.stages > 1 else "generate_until"
                raise ValueError(f"gap_mllm: task {requests[index].task_name!r} ({benchmark.name}, {benchmark.stages} "
                                 f"stage(s)) needs output_type {kind}")
            by_task.setdefault((doc["task"], bool(doc["official_compat"]), caps[index]), []).append(index)

        answers: list[list[str] | None] = [None] * len(requests)
        for (_, _, cap), members in by_task.items():
            stages = benchmark_of(docs[members[0]]).stages

            def request_for_member(i, stage, previous, cap=cap):
                request = request_for(docs[i], stage, previous)
                request.constrained = self.constrained  # the plugin's own tasks: their answer grammar (default off)
                if cap is not None:
                    request.max_new_tokens = min(request.max_new_tokens, cap)
                return request

            if self.engine is not None:
                names = {i: str(docs[i]["id"]) for i in members}
                for i, texts in self.engine.answer_stages(request_for_member, members, stages, names).items():
                    answers[i] = texts
                continue
            first = {i: request_for_member(i, 0, []) for i in members}
            for batch, texts in answer_in_batches(self.generator, request_for_member, scene_groups(first), stages,
                                                  self.batch_size_per_call, self.scene_reuse):
                for j, i in enumerate(batch):
                    answers[i] = texts[j]
        return answers


# ---- upstream tasks: the frames of a document's visuals (`doc_to_visual`)

DEFAULT_MAX_FRAMES = 32  # the official multi-view frame count (ScanRefer / Scan2Cap inference)
# Reading a document's own files: no upload limits on size or length (a benchmark's videos run for minutes), and no
# resize (the processor's job); a video is still sampled down to max_frames.
UNLIMITED = {"max_file_bytes": 1 << 40, "max_side": 1 << 20, "max_video_seconds": float("inf"), "max_video_frames": 1 << 30}


def _is_video(visual) -> bool:
    return isinstance(visual, (str, os.PathLike)) and Path(visual).suffix.lower() in VIDEO_SUFFIXES


def _describe(visual) -> str:
    return type(visual).__name__ if not isinstance(visual, (str, os.PathLike)) else repr(str(visual))


def check_visuals(visuals, where: str) -> list:
    """The document's visuals as a list: one video path, or image paths / PIL images; a ValueError naming `where`
    for anything else (audio, no visual, a video among other visuals)."""
    if isinstance(visuals, (str, os.PathLike, PIL.Image.Image)):
        visuals = [visuals]
    visuals = list(visuals or [])
    if not visuals:
        raise ValueError(f"{where}: doc_to_visual gave no image or video; gap_mllm answers questions about frames")
    videos = [v for v in visuals if _is_video(v)]
    if videos and len(visuals) > 1:
        raise ValueError(f"{where}: doc_to_visual gave a video with {len(visuals) - 1} other visual(s); gap_mllm reads "
                         "one video or a list of images as the views of one scene")
    for visual in visuals:
        is_image_path = isinstance(visual, (str, os.PathLike)) and Path(visual).suffix.lower() in IMAGE_SUFFIXES
        if not (_is_video(visual) or is_image_path or isinstance(visual, PIL.Image.Image)):
            raise ValueError(f"{where}: doc_to_visual gave {_describe(visual)}; gap_mllm reads images (PIL or "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}) or one video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return visuals


def scene_name(visuals: list, max_frames: int) -> str:
    """A name for the frames of `visuals` (checked), the same for documents that show the same video or images:
    files by path, size and modification time, in-memory images by a hash of their pixels."""
    parts = []
    for visual in visuals:
        if isinstance(visual, PIL.Image.Image):
            digest = hashlib.sha1(f"{visual.mode}{visual.size}".encode())
            digest.update(visual.tobytes())
            parts.append(f"pixels:{digest.hexdigest()}")
        else:
            path = Path(visual).resolve()
            stat = path.stat() if path.exists() else None  # a missing file is named when its frames are read
            parts.append(f"file:{path}:{stat.st_size if stat else '-'}:{stat.st_mtime_ns if stat else '-'}")
    return f"frames<={max_frames}|" + "|".join(parts)


def read_frames(visuals: list, max_frames: int) -> list[PIL.Image.Image]:
    """The views of `visuals` (checked by `check_visuals`), every frame one view of one scene:

        one video path (.mp4 .webm .mov .avi .mkv)   `max_frames` frames at evenly spaced indices over the whole video
                                                      (`round(linspace(0, n - 1, max_frames))`, all n when
                                                      n <= max_frames, in order), decoded with PyAV (cli/uploads.py,
                                                      the Space's and `gap-mllm predict`'s decoder)
        image paths or PIL images                    every image, in order; more than `max_frames` are sampled down
                                                      the same way

    Count: `max_frames` (a model argument) defaults to 32, the frame count of the official GAP-MLLM multi-view tasks
    (ScanRefer and Scan2Cap inference, 32 views; VG-LLM evaluates VSI-Bench with 32 frames too). Size: frames are
    passed as decoded; the checkpoint's processor resizes them as the official inference does for its frames (its
    `preprocessing_mode`: "official_inference" for a converted official checkpoint: JPEG q75 round trip, VGGT crop to
    width 518, then 416x544 for a 4:3 frame, 221 visual tokens; "grid": smart_resize within the image processor's
    pixel limits; docs/method.md §2.3), and frames of another size than the first are resized to it (VGGT attends
    across them): frames of another aspect ratio are never stretched but padded as VGGT's loader pads them
    (gap_mllm.image_utils_gap_mllm `vggt_pad_boxes`).
    """
    limits = UploadLimits(max_files=1, max_frames=max_frames, **UNLIMITED)
    if _is_video(visuals[0]):
        return load_frames([visuals[0]], limits, words=CLI_WORDS)
    if len(visuals) > max_frames:
        visuals = [visuals[i] for i in uniform_indices(len(visuals), max_frames)]
    return [v.convert("RGB") if isinstance(v, PIL.Image.Image) else load_frames([v], limits, words=CLI_WORDS)[0]
            for v in visuals]


class FrameCache:
    """Frames of the last `capacity` scenes read (a scene's documents come together, so each video is decoded once).

    Documents of one video are one scene: their frames are decoded once and carry one `scene` name (`scene_name`), so
    scene reuse encodes the video once for all its questions (evaluation/scene_generation.py).
    """

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES, capacity: int = 4):
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive number of frames, got {max_frames!r}")
        self.max_frames, self.capacity = max_frames, capacity
        self._frames: OrderedDict[str, list[PIL.Image.Image]] = OrderedDict()
        self.reads = 0  # scenes decoded (a test counts them)

    def frames(self, name: str, visuals: list) -> list[PIL.Image.Image]:
        """The frames of `visuals`, whose `scene_name` is `name`."""
        if name in self._frames:
            self._frames.move_to_end(name)
            return self._frames[name]
        frames = read_frames(visuals, self.max_frames)
        self.reads += 1
        self._frames[name] = frames
        while len(self._frames) > self.capacity:
            self._frames.popitem(last=False)
        return frames


# ---- upstream tasks: the prompt and generation settings of a document

DEFAULT_MAX_NEW_TOKENS = 128  # lmms-eval's Qwen3-VL model's budget for a task that names none
FEWSHOT_DELIMITER = "\n\n"  # lmms-eval's default `until`, added to every task without one (api/task.py)
GREEDY_KEYS = ("temperature", "top_p", "top_k", "num_beams", "do_sample")


@dataclass(frozen=True)
class UpstreamGeneration:
    """A task's generation settings as GAP-MLLM applies them (`generation_of`)."""

    max_new_tokens: int
    until: tuple[str, ...]


def generation_of(gen_kwargs: dict | None, task: str, cap: int | None) -> UpstreamGeneration:
    """The settings of a request's `gen_kwargs` (lmms-eval's `generation_kwargs` of the task), as the `gap_mllm` model
    asks and stops for an upstream task (`generate_until`, any task's documents):

        prompt    the views, then the task's text (`doc_to_text`, lmms-eval's context): the one chat layout of every
                  GAP-MLLM prompt (docs/method.md §3.1), written as one `<image>` per view followed by the text
                  (`upstream_request`)
        decoding  greedy (a task asking for sampling or beam search is refused: the numbers would not be GAP-MLLM's
                  evaluation), the task's `max_new_tokens`, or 128 when it names none (lmms-eval's Qwen3-VL model's
                  default), capped by `cap` (the model argument `max_new_tokens`)
        stopping  at EOS or the budget; the text is then cut before the first of the task's `until` strings
                  (lmms-eval's convention, `cut_at_stop_strings`). "\\n\\n" is not one of them: it is the few-shot
                  delimiter lmms-eval adds to every task that names no stop string, which lmms-eval's own Qwen3-VL
                  model drops as well.

    A GAP-MLLM task (the plugin's own documents) stops at the end of its registry answer instead (documents.py).

    Raises:
        ValueError: naming the task, for sampling, beam search, or a budget or stop string that is not one.
    """
    kwargs = dict(gen_kwargs or {})
    if str(kwargs.get("do_sample", False)).lower() in ("true", "1") or float(kwargs.get("temperature") or 0) > 0:
        raise ValueError(f"gap_mllm: task {task!r} asks for sampling; GAP-MLLM is evaluated greedily")
    if int(kwargs.get("num_beams") or 1) != 1:
        raise ValueError(f"gap_mllm: task {task!r} asks for beam search (num_beams={kwargs['num_beams']}); GAP-MLLM is "
                         "evaluated greedily")
    budget = kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"gap_mllm: task {task!r} asks for max_new_tokens={budget!r}; expected a positive whole number")
    until = kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    if not all(isinstance(text, str) and text for text in until):
        raise ValueError(f"gap_mllm: task {task!r} has stop strings {until!r}; expected non-empty texts")
    return UpstreamGeneration(min(budget, cap) if cap is not None else budget,
                              tuple(text for text in until if text != FEWSHOT_DELIMITER))


def upstream_request(context: str, frames: list, scene: str, generation: UpstreamGeneration, sample: str) -> Request:
    """The model call of one document: its frames (one scene named `scene`), then `context`.

    Raises:
        ValueError: the context holds `<image>`, this package's view placeholder (its views would shift).
    """
    if IMAGE_PLACEHOLDER in context:
        raise ValueError(f"gap_mllm: {sample}: the prompt holds {IMAGE_PLACEHOLDER!r}; gap_mllm puts the document's "
                         "views before its text and reads no placeholders in a task's text")
    prompt = placeholders_from_segments([None] * len(frames) + [context])
    return Request(images=list(frames), prompt=prompt, max_new_tokens=generation.max_new_tokens, task=None,
                   stop_at_answer_end=False, sample=sample, scene=scene)


def cut_at_stop_strings(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first occurrence of any stop string (all of it when none occurs)."""
    cut = min((text.find(stop) for stop in until if stop in text), default=len(text))
    return text[:cut]
