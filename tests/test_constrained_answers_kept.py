"""GAP-MLLM-Mini's constrained answers are the recorded texts, whichever grammar engine computes the masks.

tests/data/constrained_answers.json was recorded with xgrammar 0.2.8, another grammar engine, on a fixed set:
the six photographs (tests/data/photos), the bundled example room "synthetic room A" with its own requests, and three
frames of noise; every front-end task (`run_task`, the path of `gap-mllm predict` and the demo), detection with budgets
its list closes at (so the bounded list grammar is walked too). Both engines give the same masks, so greedy answers
are the same texts; a changed mask shows here as a changed answer.

Re-record (only on purpose, e.g. after the Mini is retrained): `python tests/test_constrained_answers_kept.py --record`.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURE = Path(__file__).parent / "data" / "constrained_answers.json"
PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))
BOX = [0.2, 0.3, 2.0, 0.6, 0.8, 0.6, 0.0, 0.0, 0.0]
CHOICE = ("Which object is closest to the camera?\nA. chair\nB. table\nC. lamp\n"
          "Answer with the option's letter from the given choices directly.")
DETECTION_BUDGETS = {"detection": 200, "detection_closed": 180}  # bounded 42 tokens in: inside the first entry
REQUESTS = {  # task -> the request's inputs on frames that are not a bundled room
    "captioning": {"box": BOX},
    "detection": {},
    "detection_closed": {},
    "grounding": {"query": "the red chair"},
    "grounding_stage1": {"query": "the blue cabinet"},  # no front-end task: `generate` with the processor's kwargs
    "reconstruction": {"marker": (0, 40, 50)},
    "spatial_qa": {"query": CHOICE},
    "spatial_qa_numerical": {"query": "How many chairs are in this room?"},
}


def photo_frames() -> list[Image.Image]:
    """The six photographs, each resized (bicubic) to the first one's 160x160, as the processor resized them itself
    when their answers were recorded: they are of three shapes (160x106 to 160x188), which it now pads
    instead (gap_mllm.image_utils_gap_mllm `vggt_pad_boxes`)."""
    photos = [Image.open(p).convert("RGB") for p in PHOTOS]
    return [photo.resize(photos[0].size, Image.Resampling.BICUBIC) for photo in photos]


def _frame_sets() -> dict:
    """name -> (frames, per-task request inputs)."""
    from gap_mllm.cli.scenes import synthetic_scene

    room = synthetic_scene(0)  # "synthetic room A"
    room_requests = dict(REQUESTS)
    for task, inputs in room.example_inputs.items():
        room_requests[task] = {name: value for name, value in inputs.items() if name in ("query", "box", "marker")}
    noise = [Image.fromarray(np.random.default_rng(54).integers(0, 256, (128, 160, 3), dtype=np.uint8))
             for _ in range(3)]
    return {"photos": (photo_frames(), REQUESTS),
            "synthetic room A": (room.views, room_requests),
            "noise": (noise, REQUESTS)}


def constrained_answers() -> dict:
    """{frame set: {request: the Mini's constrained answer}} by `run_task` (greedy)."""
    from transformers import AutoModel, AutoProcessor

    from gap_mllm.cli.tasks import TaskRequest, run_task
    from gap_mllm.mini import default_model_path

    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    answers = {}
    for name, (frames, requests) in _frame_sets().items():
        answers[name] = {}
        for key, inputs in requests.items():
            task = next(t for t in ("spatial_qa", "detection", key) if key.startswith(t))
            if task == "grounding_stage1":
                batch = processor(images=frames, task=task, return_tensors="pt", **inputs)
                out = model.generate(**batch, **processor.generation_kwargs(task, batch, None, constrained=True))
                answers[name][key] = processor.decode_generated(out, batch["input_ids"])[0]
                continue
            budget = DETECTION_BUDGETS.get(key)
            answers[name][key] = run_task(model, processor, frames, TaskRequest(task, **inputs), budget).raw
    return answers


@pytest.mark.skipif(not FIXTURE.exists(), reason="tests/data/constrained_answers.json is not recorded")
def test_the_mini_constrained_answers_are_unchanged():
    recorded = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert constrained_answers() == recorded["answers"]


if __name__ == "__main__" and sys.argv[1:2] == ["--record"]:
    from gap_mllm.tasks_gap_mllm import ENGINE_REQUIREMENT

    FIXTURE.write_text(json.dumps({"engine": ENGINE_REQUIREMENT, "answers": constrained_answers()}, indent=1,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
