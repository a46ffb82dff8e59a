"""GAP-MLLM-Mini is known by its model card (mini/identity.py `is_gap_mllm_mini`): "mini", the shipped folder by its
path, the folder `default_model_path` assembles and a copy elsewhere are all the Mini; the tiny test model, a folder
without a card, a missing folder and an uncached Hub id are not."""

from __future__ import annotations


def test_the_mini_is_known_by_its_card_wherever_its_folder_lies(tmp_path):
    """"mini", the shipped folder by its path, the folder default_model_path assembles and a copy elsewhere are all
    GAP-MLLM-Mini (their card says so); the tiny test model and a folder without a card are not."""
    import shutil

    from gap_mllm.cli.model_source import resolve_model_source
    from gap_mllm.mini import SHIPPED_DIR, default_model_path
    from gap_mllm.mini.identity import is_gap_mllm_mini
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(SHIPPED_DIR, copy)
    for source in (resolve_model_source("mini"), str(SHIPPED_DIR), str(default_model_path()), str(copy)):
        assert is_gap_mllm_mini(source), source
    (copy / "README.md").unlink()
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    for source in (copy, tiny, tmp_path / "missing", "org/not-cached-here"):
        assert not is_gap_mllm_mini(source), source
