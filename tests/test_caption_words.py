"""reports/mini/caption_words.py: the words of a SynthRooms caption read back as the generator wrote them, and the
per-arm table over constructed answer folders laid out as `python -m lab.mini --ablation` writes them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.language import captions, size_word
from gap_mllm.processing.synth.presets import synth_config

from lab.mini.ablation import ABLATION_FRESH_SEEDS
from lab.mini.fresh_seeds import seed_folder

SCRIPT = Path(__file__).resolve().parents[1] / "reports" / "mini" / "caption_words.py"
_spec = importlib.util.spec_from_file_location("caption_words", SCRIPT)
caption_words = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(caption_words)


def test_the_first_caption_of_every_generated_object_reads_back_as_its_words():
    """Every object of 12 layout scenes: the first reference caption gives back the object's category, colour,
    texture and size word exactly (the generator's own fields, not a parse of the same text)."""
    generator = SynthRooms(synth_config("mini", seed=11))
    read = 0
    for index in range(12):
        scene = generator.layout_scene(index)
        for k, obj in enumerate(scene.objects):
            words = caption_words.caption_words(captions(scene, k)[0])
            assert words == {"category": obj.category, "colour": obj.colour, "texture": obj.texture,
                             "size": size_word(obj)}
            read += 1
    assert read > 40


@pytest.mark.parametrize("text", ["a pink dresser placed against the wall.", "this is a pink dressers.",
                                  "this is a pink wobbly dresser.", "", "this is a"])
def test_a_caption_not_in_the_form_is_not_read(text):
    assert caption_words.caption_words(text) is None


def _write_arm(folder: Path, ids: list[str], answers: list[str]) -> None:
    captioning = folder / "captioning"
    captioning.mkdir(parents=True)
    rows = [{"id": i, "index": n, "raw": [a], "parsed": a, "score": 0.0} for n, (i, a) in enumerate(zip(ids, answers))]
    (captioning / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_data(folder: Path, ids: list[str], truths: list[str]) -> None:
    (folder / "annotations").mkdir(parents=True)
    records = [{"id": i, "scene_id": f"scene{n // 2}", "annotations": [truth, "another form"]}
               for n, (i, truth) in enumerate(zip(ids, truths))]
    (folder / "annotations" / "scan2cap_test_6frames.json").write_text(json.dumps(records))


def test_the_table_counts_each_word_and_pairs_every_arm_with_the_first(tmp_path, capsys):
    """Four samples in two scenes: arm "right" names every word; arm "other" gets the category of the first scene
    only, says no texture where the truth has one, and answers one sample out of the form (wrong in every word)."""
    ids = ["c0", "c1", "c2", "c3"]
    truths = ["this is a small red striped chair. it is standing in the room.",
              "this is a blue table. it is placed against the wall.",
              "this is a large green wooden bed. it is placed against the wall.",
              "this is a gray lamp. it is standing in the room."]
    other = ["this is a small red chair.", "this is a blue table.", "this is a large green wooden desk.",
             "a gray lamp."]
    run, data = tmp_path / "run", tmp_path / "data"
    _write_data(data, ids, truths)
    for seed in ABLATION_FRESH_SEEDS:
        _write_data(seed_folder(run, seed) / "data", ids, truths)
    for parent in [run / "results", *(seed_folder(run, seed) / "results" for seed in ABLATION_FRESH_SEEDS)]:
        _write_arm(parent / "right", ids, truths)
        _write_arm(parent / "other", ids, other)
    out = tmp_path / "words.json"
    tables = caption_words.main(["--run", str(run), "--data", str(data), "--arms", "right", "other",
                                 "--resamples", "200", "--out", str(out)])
    test = tables["the test split"]
    assert {kind: test["right"][kind] for kind in caption_words.WORDS} == {"category": 1.0, "colour": 1.0,
                                                                           "texture": 1.0, "size": 1.0}
    # category: c0, c1 right; colour: c0-c2; texture: c1 (plain = plain), c2; size: c0-c2
    assert {kind: test["other"][kind] for kind in caption_words.WORDS} == {"category": 0.5, "colour": 0.75,
                                                                           "texture": 0.5, "size": 0.75}
    assert test["other"]["unread"] == 1 and test["other"]["num_samples"] == 4
    category = test["other"]["category_minus_right"]
    assert category["difference"] == pytest.approx(-0.5) and category["num_groups"] == 2
    fresh = tables[f"the fresh seeds {ABLATION_FRESH_SEEDS[0]}-{ABLATION_FRESH_SEEDS[-1]}"]
    assert fresh["other"]["num_samples"] == 12 and fresh["other"]["category"] == 0.5
    assert json.loads(out.read_text())["the test split"]["other"]["unread"] == 1
    printed = capsys.readouterr().out
    assert "| other | 50.0 % (-50.0 [" in printed and "| 1 of 4 |" in printed


def test_a_reference_caption_outside_the_form_is_refused_by_its_record(tmp_path):
    data = tmp_path / "data"
    _write_data(data, ["c0"], ["a chair."])
    _write_arm(tmp_path / "run" / "results" / "right", ["c0"], ["this is a red chair."])
    with pytest.raises(ValueError, match="c0: its first reference caption is not in SynthRooms' form"):
        caption_words.arm_words("right", [("test", tmp_path / "run" / "results" / "right", data)])
