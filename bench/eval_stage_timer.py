"""Where an evaluation's time goes, stage by stage, on a generator in memory (evaluation/generation.py).

    timer = StageTimer(generator)          # wraps the generator's collator, processor and model
    ... answer requests ...
    timer.seconds()   # {"data_processor", "vggt", "vit", "prefill_llm", "decode"}
    timer.remove()

A caller that answers a multi-stage task sets `timer.task_stage` (0: grounding's frame selection, 1: its box) before
each stage's generator calls; `timer.seconds_by_stage()` then splits the same figures by task stage, and
`timer.views_by_stage` counts the views the geometry encoder encoded at each (a scene reused is not encoded again).

The stages (wall seconds; on CUDA each boundary synchronises the device, so a stage's time is its own work and not
the launch of it — the synchronisation itself costs a little, stated beside the figures):

    data_processor   the collator (images read, chat text, the processor) and the scene path's processor calls
    vggt, vit        the geometry encoder's and the vision tower's forwards
    prefill_llm      every model forward over more than one new token (the prompt, or a scene's questions) and every
                     `encode_scene`, less the towers' time inside them
    decode           `generate` time less the prefill forwards and the towers inside it (transformers' `generate` runs
                     the towers before its prefill), so one-token steps, compiled or not, and sampling
    scoring          timed by the caller around the task's `evaluate`
"""

from __future__ import annotations

import contextlib
import time

import torch


class _TimedCall:
    """A stand-in for `target` whose calls are timed into `timer`'s `stage` (outermost call only)."""

    def __init__(self, target, timer, stage):
        self._target, self._timer, self._stage = target, timer, stage
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        with self._timer.stage(self._stage):
            return self._target(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._target, name)


class StageTimer:
    """Times the stages of the module docstring on `generator` (its `collator`, `processor` and `model`)."""

    def __init__(self, generator):
        self.generator = generator
        self.model = generator.model
        self.cuda = self.model.device.type == "cuda"
        self.task_stage = 0
        self.by_stage: dict[int, dict[str, float]] = {}
        self.views_by_stage: dict[int, int] = {}
        self._open: dict[str, float] = {}
        self._originals = {"collator": generator.collator, "processor": generator.processor}
        generator.collator = _TimedCall(generator.collator, self, "data_processor")
        generator.processor = _TimedCall(generator.processor, self, "data_processor")
        self._generate, self._encode_scene = self.model.generate, self.model.encode_scene
        self._timed_generate = self.model.generate = _TimedCall(self._generate, self, "generate")
        self.model.encode_scene = _TimedCall(self._encode_scene, self, "prefill")  # a scene's prompt, once
        self.handles = []
        self.handles.append(self.model.geometry_encoder.register_forward_pre_hook(self._count_views))
        for name, module in (("vggt", self.model.geometry_encoder), ("vit", self.model.model.visual)):
            self.handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self._start(name)))
            self.handles.append(module.register_forward_hook(lambda m, a, o, name=name: self._stop(name)))
        self.handles.append(self.model.register_forward_pre_hook(self._model_start, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(lambda m, a, o: self._stop("prefill")))

    @property
    def totals(self) -> dict[str, float]:
        """The current task stage's running sums (`_stop` adds to them)."""
        names = ("data_processor", "vggt", "vit", "prefill", "prefill_in_generate", "generate", "towers_in_prefill",
                 "towers_in_generate")
        return self.by_stage.setdefault(self.task_stage, dict.fromkeys(names, 0.0))

    def _count_views(self, module, args) -> None:
        images = args[0]  # [B, S, 3, H, W]: B samples of S views
        self.views_by_stage[self.task_stage] = self.views_by_stage.get(self.task_stage, 0) + images.shape[0] * images.shape[1]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    def _start(self, name: str) -> None:
        if name not in self._open:  # the outermost call of a stage only (a collator calls the processor)
            self._open[name] = self._now()

    def _stop(self, name: str) -> None:
        begun = self._open.pop(name, None)
        if begun is not None:
            elapsed = self._now() - begun
            self.totals[name] += elapsed
            if name == "prefill" and "generate" in self._open:  # what `decode` leaves out of generate's time
                self.totals["prefill_in_generate"] += elapsed
            if name in ("vggt", "vit") and "prefill" in self._open:  # a forward that encodes its own images
                self.totals["towers_in_prefill"] += elapsed
            elif name in ("vggt", "vit") and "generate" in self._open:  # generate encodes them before its prefill
                self.totals["towers_in_generate"] += elapsed

    def _model_start(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        width = (ids if ids is not None else embeds).shape[1] if (ids is not None or embeds is not None) else 1
        if width > 1:  # a prefill forward; one-token steps are decode
            self._start("prefill")

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time the block into `name` (the outermost of nested blocks of one stage only)."""
        outer = name not in self._open
        self._start(name)
        try:
            yield
        finally:
            if outer:
                self._stop(name)

    @property
    def generate_calls(self) -> int:
        """The model's generate calls so far (a batch of questions or of samples is one)."""
        return self._timed_generate.calls

    @staticmethod
    def _stages(totals: dict[str, float]) -> dict[str, float]:
        return {"data_processor": totals["data_processor"], "vggt": totals["vggt"], "vit": totals["vit"],
                "prefill_llm": max(totals["prefill"] - totals["towers_in_prefill"], 0.0),
                "decode": max(totals["generate"] - totals["prefill_in_generate"] - totals["towers_in_generate"], 0.0)}

    def seconds_by_stage(self) -> dict[int, dict[str, float]]:
        """`seconds()` of each task stage, by its index."""
        return {stage: self._stages(totals) for stage, totals in sorted(self.by_stage.items())}

    def seconds(self) -> dict:
        """The stages' seconds so far, all task stages together (module docstring)."""
        by_stage = self.seconds_by_stage().values()
        names = ("data_processor", "vggt", "vit", "prefill_llm", "decode")
        return {name: sum(stages[name] for stages in by_stage) for name in names}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.generator.collator, self.generator.processor = self._originals["collator"], self._originals["processor"]
        for name in ("generate", "encode_scene"):  # back to the class's methods
            vars(self.model).pop(name, None)
