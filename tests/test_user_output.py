"""What a user reads: no noise on save, answers instead of blank lines, pictures that explain themselves."""

import logging

import transformers


def test_saving_logs_no_default_sub_config_notices(tmp_path, build_model, tiny_processor):
    """transformers diffs a config against a throwaway default on every save; for the nested Qwen3-VL config
    that default used to log "`vision_config` is None, initializing ..." at INFO level (training runs log
    at INFO, so every checkpoint printed it)."""
    model = build_model()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_info()
    library_logger.addHandler(handler)
    try:
        model.save_pretrained(tmp_path)
        tiny_processor.save_pretrained(tmp_path)
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(previous)
    messages = [record.getMessage() for record in records]
    assert any("Configuration saved" in m for m in messages)  # the handler did see the save's INFO records
    assert not [m for m in messages if "is None, initializing" in m]
    # A notice about a config the user really built without a sub-config still comes through.
    records.clear()
    transformers.logging.set_verbosity_info()
    library_logger.addHandler(handler)
    try:
        transformers.Qwen3VLConfig()
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(previous)
    assert any("`vision_config` is None" in record.getMessage() for record in records)
