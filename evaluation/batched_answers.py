"""Answer samples in batches, every stage of a multi-stage task, with scene reuse where samples share a scene.

The one loop behind `gap-mllm evaluate` (runner.py) and the lmms-eval plugin's model (lmms_eval_plugin/): the
samples are first grouped by scene (`scene_generation.scene_groups`: same first-stage frames and marker), then

    for batches in scene_batches(groups, batch_size):             # a scene's samples, in batches of its own
        for stage in range(stages):                               # grounding: frame selection, then the box
            for batch, shared in batches:
                requests = [request_for(i, stage, texts so far) for i in batch]
                texts += generator.generate_on_scenes(requests) if shared else generator.generate(requests)

so a scene's prefix (geometry encoder, vision tower, multi-view prefill) is encoded once for all its
questions at each stage, and a stage-2 request is built from the stage-1 answer of the same sample. Every
batch of a scene answers a stage before any answers the next: ScanRefer asks about 67 questions of a scene, and
when each batch went through both stages in turn, its stage-2 scenes pushed the stage-1 scene out of the
generator's small cache, so the stage-1 scene was encoded again for every batch instead of once.

A later stage asks about other frames than the first (ScanRefer's stage 2: the frame each query selected and its
neighbours, 19 frames), so a scene's samples are batched again for it, by the frames they now ask about
(`stage_batches`): ScanRefer describes each object about 4.6 times, and descriptions of one object that select the
same frame then share one batch and one encoding of their stage-2 scene, where the first stage's batches would have
spread them over several batches and encoded that scene once per batch. The stage-2 scenes are packed into batches
whole, so each is encoded once: stage 2 encodes at most one scene per frame that stage 1 can select (ScanRefer: 32
per scan), however many queries a scan has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .generation import Request
from .scene_generation import request_scene


def scene_batches(groups: list[list[int]], batch_size: int) -> Iterator[list[tuple[list[int], bool]]]:
    """The `(indices, shared)` batches, listed together per scene: a group of several samples (one scene) is sent
    in batches of its own, answered through scene reuse (`shared=True`); single samples are batched together
    (`shared=False`), each such batch a list of its own."""
    singles = []
    for group in groups:
        if len(group) == 1:
            singles.extend(group)
            if len(singles) == batch_size:
                yield [(singles, False)]
                singles = []
            continue
        yield [(group[start : start + batch_size], True) for start in range(0, len(group), batch_size)]
    if singles:
        yield [(singles, False)]


def stage_batches(batches: list[tuple[list[int], bool]], requests: dict[int, Request],
                  batch_size: int) -> list[tuple[list[int], bool]]:
    """The batches of one scene's later stage, packed by the scene their `requests` of this stage ask about
    (`request_scene`: frames and marker), so that each such scene is encoded once: a scene asked at most `batch_size`
    questions is never split over two batches, and batches are filled as far as that allows. The scenes are placed
    largest first (ties in order of first appearance), each in the first batch with room for all its samples
    (first-fit decreasing); a scene asked more questions than a batch holds gets whole batches of its own, its rest
    opening the batch right after them (the generator still holds it there). Samples keep their order within a scene.
    `batches` that are not a scene's (single samples of different scenes, `shared=False`) are returned as they are.

    Cut into batches in order instead, a stage-2 scene of ScanRefer (a query's selected frame and its neighbours)
    straddled two batches at every boundary; its one question on either side went through a full call, which the
    generator does not keep, and the scene was encoded twice."""
    if not all(shared for _, shared in batches):
        return batches
    by_scene: dict[tuple, list[int]] = {}
    for i in (i for batch, _ in batches for i in batch):
        by_scene.setdefault(request_scene(requests[i]), []).append(i)
    packed: list[list[int]] = []
    rests: list[list[int]] = []
    for members in by_scene.values():
        whole = len(members) - len(members) % batch_size if len(members) > batch_size else 0
        packed.extend(members[start : start + batch_size] for start in range(0, whole, batch_size))
        if whole and len(members) > whole:
            packed.append(members[whole:])  # opens the batch right after the scene's whole ones
        elif not whole:
            rests.append(members)
    for members in sorted(rests, key=len, reverse=True):  # stable: ties keep their order of first appearance
        room = next((batch for batch in packed if len(batch) + len(members) <= batch_size), None)
        if room is None:
            packed.append(list(members))
        else:
            room.extend(members)
    return [(batch, True) for batch in packed]


def answer_in_batches(generator, request_for: Callable[[int, int, list[str]], Request], groups: list[list[int]],
                      stages: int, batch_size: int, scene_reuse: bool = True) -> Iterator[tuple[list[int], list[list[str]]]]:
    """Yield `(sample indices, [[text per stage] per sample])`, one batch at a time, each scene's batches once the
    scene's last stage is answered (so a caller can write them as they finish).

    Args:
        generator: a `scene_generation.SceneGenerator` (or a `BatchGenerator` when `scene_reuse=False`).
        request_for: `(sample index, stage, previous texts of that sample) -> Request`, image paths resolved.
        groups: sample indices grouped by scene (`scene_groups`); with `scene_reuse=False` every sample is
            answered by a full call (the groups still decide which samples share a batch).
        stages: model calls per sample.
    """
    for batches in scene_batches(groups, batch_size):
        texts: dict[int, list[str]] = {i: [] for batch, _ in batches for i in batch}
        for stage in range(stages):
            requests = {i: request_for(i, stage, texts[i]) for batch, _ in batches for i in batch}
            batched = stage_batches(batches, requests, batch_size) if stage and scene_reuse else batches
            for batch, shared in batched:
                answer = generator.generate_on_scenes if shared and scene_reuse else generator.generate
                for i, text in zip(batch, answer([requests[i] for i in batch]), strict=True):
                    texts[i].append(text)
        for batch, _ in batches:
            yield batch, [texts[i] for i in batch]
