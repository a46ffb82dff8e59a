"""The task registry: one definition per task that every consumer uses, a processor that speaks tasks, the
official prompts byte for byte, answers that round-trip, and generation that stops at the answer's end."""

import argparse
import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

import gap_mllm.tasks_gap_mllm as registry
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.tasks_gap_mllm import (
    DEPRECATED_TASK_NAMES,
    TASKS,
    AnswerEndCriteria,
    Box3D,
    CaptionResult,
    DetectionResult,
    FrameSelectionResult,
    GroundingResult,
    PointmapResult,
    SpatialAnswerResult,
    answer_complete,
    resolve_task,
    stop_token_ids,
)

from .conftest import make_views

REPO = Path(__file__).resolve().parent.parent

# Typed here from docs/method.md §3.3 / §3.4 (not imported): the registry must reproduce them byte for byte.
OFFICIAL_DETECTION = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame.\n"
    "Output a json list where each entry contains the object name in \"label\" and its 3D bounding box in \"box_3d\".\n"
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
OFFICIAL_STAGE1 = (
    "Localize the first clear frame in the video showing the object described in the text.\n"
    "Text: the chair next to the desk\n"
    "Output a JSON dictionary with the frame index in \"frame\".\n"
)
OFFICIAL_STAGE2 = (
    "Localize the object described in the text.\n"
    "Text: the chair next to the desk\n"
    "Output a JSON dictionary with the matched object's 3D bounding box in \"bbox_3d\" in the camera coordinate "
    "system of the first frame.\n"
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll].\n"
)
QUERY = "the chair next to the desk"
BOX = [0.44, 0.08, 2.26, 0.98, 1.88, 0.83, 0.81, 1.17, 2.96]
# The inputs each task needs for one sample of 3 views.
TASK_INPUTS = {
    "detection": {},
    "grounding": {"query": QUERY},
    "grounding_stage1": {"query": QUERY},
    "grounding_stage2": {"query": QUERY},
    "captioning": {"box": BOX},
    "reconstruction": {"point_prompts": (1, 20, 15)},
    "spatial_qa": {"query": "How many chairs are in the room?"},
}
# One typed answer per task, with values that survive the 2-decimal serialisation exactly.
ANSWERS = {
    "detection": DetectionResult([Box3D.from_list(BOX, label="couch"),
                                  Box3D.from_list([0.83, -0.0, 2.08, 0.32, 0.46, 0.33, 0.79, 1.17, 2.96], label="pillow")]),
    "grounding": GroundingResult(Box3D.from_list(BOX)),
    "grounding_stage1": FrameSelectionResult(3),
    "grounding_stage2": GroundingResult(Box3D.from_list(BOX)),
    "captioning": CaptionResult("a brown wooden chair next to the desk"),
    "reconstruction": PointmapResult((0.5, -0.25, 3.0), "wall"),
    "spatial_qa": SpatialAnswerResult("3.5", 3.5),
}


def chat(user: str) -> str:
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + user
            + "<|im_end|>\n<|im_start|>assistant\n")


