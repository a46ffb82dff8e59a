"""The Space's memory of encoded scenes: one per session, a few sessions at most.

A Space user asks one question after another about the same upload. `SceneStore` keeps the last scene
each session encoded (`gap_mllm.generation.encode_scene`: geometry encoder, vision tower, fusion, multi-view prefill),
keyed by the exact frames, the marker and the prompt's tokens up to the last view, so the next question on
the same frames only prefills the question. A new upload, another example, a changed frame or marker
gives another key: the session's old scene is replaced (never reused for other frames). The store is
bounded by a number of sessions and a number of bytes of cached keys/values; the least recently used
sessions are dropped first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from gap_mllm.generation import encode_scene, generate, scene_prefix_length
from gap_mllm.tasks_gap_mllm import resolve_task

DEFAULT_SESSION = "default"


def scene_key(views, marker, prefix) -> str:
    """Digest of what a scene's cache depends on: every view's pixels, the marker, the scene prefix (its text, or its
    token ids)."""
    digest = hashlib.blake2b(digest_size=16)
    for view in views:
        array = np.asarray(view.convert("RGB"))
        digest.update(f"{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(repr(None if marker is None else tuple(int(v) for v in marker)).encode())
    digest.update((prefix if isinstance(prefix, str) else repr([int(i) for i in prefix])).encode())
    return digest.hexdigest()


class SceneStore:
    """The last encoded scene per session, for at most `max_sessions` sessions and `max_bytes` of cache.

    Args:
        max_sessions: sessions remembered (>= 1).
        max_bytes: bound on the cached keys/values of all sessions together; a scene larger than this on
            its own is used for its request but not kept.
    """

    def __init__(self, max_sessions: int = 8, max_bytes: int = 2 << 30):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # scenes encoded through `get_or_encode`
        self.reused = 0  # requests answered from a stored scene

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(scene.nbytes for _, scene in self._entries.values())

    def get(self, session: str | None, key: str):
        """The session's scene if it was encoded for `key`, else None (a stale one is dropped)."""
        session = session or DEFAULT_SESSION
        with self._lock:
            entry = self._entries.get(session)
            if entry is None:
                return None
            if entry[0] != key:
                del self._entries[session]  # new frames or marker: the old scene is of no use any more
                return None
            self._entries.move_to_end(session)
            return entry[1]

    def put(self, session: str | None, key: str, scene) -> None:
        session = session or DEFAULT_SESSION
        with self._lock:
            self._entries.pop(session, None)
            if scene.nbytes > self.max_bytes:
                return
            self._entries[session] = (key, scene)
            while len(self._entries) > self.max_sessions or self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    def get_or_encode(self, session: str | None, key: str, encode):
        """The session's scene for `key`, or `encode()`'s result (then stored)."""
        scene = self.get(session, key)
        if scene is not None:
            self.reused += 1
            return scene
        scene = encode()
        self.encoded += 1
        self.put(session, key, scene)
        return scene


def answer_on_stored_scene(model, processor, views, inputs, marker, task: str, max_new_tokens: int | None,
                           store: SceneStore, session: str | None, constrained: bool = False,
                           compile_decoding="off"):
    """Greedy answer to the request whose processor output is `inputs` (one sample: `views`, with `marker` painted,
    and the task's prompt; on the model's device) through the session's stored scene (encoded from `inputs` if
    needed: `encode_scene` reads the prompt up to its last view); inside the task's answer grammar with `constrained`;
    `compile_decoding` as for `gap_mllm.generation.generate`.
    The question is the rest of the same prompt, so the processor runs once per request.

    Returns:
        `(generated, question_ids, fusion_gates, image_grid_thw)`: `generated` continues `question_ids`
        (decode with `processor.decode_generated(generated, input_ids=question_ids)`).
    """
    input_ids = inputs["input_ids"]
    length = scene_prefix_length(input_ids, model.config.vision_end_token_id)
    scene = store.get_or_encode(session, scene_key(views, marker, input_ids[0, :length].tolist()),
                                lambda: encode_scene(model, **inputs, output_gates=True))
    question_ids, question_mask = input_ids[:, length:], inputs["attention_mask"][:, length:]
    # The task's budget and stop rule. Inside generate(scene=...) the sequence is the scene prefix + the
    # question (it returns only the question + the answer), so the answer starts after both.
    prompt_length = scene.prefix_ids.shape[1] + question_ids.shape[1]
    options = resolve_task(task).generation_kwargs(processor.tokenizer, prompt_length, max_new_tokens, constrained,
                                                   num_views=len(views))
    generated = generate(model, scene=scene, input_ids=question_ids, attention_mask=question_mask,
                         compile_decoding=compile_decoding, **options)
    return generated, question_ids, scene.fusion_gates, scene.image_grid_thw
