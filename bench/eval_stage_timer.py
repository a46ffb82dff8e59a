"""Where an evaluation's time goes, stage by stage, on a generator in memory (evaluation/generation.py).

    timer = StageTimer(generator)          # wraps the generator's collator, processor and model
    ... answer requests ...
    timer.seconds()   # {"data_processor", "vggt", "vit", "prefill_llm", "decode", "generate_other"}
    timer.remove()

The stages (wall seconds; on CUDA each boundary synchronises the device, so a stage's time is its own work and not
the launch of it — the synchronisation itself costs a little, stated beside the figures):

    data_processor   the collator (images read, chat text, the processor) and the scene path's processor calls
    vggt, vit        the geometry encoder's and the vision tower's forwards
    prefill_llm      every model forward over more than one new token (the prompt, or a scene's questions) and every
                     `encode_scene`, less the towers' time inside them
    decode           `generate` time less the prefill forwards inside it (one-token steps, compiled or not, sampling)
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
        self.totals = dict.fromkeys(("data_processor", "vggt", "vit", "prefill", "prefill_in_generate", "generate"), 0.0)
        self._open: dict[str, float] = {}
        self._originals = {"collator": generator.collator, "processor": generator.processor}
        generator.collator = _TimedCall(generator.collator, self, "data_processor")
        generator.processor = _TimedCall(generator.processor, self, "data_processor")
        self._generate, self._encode_scene = self.model.generate, self.model.encode_scene
        self._timed_generate = self.model.generate = _TimedCall(self._generate, self, "generate")
        self.model.encode_scene = _TimedCall(self._encode_scene, self, "prefill")  # a scene's prompt, once
        self.handles = []
        for name, module in (("vggt", self.model.geometry_encoder), ("vit", self.model.vlm.model.visual)):
            self.handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self._start(name)))
            self.handles.append(module.register_forward_hook(lambda m, a, o, name=name: self._stop(name)))
        self.handles.append(self.model.register_forward_pre_hook(self._model_start, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(lambda m, a, o: self._stop("prefill")))

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

    def seconds(self) -> dict:
        """The stages' seconds so far (module docstring)."""
        towers = self.totals["vggt"] + self.totals["vit"]
        return {"data_processor": self.totals["data_processor"], "vggt": self.totals["vggt"], "vit": self.totals["vit"],
                "prefill_llm": max(self.totals["prefill"] - towers, 0.0),
                "decode": max(self.totals["generate"] - self.totals["prefill_in_generate"], 0.0)}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.generator.collator, self.generator.processor = self._originals["collator"], self._originals["processor"]
        for name in ("generate", "encode_scene"):  # back to the class's methods
            vars(self.model).pop(name, None)