def vision_blocks(image_grid_thw) -> list[str]:
    return ["<|vision_start|>" + "<|image_pad|>" * (int(t * h * w) // 4) + "<|vision_end|>"
            for t, h, w in image_grid_thw.tolist()]


# ------------------------------------------------------------------------------------------ definitions


def test_registry_names_flags_and_official_templates():
    assert tuple(TASKS) == ("detection", "grounding", "grounding_stage1", "grounding_stage2", "captioning",
                            "reconstruction", "spatial_qa")
    assert {name for name, spec in TASKS.items() if spec.official} == {
        "detection", "grounding", "grounding_stage1", "grounding_stage2"}
    assert TASKS["detection"].template == OFFICIAL_DETECTION
    assert TASKS["grounding_stage1"].task_text(query=QUERY) == OFFICIAL_STAGE1
    assert TASKS["grounding_stage2"].task_text(query=QUERY) == OFFICIAL_STAGE2
    assert TASKS["grounding"].task_text(query=QUERY) == OFFICIAL_STAGE2  # one call asks stage 2
    assert TASKS["grounding"].stages == ("grounding_stage1", "grounding_stage2")
    assert all(spec.name == name for name, spec in TASKS.items())
    assert set(ANSWERS) == set(TASKS) == set(TASK_INPUTS)


def test_grounding_is_its_second_stage_but_for_name_title_and_stages():
    """One call of the pipeline asks its last stage: every other field is stage 2's, so the two cannot drift."""
    grounding, stage2 = TASKS["grounding"], TASKS["grounding_stage2"]
    own = {"name", "title", "stages"}
    shared = [field.name for field in dataclasses.fields(registry.TaskSpec) if field.name not in own]
    assert set(shared) >= {"template", "parameters", "official", "parse", "result_type", "serialize", "max_new_tokens",
                           "official_max_new_tokens", "answer_end", "needs_marker", "frame_labels", "parse_options"}
    for name in shared:
        assert getattr(grounding, name) == getattr(stage2, name), name
    assert (grounding.name, grounding.title) != (stage2.name, stage2.title)
    assert grounding.stages == ("grounding_stage1", "grounding_stage2") and stage2.stages == ()


@pytest.mark.parametrize("name", list(TASKS))
def test_answers_round_trip_through_serializer_and_parser(name):
    spec = TASKS[name]
    answer = ANSWERS[name]
    assert isinstance(answer, spec.result_type)
    assert spec.parse(spec.serialize(answer)) == answer


def test_detection_serializer_writes_the_official_answer_text():
    text = TASKS["detection"].serialize(ANSWERS["detection"])
    assert text == ('```json\n[\n\t{"label": "couch", "bbox_3d": [0.44, 0.08, 2.26, 0.98, 1.88, 0.83, 0.81, 1.17, 2.96]},\n'
                    '\t{"label": "pillow", "bbox_3d": [0.83, -0.0, 2.08, 0.32, 0.46, 0.33, 0.79, 1.17, 2.96]}\n]```')


def test_deprecated_names_resolve_with_a_warning_naming_the_new_one():
    assert DEPRECATED_TASK_NAMES == {"det": "detection", "frame_selection": "grounding_stage1", "caption": "captioning",
                                     "recon": "reconstruction", "pointmap": "reconstruction", "qa": "spatial_qa"}
    for old, new in DEPRECATED_TASK_NAMES.items():
        with pytest.warns(FutureWarning, match=f"task name '{old}' is deprecated; use '{new}'"):
            assert resolve_task(old) is TASKS[new]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_task("detection") is TASKS["detection"]  # canonical names never warn
    with pytest.raises(ValueError, match="unknown task 'boxes'; expected one of detection, grounding, "):
        resolve_task("boxes")
    # a spec of the other copy of the registry (remote code vs package) resolves by its name
    remote_copy = type("TaskSpec", (), {"name": "captioning"})()
    assert resolve_task(remote_copy) is TASKS["captioning"]


# ------------------------------------------------------------------------------------------- processor


@pytest.mark.parametrize("task, official", [
    ("detection", OFFICIAL_DETECTION),
    ("grounding", OFFICIAL_STAGE2),
    ("grounding_stage2", OFFICIAL_STAGE2),
    ("grounding_stage1", OFFICIAL_STAGE1),
])
def test_processor_writes_the_official_prompt_byte_for_byte(tiny_processor, task, official):
    inputs = tiny_processor(images=make_views(3), task=task, return_tensors="pt", **TASK_INPUTS[task])
    blocks = vision_blocks(inputs["image_grid_thw"])
    if task == "grounding_stage1":  # a "Frame-i: " text item before each view, the task text on a new line
        user = "".join(f"Frame-{i}: {block}" for i, block in enumerate(blocks)) + "\n" + official
    else:
        user = "".join(blocks) + official
    assert tiny_processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False) == chat(user)


