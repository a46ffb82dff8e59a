"""Task prompts, verbatim from the official code where it is public (method.md §3).

`<image>` is the per-frame placeholder of the official annotation files: one per frame in the first
human turn, replaced by the vision placeholder when the sample is fed to the model. The prompt
functions below return the human-turn text *with* those placeholders, as the official JSONs store it.
Wording that is not public (pre-training, captioning, spatial QA) is ours and marked as such.
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"

DETECTION_PROMPT = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame.\n"
    'Output a json list where each entry contains the object name in "label" and its 3D bounding box in "box_3d".\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)

GROUNDING_STAGE1_TEMPLATE = (
    "Localize the first clear frame in the video showing the object described in the text.\n"
    "Text: {description}\n"
    'Output a JSON dictionary with the frame index in "frame".\n'
)

GROUNDING_STAGE2_TEMPLATE = (
    "Localize the object described in the text.\n"
    "Text: {description}\n"
    'Output a JSON dictionary with the matched object\'s 3D bounding box in "bbox_3d" in the camera coordinate system of the first frame.\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll].\n"
)

# Not public (method.md §2.1, §10.1): our wording. The marker is the red "+" painted by the processor.
RECONSTRUCTION_PROMPT = (
    'Estimate the 3D position of the point marked with a red "+" in the camera coordinate system of the first frame, '
    "and name what it lies on.\n"
    'Output a JSON dictionary with the point [x, y, z] in "pointmap" and its semantic label in "label".'
)

# Not public (method.md §3.4): our wording, with the proposal box in the detection box format.
CAPTION_TEMPLATE = (
    "Describe the object in the 3D bounding box {box} in the camera coordinate system of the first frame.\n"
    "The 3D bounding box format is [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)


def with_images(num_images: int, text: str) -> str:
    """`<image>` x N followed by the task text (the official human-turn layout)."""
    return IMAGE_PLACEHOLDER * num_images + text


def detection_prompt(num_images: int) -> str:
    return with_images(num_images, DETECTION_PROMPT)


def grounding_stage1_prompt(num_images: int, description: str) -> str:
    """`Frame-0: <image>Frame-1: <image>...` then the stage-1 task text (method.md §3.3)."""
    frames = "".join(f"Frame-{i}: {IMAGE_PLACEHOLDER}" for i in range(num_images))
    return frames + "\n" + GROUNDING_STAGE1_TEMPLATE.format(description=description)


def grounding_stage2_prompt(num_images: int, description: str) -> str:
    return with_images(num_images, GROUNDING_STAGE2_TEMPLATE.format(description=description))


def reconstruction_prompt(num_images: int) -> str:
    return with_images(num_images, RECONSTRUCTION_PROMPT)


def caption_prompt(num_images: int, box_values) -> str:
    """Captioning prompt; `box_values` (9 numbers) are printed with 2 decimals like the targets."""
    box = "[" + ", ".join(repr(round(float(v), 2)) for v in box_values) + "]"
    return with_images(num_images, CAPTION_TEMPLATE.format(box=box))


def extract_description(prompt: str) -> str:
    """The referring text between `Text:` and `Output a JSON` (the official extraction, §3.3)."""
    start, end = prompt.find("Text:"), prompt.find("Output a JSON")
    if start < 0 or end < 0 or end < start:
        raise ValueError("prompt has no 'Text: ... Output a JSON' description")
    return prompt[start + len("Text:") : end].strip()


def split_image_placeholders(prompt: str) -> list[str]:
    """Text segments around the `<image>` placeholders: len = number of placeholders + 1."""
    return prompt.split(IMAGE_PLACEHOLDER)
