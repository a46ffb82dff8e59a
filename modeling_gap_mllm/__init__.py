"""GAP-MLLM for transformers: the flat Hub folder (`trust_remote_code` copies it next to the weights).

`import gap_mllm` is light: it imports neither torch nor transformers, so that `gap-mllm --help` (whose
modules live in this namespace) answers at once. The classes below are imported on first use, and that
first use registers them with the Auto* factories (`register_auto_classes`), so that after
`from gap_mllm import GapMllmForConditionalGeneration` (or any of the classes) `AutoModel.from_pretrained(folder)`
works with or without `trust_remote_code`.
"""

import importlib

from . import moved_names

moved_names.install()  # names that moved since 0.1.0 answer with their new home, for one release

# exported class -> the module of this folder that defines it
_EXPORTS = {
    "GapMllmConfig": "configuration_gap_mllm",
    "GapMllmForConditionalGeneration": "modeling_gap_mllm",
    "GapMllmFusionConfig": "configuration_gap_mllm",
    "GapMllmGeometryConfig": "configuration_gap_mllm",
    "GapMllmGeometryEncoder": "modeling_vggt",
    "GapMllmModel": "modeling_gap_mllm",
    "GapMllmOutput": "modeling_gap_mllm",
    "GapMllmPreTrainedModel": "modeling_gap_mllm",
    "GapMllmProcessor": "processing_gap_mllm",
}

__all__ = sorted(_EXPORTS) + ["register_auto_classes"]

_registration = {"started": False}


def register_auto_classes() -> None:
    """Register the config, model and processor classes with the Auto* factories (once; later calls do nothing)."""
    if _registration["started"]:  # also while it runs: an import below may come back here
        return
    _registration["started"] = True
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    # torch and transformers come with these: imported here, not at the top, to keep `import gap_mllm` light
    from . import configuration_gap_mllm, modeling_gap_mllm, modeling_vggt, processing_gap_mllm

    GapMllmConfig = configuration_gap_mllm.GapMllmConfig
    GapMllmFusionConfig = configuration_gap_mllm.GapMllmFusionConfig
    GapMllmGeometryConfig = configuration_gap_mllm.GapMllmGeometryConfig
    GapMllmGeometryEncoder = modeling_vggt.GapMllmGeometryEncoder
    GapMllmForConditionalGeneration = modeling_gap_mllm.GapMllmForConditionalGeneration
    GapMllmProcessor = processing_gap_mllm.GapMllmProcessor
    AutoConfig.register(GapMllmGeometryConfig.model_type, GapMllmGeometryConfig, exist_ok=True)
    AutoConfig.register(GapMllmFusionConfig.model_type, GapMllmFusionConfig, exist_ok=True)
    AutoConfig.register(GapMllmConfig.model_type, GapMllmConfig, exist_ok=True)
    AutoModel.register(GapMllmGeometryConfig, GapMllmGeometryEncoder, exist_ok=True)  # the encoder loads alone too
    AutoModel.register(GapMllmConfig, GapMllmForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(GapMllmConfig, GapMllmForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(GapMllmConfig, GapMllmProcessor, exist_ok=True)
    # (the remote-code entries that save_pretrained writes are registered by each class's own module)


def __getattr__(name: str):
    """The exported classes, imported (and registered with the Auto* factories) on first use (PEP 562); a module
    that moved raises the error naming its new home (`moved_names`)."""
    if name not in _EXPORTS:
        raise moved_names.moved_module_error(__name__, name) or AttributeError(
            f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)  # imported by the registration
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
