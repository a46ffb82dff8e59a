"""The evaluation runner answers the samples of one scene from one encoding of it (scene_generation.py),
with the same answers as one full generate call per sample."""

import json

from gap_mllm.evaluation import generation as evaluation_generation
from gap_mllm.evaluation import scene_generation
from gap_mllm.evaluation.batched_answers import answer_in_batches, scene_batches, stage_batches
from gap_mllm.evaluation.generation import Request
from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.evaluation.scene_generation import SceneGenerator, groups_for_rank, scene_groups
from gap_mllm.tasks_gap_mllm import FRAME_LABEL, IMAGE_PLACEHOLDER


def test_groups_stay_whole_and_are_balanced_over_ranks():
    requests = {i: Request([f"scene{s}/{f}.jpg" for f in range(3)], "p") for i, s in enumerate([0, 1, 0, 2, 0, 1])}
    requests[6] = Request(["scene0/0.jpg", "scene0/1.jpg", "scene0/2.jpg"], "p", pixel_coords=[0, 5, 5])  # marker
    groups = scene_groups(requests)
    assert groups == [[0, 2, 4], [1, 5], [3], [6]]
    assert groups_for_rank(groups, 0, 2) == [[0, 2, 4], [6]] and groups_for_rank(groups, 1, 2) == [[1, 5], [3]]
    assert groups_for_rank([[0], [1], [2]], 1, 2) == [[1]]  # single samples: round-robin, as before
    assert list(scene_batches(groups, 2)) == [[([0, 2], True), ([4], True)], [([1, 5], True)], [([3, 6], False)]]


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def count_generate_calls(monkeypatch) -> list:
    """Each `gap_mllm.generation.generate` call of the evaluation's generators: "scene" (`scene=`) or "full"."""
    calls = []
    for module in (evaluation_generation, scene_generation):
        original = module.generate

        def counting(*args, original=original, **kwargs):
            calls.append("scene" if kwargs.get("scene") is not None else "full")
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "generate", counting)
    return calls


def test_scene_generator_equals_one_full_call_per_request(synth_data, tiny_checkpoint, monkeypatch):  # noqa: F811
    frames = sorted(str(p) for p in (synth_data / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))[:3]
    labelled_views = "".join(FRAME_LABEL.format(index=i) + IMAGE_PLACEHOLDER for i in range(3))  # the stage-1 layout
    prompts = [labelled_views + "\nWhere is the chair?", labelled_views + "\nWhere is the lamp next to the door?",
               IMAGE_PLACEHOLDER * 3 + "Where is the chair?"]  # another prefix: a second scene
    requests = [Request(frames, prompt, None, 6) for prompt in prompts]  # two questions about scene 1
    requests.append(Request(frames, prompts[0], [1, 10, 12], 6))  # the marker makes it a third scene
    generator = SceneGenerator(tiny_checkpoint)
    expected = [generator.generate([request])[0] for request in requests]
    geometry_calls = count_calls(generator.model.geometry_encoder)
    generate_calls = count_generate_calls(monkeypatch)
    assert generator.generate_on_scenes(requests) == expected
    # each of the three scenes encoded once, the four questions decoded in one call, each row against its own scene
    assert generator.scenes_encoded == 3 and len(geometry_calls) == 3
    assert generate_calls == ["scene"]
    assert generator.generate_on_scenes(requests[3:]) == expected[3:]  # the last scene is kept: reused
    assert generator.scenes_encoded == 3 and len(geometry_calls) == 3 and generate_calls == ["scene"] * 2
    generator.forget_scenes()
    assert generator.generate_on_scenes(requests[:2]) == expected[:2]  # forgotten: encoded again
    assert generator.scenes_encoded == 4 and len(geometry_calls) == 4


