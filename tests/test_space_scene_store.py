"""The Space keeps the last encoded scene per session: the next question on the same frames reuses it
(same answer, no new geometry-encoder or vision-tower run); new frames replace it; the store is bounded."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.cli.scene_store import SceneStore, scene_key
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

GROUNDING = "3D visual grounding (text query)"


def fake_scene(nbytes: int):
    return SimpleNamespace(nbytes=nbytes)


def test_store_keeps_one_scene_per_session_and_drops_stale_and_old_ones():
    store = SceneStore(max_sessions=2, max_bytes=100)
    a, b, c = fake_scene(10), fake_scene(10), fake_scene(10)
    store.put("s1", "frames-1", a)
    assert store.get("s1", "frames-1") is a
    assert store.get("s2", "frames-1") is None  # sessions do not see each other's scenes
    assert store.get("s1", "frames-2") is None and len(store) == 0  # new frames: the old scene is dropped
    store.put("s1", "frames-1", a), store.put("s2", "frames-2", b)
    store.get("s1", "frames-1")  # s1 used last, so s2 is the oldest
    store.put("s3", "frames-3", c)
    assert store.get("s2", "frames-2") is None and store.get("s1", "frames-1") is a and len(store) == 2
    store.put("s4", "big", fake_scene(95))  # over the byte bound together with the others: oldest dropped
    assert len(store) == 1 and store.nbytes == 95
    store.put("s5", "huge", fake_scene(101))  # larger than the bound on its own: not kept
    assert store.get("s5", "huge") is None and len(store) == 1
    with pytest.raises(ValueError, match="max_sessions"):
        SceneStore(max_sessions=0)


def test_scene_key_follows_pixels_marker_and_prefix():
    views = [Image.new("RGB", (8, 6), (10, 20, 30)), Image.new("RGB", (8, 6), (40, 50, 60))]
    changed = [views[0], Image.new("RGB", (8, 6), (40, 50, 61))]
    keys = {scene_key(views, None, "p"), scene_key(changed, None, "p"), scene_key(views, (0, 1, 1), "p"),
            scene_key(views, None, "q"), scene_key(views[:1], None, "p")}
    assert len(keys) == 5
    assert scene_key([v.copy() for v in views], None, "p") == scene_key(views, None, "p")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("store") / "ckpt")
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=4), work_dir=tmp_path_factory.mktemp("store_out"),
                        loaded=load_model_and_processor(str(folder)))


def write_uploads(folder, seed: int) -> list[str]:
    paths = []
    for index in range(2):
        paths.append(str(folder / f"seed{seed}_frame_{index}.png"))
        pixels = np.random.default_rng(100 * seed + index).integers(0, 256, (84, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_questions_on_one_upload_reuse_the_session_scene(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    upload, other_upload = write_uploads(tmp_path, 0), write_uploads(tmp_path, 1)
    encoder_calls = []
    backend.model.geometry_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    vision_calls = []
    backend.model.model.visual.register_forward_hook(lambda *args: vision_calls.append(1))

    def ask(query, files=upload, session="alice"):
        return backend.run(files, None, GROUNDING, query=query, session=session)

    first, second = ask("the chair"), ask("the lamp by the window")
    assert (len(encoder_calls), len(vision_calls)) == (1, 1)  # the second question reused the scene
    assert backend.scenes.reused == 1
    ask("the chair", files=other_upload)  # a new upload replaces alice's scene
    assert (len(encoder_calls), len(vision_calls)) == (2, 2) and len(backend.scenes) == 1

    # the answers and gates are those of the plain path (one full generate call, the gates of its prefill)
    store, backend.scenes = backend.scenes, None
    try:
        plain = [ask("the chair", session=None), ask("the lamp by the window", session=None)]
    finally:
        backend.scenes = store
    assert [out.raw for out in plain] == [first.raw, second.raw]
    assert [out.gates_png.read_bytes() for out in plain] == [first.gates_png.read_bytes(), second.gates_png.read_bytes()]
