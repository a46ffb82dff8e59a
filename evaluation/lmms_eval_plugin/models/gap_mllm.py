"""The `gap_mllm` lmms-eval model: a GAP-MLLM folder (or Hub id) answering the plugin's tasks.

    --model gap_mllm --model_args pretrained=CKPT,batch_size=8,device=cuda,dtype=bfloat16,scene_reuse=true

    --model gap_mllm --model_args pretrained=CKPT,backend=vllm,base_url=http://HOST:8000,served_model_name=gap-mllm

It answers two kinds of documents. The plugin's own (`gap-mllm export-lmms`: ScanRefer, Scan2Cap, detection, spatial
QA) are answered as `gap-mllm evaluate` answers their records (below). Any other task whose documents give images or a
video (`doc_to_visual`) and a text prompt (`output_type: generate_until`; e.g. lmms-eval's own `vsibench`) is answered
on frames sampled as ../visual_frames.py documents (`max_frames`, default 32), with the task's prompt after the
views, greedy, the task's budget and stop strings (../upstream_requests.py); documents showing the same video are
batched together and answered from one encoding of it (scene reuse).

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

import os

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from gap_mllm.cli.model_source import check_model_source
from gap_mllm.mini import default_model_path
from gap_mllm.processing.held_out import check_held_out, record_scene_id

from ...batched_answers import answer_in_batches
from ...scene_generation import SceneGenerator, scene_groups
from .. import LMMS_EVAL_REQUIREMENT, LMMS_EVAL_VERSION
from ..documents import DOCUMENT_KEYS, benchmark_of, check_document, record_of, request_for
from ..upstream_requests import cut_at_stop_strings, generation_of, upstream_request
from ..visual_frames import DEFAULT_MAX_FRAMES, FrameCache, check_visuals, scene_name
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
        """Texts of upstream `generate_until` requests (../visual_frames.py, ../upstream_requests.py), in request
        order: grouped by task settings, then by scene (documents of one video together, encoded once)."""
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
        """A model is never scored on SynthRooms scenes it trained on (processing/held_out.py), as in gap-mllm evaluate."""
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
