"""Evaluation requests that share a scene: encode it once, answer its questions from the cached prefix.

ScanRefer asks tens of referring expressions about one scene with the same frames; every one of them
used to re-run the geometry encoder, the vision tower and the multi-view prefill. `SceneGenerator`
keys each request by its scene (views, marker, and the chat text up to the last view), encodes each
scene once (`gap_mllm.generation.encode_scene`, kept in a small LRU) and batches the questions against it
(`gap_mllm.generation.generate(model, scene=...)`). Answers are the same tokens as the plain batched path (tests).

`scene_groups` / `groups_for_rank` decide, before any model is loaded, which samples the runner sends
together: samples whose first-stage request has the same images and marker form a group, and whole
groups are dealt to the processes (so a scene is encoded on one process only).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from gap_mllm.generation import encode_scene, generate
from gap_mllm.processing.collator import sample_chat_text, samples_named

from .generation import BatchGenerator, Request, answer_rules

MAX_CACHED_SCENES = 2  # the runner sends one scene's samples together; 2 also covers a two-stage task


def request_scene(request: Request) -> tuple:
    """What makes two requests share a scene before the prompt is looked at: same views (their `scene` name, else
    their paths; never an in-memory image's repr, whose address a later image can reuse), same marker."""
    coords = None if request.pixel_coords is None else tuple(int(v) for v in request.pixel_coords)
    if request.scene is not None:
        return (request.scene,), coords
    return tuple(str(p) for p in request.images), coords


def scene_groups(requests_by_sample: dict[int, Request]) -> list[list[int]]:
    """Sample indices grouped by `request_scene`, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for index, request in requests_by_sample.items():
        groups.setdefault(request_scene(request), []).append(index)
    return list(groups.values())


def groups_for_rank(groups: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Deal whole groups to `world` processes, each to the least loaded so far (ties: lowest rank), so
    every scene is encoded on one process; with single-sample groups this is round-robin."""
    loads, mine = [0] * world, []
    for group in groups:
        target = min(range(world), key=lambda r: (loads[r], r))
        loads[target] += len(group)
        if target == rank:
            mine.append(group)
    return mine


class SceneGenerator(BatchGenerator):
    """`BatchGenerator` that can also answer requests through scene reuse (`generate_on_scenes`)."""

    def __init__(self, *args, max_scenes: int = MAX_CACHED_SCENES, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_scenes = max_scenes
        self._scenes: OrderedDict[tuple, object] = OrderedDict()
        self.scenes_encoded = 0

    @classmethod
    def from_model(cls, model, processor, max_new_tokens: int | None = None, compile_decoding="off",
                   max_scenes: int = MAX_CACHED_SCENES) -> "SceneGenerator":
        """A scene-reusing generator around a model already in memory (`BatchGenerator.from_model`)."""
        generator = super().from_model(model, processor, max_new_tokens, compile_decoding)
        generator.max_scenes, generator._scenes, generator.scenes_encoded = max_scenes, OrderedDict(), 0
        return generator

    def _split(self, request: Request) -> tuple[tuple, str]:
        """(scene key, question suffix): the chat text the collator builds (its checks included: a prompt holding
        a control token is a DataError naming the sample), cut after the last view."""
        chat = sample_chat_text(self.processor, request.prompt, len(request.images), sample=request.sample)
        prefix, suffix = self.processor.split_scene_prompt(chat, num_views=len(request.images))
        return (*request_scene(request), prefix), suffix

    def _scene(self, key: tuple, request: Request):
        if key in self._scenes:
            self._scenes.move_to_end(key)
            return self._scenes[key]
        images, coords, prefix = key
        with samples_named([request.sample]):
            inputs = self.processor(images=[list(request.images)], text=[prefix], point_prompts=[coords],
                                    return_tensors="pt")
        scene = encode_scene(self.model, **inputs.to(self.device))
        self.scenes_encoded += 1
        self._scenes[key] = scene
        while len(self._scenes) > self.max_scenes:
            self._scenes.popitem(last=False)
        return scene

    def forget_scenes(self) -> None:
        """Drop the encoded scenes kept so far (a benchmark's timed run must encode its scenes itself)."""
        self._scenes.clear()

    @torch.no_grad()
    def generate_on_scenes(self, requests: list[Request]) -> list[str]:
        """Answer `requests` (any mix of scenes) in one `generate(scene=[...])` call: each scene encoded once (or
        taken from the generator's cache), every question decoded in the same batch against its own scene
        (gap_mllm.generation: one scene per row). Same answers as one full call each (tests).

        Before, each scene asked several questions had a call of its own, and the scenes asked one question went
        together through one full call: ScanRefer's stage 2 (each query's own selected frame and neighbours, about
        4.6 descriptions per object) then decoded in calls of a few rows, where a batch holds 8."""
        split = [self._split(r) for r in requests]
        scenes = {}  # each scene of the batch, encoded (or taken from the cache) once
        for (key, _), request in zip(split, requests, strict=True):
            if key not in scenes:
                scenes[key] = self._scene(key, request)
        questions = self.processor(text=[suffix for _, suffix in split], return_tensors="pt").to(self.device)
        budget = max(r.max_new_tokens for r in requests)
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        # inside generate(scene=...) the answer follows the longest prefix and the questions
        prompt_length = max(scene.num_tokens for scene in scenes.values()) + questions["input_ids"].shape[1]
        kwargs = {"max_new_tokens": budget, "do_sample": False, "num_beams": 1,
                  **answer_rules(requests, self.processor.tokenizer, prompt_length, budget)}
        output = generate(self.model, scene=[scenes[key] for key, _ in split], input_ids=questions["input_ids"],
                          attention_mask=questions["attention_mask"], compile_decoding=self.compile_decoding, **kwargs)
        return self.processor.decode_generated(output, questions["input_ids"])