@pytest.mark.parametrize("task", list(TASKS))
def test_processor_task_prompt_equals_the_training_collator_on_the_annotation_prompt(tiny_processor, task):
    """Inference (`processor(task=...)`) and training (an annotation record through the collator) read alike."""
    views = make_views(3, seed=4)
    inputs = dict(TASK_INPUTS[task])
    marker = inputs.pop("point_prompts", None)
    by_task = tiny_processor(images=views, task=task, point_prompts=marker, return_tensors="pt", **inputs)
    example = {"images": views, "prompt": TASKS[task].annotation_prompt(3, **inputs), "answer": "",
               "pixel_coords": list(marker) if marker else None}
    by_collator = GapMllmDataCollator(tiny_processor, train=False)([example])
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "geometry_pixel_values"):
        assert torch.equal(by_task[key], by_collator[key]), key


def test_free_text_prompts_work_as_before(tiny_processor):
    views = make_views(2)
    inputs = tiny_processor(images=views, text="Describe the room.", return_tensors="pt")
    blocks = vision_blocks(inputs["image_grid_thw"])
    assert tiny_processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False) == chat(
        "".join(blocks) + "Describe the room.")


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "detection", "query": "x"}, "task 'detection' takes no query"),
    ({"task": "grounding"}, r"task 'grounding' needs query="),
    ({"task": "captioning", "box": [1, 2]}, r"box must be 9 numbers"),
    ({"task": "captioning", "box": [1, 2, 3, 4, 5, 6, 7, 8, float("nan")]}, "finite"),
    ({"task": "reconstruction"}, r"pass point_prompts=\(view, x, y\)"),
    ({"task": "spatial_qa", "query": "  "}, "query must be a non-empty string"),
    ({"task": "grounding", "query": "the <image> chair"}, "must not contain '<image>'"),
    ({"task": "detection", "text": "Detect."}, "either text="),
    ({"query": "the chair"}, "query= and box= are task inputs"),
    ({"task": "boxes"}, "unknown task 'boxes'"),
])
def test_bad_task_inputs_get_one_clear_error(tiny_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor(images=make_views(2), return_tensors="pt", **kwargs)


def test_batched_task_inputs_are_one_per_sample(tiny_processor):
    views = [make_views(2, seed=1), make_views(3, seed=2)]
    batch = tiny_processor(images=views, task="grounding", query=["the chair", "the lamp"], return_tensors="pt")
    decoded = tiny_processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert "Text: the chair\n" in decoded[0] and "Text: the lamp\n" in decoded[1]
    assert batch["geometry_views_per_sample"].tolist() == [2, 3]
    with pytest.raises(ValueError, match="one query was given for 2 samples"):
        tiny_processor(images=views, task="grounding", query="the chair")


@pytest.mark.parametrize("task", list(TASKS))
def test_post_process_returns_the_typed_result_of_every_task(tiny_processor, task):
    spec = TASKS[task]
    text = spec.serialize(ANSWERS[task])
    assert tiny_processor.post_process([text, "nonsense"], task=task) == [ANSWERS[task], spec.parse("nonsense")]
    assert all(isinstance(r, spec.result_type) for r in tiny_processor.post_process([text, "nonsense"], task=task))


def test_post_process_options_and_the_older_methods(tiny_processor):
    assert tiny_processor.post_process(['{"frame": 9}'] * 2, task="grounding_stage1", num_frames=[4, 12]) == [
        FrameSelectionResult(3, "frame 9 clamped to 3 (valid range 0..3)"), FrameSelectionResult(9)]
    with pytest.raises(TypeError, match="post_process\\(task='detection'\\) takes no num_frames"):
        tiny_processor.post_process("[]", task="detection", num_frames=3)
    text = TASKS["detection"].serialize(ANSWERS["detection"])
    assert tiny_processor.post_process_detection(text) == [ANSWERS["detection"]]
    with pytest.warns(FutureWarning, match="'det' is deprecated"):
        assert tiny_processor.post_process(text, task="det") == [ANSWERS["detection"]]


# ------------------------------------------------------------------------------------------ stop rules


@pytest.mark.parametrize("text, rule, done", [
    ("\n\n\n", "dict", True),  # runaway blank lines stop every task
    ("\n \n\t\n", "list", True),
    ("\n\n", "dict", False),
    ('{"bbox_3d": [1, 2', "dict", False),
    ('{"bbox_3d": [1, 2]}', "dict", True),
    ('Sure: {"frame": 3}', "dict", True),
    ('{"label": "a}"', "dict", False),  # a bracket inside a string does not close anything
    ('{"label": "still open', "dict", False),
    ('```json\n{"bbox_3d": [1]}', "dict", False),  # fenced: wait for the closing fence or the line end
    ('```json\n{"bbox_3d": [1]}\n', "dict", True),
    ('```json\n[\n\t{"label": "a]", "bbox_3d": [1]}\n]', "list", False),
    ('```json\n[\n\t{"label": "a]", "bbox_3d": [1]}\n]```', "list", True),
    ('{"label": "a", "bbox_3d": [1]}', "list", False),  # dicts one per line: read to EOS
    ('[{"label": "a"}]', "list", True),
    ("B", "line", False),
    ("B. The chair\n", "line", True),
    ("\nB", "line", False),
    ("a wooden chair", "paragraph", False),
    ("a wooden chair.\nIt is brown.", "paragraph", False),
    ("a wooden chair.\n\n", "paragraph", True),
])
def test_answer_complete(text, rule, done):
    assert answer_complete(text, rule) is done


@pytest.mark.parametrize("task", ["detection", "grounding_stage1", "grounding_stage2", "reconstruction", "captioning",
                                  "spatial_qa"])
def test_criteria_stop_right_after_the_answer(tiny_processor, task):
    """Feed the tokens of a serialized answer followed by rambling one at a time: the criteria fire once the
    answer is complete, before any of the rambling."""
    spec = TASKS[task]
    answer = spec.serialize(ANSWERS[task])
    tokenizer = tiny_processor.tokenizer
    prompt = torch.tensor([[1, 2, 3]])
    ids = tokenizer((answer + "\n\nThe rest is rambling.\n\n\n") if task != "spatial_qa" else answer + "\nbecause",
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    criteria = AnswerEndCriteria(tokenizer, prompt.shape[1], spec.answer_end)
    stops = [k for k in range(1, ids.shape[1] + 1) if criteria(torch.cat([prompt, ids[:, :k]], dim=1))[0]]
    assert stops, "the criteria never fired"
    generated = tokenizer.decode(ids[0, : stops[0]])
    assert "rambling" not in generated and "because" not in generated
    assert spec.parse(generated) == ANSWERS[task]


def test_generation_of_a_rambling_model_stops_and_rows_stop_on_their_own(build_model, tiny_processor):
    model = build_model().eval()
    inputs = tiny_processor(images=[make_views(2, seed=5)], task="detection", return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        unbounded = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        stopped = model.generate(**inputs, **tiny_processor.generation_kwargs("detection", inputs))
    rambling = tiny_processor.decode_generated(unbounded, inputs["input_ids"])[0]
    assert unbounded.shape[1] == length + 24 and rambling.strip() == ""  # the untrained model emits blank lines
    assert stopped.shape[1] <= length + 3 and torch.equal(stopped, unbounded[:, : stopped.shape[1]])
    kwargs = tiny_processor.generation_kwargs("spatial_qa", inputs, max_new_tokens=7)
    assert kwargs["max_new_tokens"] == 7 and kwargs["do_sample"] is False
    assert tiny_processor.generation_kwargs("detection", inputs)["max_new_tokens"] == TASKS["detection"].max_new_tokens

    tokenizer = tiny_processor.tokenizer
    rows = tokenizer(['{"frame": 2}', '{"frame": '], add_special_tokens=False)["input_ids"]
    width = max(map(len, rows))
    padded = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    done = AnswerEndCriteria(tokenizer, 0, "dict")(padded)
    assert done.tolist() == [True, False]


# ----------------------------------------------------------------------------- one definition, every consumer


def test_every_consumer_uses_the_registry_objects():
    from gap_mllm import configuration_gap_mllm, modeling_gap_mllm, processing_gap_mllm, tasks_gap_mllm
    from gap_mllm.cli import evaluate as evaluate_cli
    from gap_mllm.cli import predict, space_backend, task_names
    from gap_mllm.cli import tasks as cli_tasks
    from gap_mllm.evaluation import generation, runner
    from gap_mllm.evaluation import tasks as eval_tasks
    from gap_mllm.processing import annotation_files, builders, collator
    from gap_mllm.processing.tasks import grounding as grounding_task
    from gap_mllm.training import data as training_data
    from gap_mllm.training import train_cli  # noqa: F401 - `gap-mllm train` reads data.tasks through the recipe

    spec_of = lambda spec: spec is TASKS[spec.name]  # noqa: E731 - identity with the registry's object

    assert processing_gap_mllm.resolve_task is registry.resolve_task
    assert processing_gap_mllm.render_chat_prompt is tasks_gap_mllm.render_chat_prompt is collator.render_chat_prompt
    assert modeling_gap_mllm.GEOMETRY_INPUT_NAMES is configuration_gap_mllm.GEOMETRY_INPUT_NAMES
    assert all(builder.SPEC is TASKS[name] for name, builder in builders.BUILDERS.items())
    assert training_data.builder_for_task is builders.builder_for_task
    assert builders.builder_for_task("detection").SPEC is TASKS["detection"]
    assert set(builders.BUILDERS) == {"detection", "grounding_stage1", "grounding_stage2", "captioning",
                                      "reconstruction", "spatial_qa"}
    assert all(spec_of(spec) for spec in annotation_files.TASK_FILE_TEMPLATES)
    assert grounding_task.extract_query is annotation_files.extract_query  # the description of both stages
    for name, benchmark in eval_tasks.TASKS.items():
        assert benchmark.spec is TASKS[name] and all(spec_of(spec) for spec in benchmark.stage_specs)
        # what a run reports and what training logs are declared once, on the benchmark; the headline is logged
        assert benchmark.headline[0] in benchmark.logged_metrics.values(), name
    assert eval_tasks.GroundingTask.stage_specs == (TASKS["grounding_stage1"], TASKS["grounding_stage2"])
    assert runner.get_task is eval_tasks.get_task and generation.resolve_task is registry.resolve_task
    assert all(spec_of(spec) for spec in task_names.front_end_tasks())
    assert all(spec_of(spec) for spec in space_backend.TASK_LABELS.values())
    assert cli_tasks.TaskRequest("grounding", query="x").spec is TASKS["grounding"]

    # every --task resolves through the registry, old names included (with a note on stderr)
    for module, name in ((predict, "gap-mllm predict"), (evaluate_cli, "gap-mllm evaluate")):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        task_action = next(a for a in parser._actions if a.dest == "task")
        assert task_action.type("caption") == "captioning" and task_action.type("detection") == "detection"
    with pytest.warns(FutureWarning, match="'recon' is deprecated"):
        assert eval_tasks.get_task("recon").spec is TASKS["reconstruction"]


def test_recipes_take_registry_names_and_refuse_the_pipeline():
    from gap_mllm.training.config import recipe_from_dict

    with pytest.warns(FutureWarning, match="'det' is deprecated; use 'detection'"):
        recipe = recipe_from_dict({"data": {"tasks": ["det", "grounding_stage1"]}})
    assert recipe.data.tasks == ["detection", "grounding_stage1"]
    with pytest.raises(ValueError, match="task 'grounding' has no data builder; use its stages grounding_stage1, "
                                         "grounding_stage2"):
        recipe_from_dict({"data": {"tasks": ["grounding"]}})
    with pytest.raises(ValueError, match="unknown task 'boxes'"):
        recipe_from_dict({"data": {"tasks": ["boxes"]}})


PACKAGE_DIRS = ("modeling_gap_mllm", "processing", "training", "evaluation", "cli", "tiny", "examples", "bench")
# One distinctive piece of every prompt template, and the constants that once had two definitions.
TEMPLATE_PIECES = ("Detect the 3D bounding boxes", "Localize the first clear frame", "Localize the object described",
                   "Describe the object in the 3D bounding box", "Estimate the 3D position of the point marked")
SINGLE_DEFINITIONS = {"SYSTEM_PROMPT": "tasks_gap_mllm.py", "IGNORE_INDEX": "configuration_gap_mllm.py",
                      "GEOMETRY_INPUT_NAMES": "configuration_gap_mllm.py", "IMAGE_PLACEHOLDER": "tasks_gap_mllm.py"}


def test_prompts_and_shared_constants_are_written_in_exactly_one_module():
    sources = {path: path.read_text(encoding="utf-8") for folder in PACKAGE_DIRS for path in (REPO / folder).rglob("*.py")}
    assert len(sources) > 100
    for piece in TEMPLATE_PIECES:
        holders = sorted(path.name for path, text in sources.items() if piece in text)
        assert holders == ["tasks_gap_mllm.py"], (piece, holders)
    for name, home in SINGLE_DEFINITIONS.items():
        pattern = re.compile(rf"^\s*{name}\s*(:[^=]*)?=", re.MULTILINE)
        holders = sorted(path.name for path, text in sources.items() if pattern.search(text))
        assert holders == [home], (name, holders)


@pytest.mark.parametrize("text", ["B", "B. chair", " 3.5 meters", "3.5.", "\n", "", "C\nbecause", "  a  b", "1e3 m"])
def test_spatial_answer_reads_the_word_vsi_bench_scores(text):
    """The typed spatial-QA answer is the word the VSI-Bench metric extracts (processing/tasks/spatial_qa.py)."""
    from gap_mllm.processing.tasks.spatial_qa import fuzzy_matching

    assert (TASKS["spatial_qa"].parse(text).answer or "") == fuzzy_matching(text)


def test_post_process_says_when_the_token_budget_ended_an_answer_as_the_command_line_does(tiny_processor):
    """`generate` after `generation_kwargs(max_new_tokens=...)` returned answers its budget cut (an empty list the
    grammar closed, half a caption) whose `post_process` reason was None, where `gap-mllm predict` says "budget cut"
    (cli/tasks.py `budget_cut`, the same rule)."""
    from gap_mllm.cli.tasks import BUDGET_ADVICE, budget_cut

    tokenizer = tiny_processor.tokenizer
    stop, pad = stop_token_ids(tokenizer)[0], tokenizer.pad_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = [[5, 6, 7]] * 2
    cut, whole = ids("a red ch"), ids("a red chair.\n") + [stop]
    width = max(len(cut), len(whole))
    rows = [prompt[0] + cut + [pad] * (width - len(cut)), prompt[0] + whole + [pad] * (width - len(whole))]
    results = tiny_processor.post_process(torch.tensor(rows), "captioning", input_ids=torch.tensor(prompt))
    assert [r.reason for r in results] == ["the answer was cut at its token budget", None]
    results = tiny_processor.post_process(torch.tensor(rows), "captioning", torch.tensor(prompt), max_new_tokens=width)
    assert [r.caption for r in results] == ["a red ch", "a red chair."]
    assert [r.reason for r in results] == [f"the answer was cut at its token budget of {width}", None]
    assert budget_cut(TASKS["captioning"], tokenizer, cut, len(cut), False) == (
        f"the answer was cut at its token budget of {len(cut)}; {BUDGET_ADVICE}")

    closed = ids("```json\n[\n]```") + [stop]  # the grammar closed the list for a budget below its reserve
    reserve = TASKS["detection"].entry_list.reserve
    budget = len(closed) + 4
    result, = tiny_processor.post_process([closed], "detection", max_new_tokens=budget, constrained=True)
    reason = (f"the grammar closed the list for the token budget of {budget} (it keeps the last {reserve} tokens to "
              "close it), so the answer may lack entries")
    assert (result.boxes, result.reason) == ([], reason)
    assert budget_cut(TASKS["detection"], tokenizer, closed, budget, True) == f"{reason}; {BUDGET_ADVICE}"
    assert tiny_processor.post_process([closed], "detection")[0].reason is None  # whole, and no budget to compare
    assert tiny_processor.post_process([closed], "detection", max_new_tokens=len(closed) + reserve,
                                       constrained=True)[0].reason is None  # far from its budget
    assert tiny_processor.post_process(["a red ch"], "captioning")[0].reason is None  # text: no tokens to read