def test_every_batch_of_a_scene_answers_a_stage_before_the_next_stage(synth_data, tiny_checkpoint,  # noqa: F811
                                                                     monkeypatch):
    """ScanRefer's shape: one stage-1 scene asked by every query, then a stage-2 scene of each query's own (its
    selected frame and neighbours). The stage-1 scene is encoded once for all batches, though the stage-2 scenes
    outnumber the generator's cache; the answers are those of one full call per request."""
    frames = sorted(str(p) for p in (synth_data / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))[:6]
    labelled_views = "".join(FRAME_LABEL.format(index=i) + IMAGE_PLACEHOLDER for i in range(4))

    def request_for(i, stage, previous):
        if stage == 0:
            return Request(frames[:4], labelled_views + f"\nWhere is object {i}?", None, 4)
        assert len(previous) == 1  # the sample's own stage-1 answer
        return Request(frames[i : i + 2], IMAGE_PLACEHOLDER * 2 + f"Box of object {i}?", None, 4)

    generator = SceneGenerator(tiny_checkpoint)
    expected = {}
    for i in range(5):
        first = generator.generate([request_for(i, 0, [])])
        expected[i] = first + generator.generate([request_for(i, 1, first)])
    generate_calls = count_generate_calls(monkeypatch)
    answered = dict(pair for batch, texts in answer_in_batches(generator, request_for, [list(range(5))], 2, 2)
                    for pair in zip(batch, texts, strict=True))
    assert answered == expected
    assert generator.scenes_encoded == 1 + 5  # the stage-1 scene once for the three batches, each stage-2 one once
    assert generate_calls == ["scene"] * 3 + ["scene"] * 3  # stage 2: a batch's scenes decoded in one call


def test_a_later_stage_batches_a_scenes_samples_by_the_frames_they_ask_about():
    requests = {i: Request([f"scene0/{i % 2}.jpg", f"scene0/{i % 2 + 1}.jpg"], "p") for i in range(5)}
    requests[5] = Request(["scene0/0.jpg", "scene0/1.jpg"], "p", pixel_coords=[0, 5, 5])  # a marker: another scene
    # three scenes: 0/1 asked by 0, 2, 4; 1/2 by 1, 3; the marked one by 5; each whole in one batch, largest first,
    # into the first batch with room (cut in order, batches of 4 split 1/2 over two batches and encoded it twice)
    first_stage = [([0, 1, 2], True), ([3, 4, 5], True)]
    assert stage_batches(first_stage, requests, 3) == [([0, 2, 4], True), ([1, 3, 5], True)]
    assert stage_batches(first_stage, requests, 4) == [([0, 2, 4, 5], True), ([1, 3], True)]
    # a scene asked more questions than a batch holds: its whole batches, then its rest opening the next batch
    assert stage_batches(first_stage, requests, 2) == [([0, 2], True), ([4, 5], True), ([1, 3], True)]
    singles = [([0, 1], False)]  # single samples of different scenes: their batch as it was
    assert stage_batches(singles, requests, 3) is singles


def test_descriptions_of_one_object_share_one_encoding_of_their_stage2_scene(synth_data, tiny_checkpoint,  # noqa: F811
                                                                             monkeypatch):
    """ScanRefer describes an object several times; descriptions that select the same frame ask stage 2 about the
    same scene. Spread over the first stage's batches ([0, 1, 2], [3, 4, 5]), that scene would be encoded once per
    batch; batched again by scene for stage 2 it is encoded once, and the answers are those of one full call each."""
    frames = sorted(str(p) for p in (synth_data / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))[:4]
    labelled_views = "".join(FRAME_LABEL.format(index=i) + IMAGE_PLACEHOLDER for i in range(3))

    def request_for(i, stage, previous):
        if stage == 0:
            return Request(frames[:3], labelled_views + f"\nWhere is description {i}?", None, 4)
        return Request(frames[i % 2 : i % 2 + 2], IMAGE_PLACEHOLDER * 2 + f"Box of description {i}?", None, 4)

    generator = SceneGenerator(tiny_checkpoint)
    expected = {}
    for i in range(6):
        first = generator.generate([request_for(i, 0, [])])
        expected[i] = first + generator.generate([request_for(i, 1, first)])
    generate_calls, geometry_calls = count_generate_calls(monkeypatch), count_calls(generator.model.geometry_encoder)
    answered = dict(pair for batch, texts in answer_in_batches(generator, request_for, [list(range(6))], 2, 3)
                    for pair in zip(batch, texts, strict=True))
    assert answered == expected
    # the stage-1 scene once, then each of the two stage-2 scenes once, its three descriptions in one batch (the
    # first stage's batches: 6 generate calls, and the geometry encoder ran 4 times, once in a full call)
    assert generator.scenes_encoded == 3 and len(geometry_calls) == 3 and generate_calls == ["scene"] * 4


