"""The plugin's lmms-eval models, registered two ways (lmms-eval 0.7.3 reads both):

- the `lmms_eval.models` entry point of this package (setup.py) names `model_manifest`;
- `LMMS_EVAL_PLUGINS=gap_mllm.evaluation.lmms_eval_plugin` makes lmms-eval read `AVAILABLE_MODELS` here and load
  `<plugin>.models.<name>.<class>`.

Nothing here imports lmms-eval or torch until a model is loaded.
"""

AVAILABLE_MODELS = {"gap_mllm": "GapMllm"}


def model_manifest():
    """The lmms-eval `ModelManifest` of the `gap_mllm` model (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=f"{__name__}.{name}.{cls}") for name, cls in AVAILABLE_MODELS.items()]