def test_grounding_run_reuses_scenes_with_unchanged_answers(synth_data, tiny_checkpoint, tmp_path, monkeypatch):  # noqa: F811
    def run(out, **kwargs):
        run_evaluation("grounding", synth_data, out, model_dir=tiny_checkpoint, max_new_tokens=2, limit=3,
                       progress=False, plots=False, **kwargs)
        rows = [json.loads(line) for line in (out / "raw_outputs.rank0.jsonl").read_text().splitlines()]
        return {row["index"]: row["raw"] for row in rows}

    encoded = []  # the scene keys actually encoded (not found in the generator's LRU)
    original = SceneGenerator._scene

    def recording(self, key, request):
        if key not in self._scenes:
            encoded.append(key)
        return original(self, key, request)

    monkeypatch.setattr(SceneGenerator, "_scene", recording)
    shared = run(tmp_path / "shared", batch_size=2)
    # records 0-2 describe objects of one scene (same 8 frames): they go through scene reuse in batches
    # [0, 1] and [2]; each of their two stages' scenes is encoded once for all three
    records = json.loads((synth_data / "annotations" / "scanrefer_val_8frames_stage1.json").read_text())[:3]
    assert len({tuple(r["images"]) for r in records}) == 1
    assert len(encoded) == len(set(encoded)) == 2

    monkeypatch.setattr(scene_generation, "scene_groups", lambda requests: [[i] for i in requests])
    separate = run(tmp_path / "separate", batch_size=1)
    assert shared == separate and len(shared) == 3


def test_a_stage2_scene_straddling_two_batches_is_encoded_once(synth_data, tiny_checkpoint):  # noqa: F811
    """Seven descriptions, stage-2 scenes asked 2, 2, 2 and 1 times, batches of 3. Cut in order ([0, 1, 2], [3, 4, 5],
    [6]), the second scene had one question on either side of a boundary, each answered by a full call, and was
    encoded twice; packed whole, every stage-2 scene is encoded once, with the answers of one full call each."""
    frames = sorted(str(p) for p in (synth_data / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))[:5]
    labelled_views = "".join(FRAME_LABEL.format(index=i) + IMAGE_PLACEHOLDER for i in range(3))

    def request_for(i, stage, previous):
        if stage == 0:
            return Request(frames[:3], labelled_views + f"\nWhere is description {i}?", None, 4)
        return Request(frames[i // 2 : i // 2 + 2], IMAGE_PLACEHOLDER * 2 + f"Box of description {i}?", None, 4)

    generator = SceneGenerator(tiny_checkpoint)
    expected = {}
    for i in range(7):
        first = generator.generate([request_for(i, 0, [])])
        expected[i] = first + generator.generate([request_for(i, 1, first)])
    geometry_calls = count_calls(generator.model.geometry_encoder)
    answered = dict(pair for batch, texts in answer_in_batches(generator, request_for, [list(range(7))], 2, 3)
                    for pair in zip(batch, texts, strict=True))
    assert answered == expected
    assert len(geometry_calls) == 1 + 4  # the stage-1 scene, then each stage-2 scene once


def test_a_frame_gone_since_the_data_was_checked_is_named_by_its_sample_on_both_generation_paths(
        synth_data, tiny_checkpoint, tmp_path):  # noqa: F811
    """The processor names a view by its sample's position in the call ("sample 0, view 1"); a batch of an
    evaluation and a stored scene name the sample by its id instead, and a sample without one keeps its position."""
    import pytest

    from gap_mllm.processing.errors import DataError

    frames = sorted(str(p) for p in (synth_data / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))[:2]
    gone = str(tmp_path / "00010.jpg")  # as a frame deleted after the run checked the data
    request = Request([frames[0], gone], IMAGE_PLACEHOLDER * 2 + "Where is the chair?", None, 4)
    request.sample = "synth0000_00_det_0003"
    generator = SceneGenerator(tiny_checkpoint)
    expected = f"sample 'synth0000_00_det_0003': view 1: image file not found: {gone!r}"
    for generate in (generator.generate, generator.generate_on_scenes):
        with pytest.raises(DataError) as refused:
            generate([request])
        assert str(refused.value) == expected
    request.sample = None
    with pytest.raises(FileNotFoundError, match=rf"^sample 0, view 1: image file not found: '{gone}'$"):
        generator.generate([request])
