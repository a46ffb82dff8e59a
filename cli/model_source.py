"""`--model` as a user gives it: a local checkpoint folder or a Hub repo id, checked before loading.

transformers answers a missing folder with "Repo id must be in the form ...", an empty one with
"Unrecognized model ... Should have a `model_type` key", an offline Hub id with "We couldn't connect
to 'https://huggingface.co'", a truncated safetensors file with "Error while deserializing header"
(no file named), a pickle it refuses with a page about `weights_only`, and a checkpoint of another model
type with advice to upgrade transformers (or, for a type it knows, by loading that other model), and a
config.json whose sizes disagree with the weights (a `vocab_size` edited by hand) with a page-long load report.
`check_model_source` and `load_pretrained` turn each into one `UserError` that names the input and says
what to do; a folder whose config.json is not a GAP-MLLM one is named with the model type it holds, one whose
sizes disagree with its weights with the key and both sizes (read from the weights' headers, not the weights).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from huggingface_hub import errors as hub_errors
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from safetensors import safe_open

from gap_mllm import register_auto_classes
from gap_mllm.files import PICKLE_REFUSED
from gap_mllm.mini import default_model_path
from gap_mllm.processing.errors import exception_chain
from gap_mllm.processing.model_paths import HUB_REPO_ID, loading_bar_for, missing_local_folder
from gap_mllm.processing.path_containment import broken_link

from .errors import UserError
from .hub_files import weight_files

GAP_MLLM_MODEL_TYPE = "gap_mllm"
# The front ends' own `--model` names (cli/loading.py): the embedded GAP-MLLM-Mini, the untrained tiny test model
MINI = "mini"
TINY = "tiny"
_UNKNOWN_MODEL_TYPE = re.compile(r"has model type `([^`]*)` but Transformers does not recognize this architecture")
# config.json's sizes that the weights also hold: (key path, the tensor that holds it, its dimension there)
CONFIG_SIZE_TENSORS = (
    (("text_config", "vocab_size"), "model.language_model.embed_tokens.weight", 0),
    (("text_config", "vocab_size"), "lm_head.weight", 0),
    (("text_config", "hidden_size"), "model.language_model.embed_tokens.weight", 1),
    (("vision_config", "hidden_size"), "model.visual.patch_embed.proj.weight", 0),
    (("geometry_config", "hidden_size"), "model.geometry_encoder.aggregator.camera_token", -1),
)


def earlier_layout(keys: tuple[str, ...], tensor: str, config: dict) -> tuple[tuple[str, ...], str]:
    """`(keys, tensor)` as a folder of the earlier layout names them (Qwen3-VL's settings under `vlm_config`, its
    weights under `vlm.`, the geometry weights without `model.`): what `GapMllmConfig` and `from_pretrained` read."""
    if "vlm_config" not in config:
        return keys, tensor
    if tensor.startswith("model.geometry_"):
        return keys, tensor[len("model."):]
    return ("vlm_config", *keys), "vlm." + tensor


def not_gap_mllm_message(source: str, model_type, flag: str = "--model") -> str:
    """The UserError text for a checkpoint whose config.json holds another `model_type`."""
    found = "no model_type" if not model_type else f"model_type {model_type!r}"
    kind = f"a {model_type} checkpoint" if model_type else "not a transformers checkpoint"
    return (f"{flag} {source} is {kind}, not a GAP-MLLM one (its config.json has {found}, GAP-MLLM's is "
            f"{GAP_MLLM_MODEL_TYPE!r}); give a folder written by GapMllmForConditionalGeneration.save_pretrained, "
            "or convert a checkpoint with gap-mllm convert")


def resolve_model_source(model: str) -> str:
    """The folder or Hub id to load for a front end's `--model` value ("mini" → the embedded default)."""
    return str(default_model_path()) if model == MINI else model


def model_source_of(args, flag: str = "--model") -> str | None:
    """The folder or Hub id `args.model` names, checked (`check_model_source`): the one the command's early check
    recorded in `args.model_source` (cli/early_checks.py), else resolved and checked now; None for "tiny" (built on
    the fly) and for no model."""
    if args.model is None or args.model == TINY:
        return None
    recorded = getattr(args, "model_source", None)
    return recorded if recorded is not None else check_model_source(resolve_model_source(args.model), flag)


def check_gap_mllm_config(folder: Path, source: str, flag: str = "--model") -> dict:
    """`folder/config.json` as a dict; UserError unless it is readable JSON with `model_type` "gap_mllm"."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{flag} {source}: config.json cannot be read as JSON ({error})") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != GAP_MLLM_MODEL_TYPE:
        raise UserError(not_gap_mllm_message(source, model_type, flag))
    return config


def weight_paths(folder) -> list[Path]:
    """The safetensors files of `folder` that transformers loads as the model's weights (`hub_files.weight_files`:
    `model.safetensors`, else the shards its index names); any other `*.safetensors` there (an optimizer's, a copy,
    a stray file) is no weight of the model and is not read."""
    folder = Path(folder)
    names = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
    return [folder / name for name in weight_files(folder, names) if name.endswith(".safetensors")]


def unreadable_safetensors(folder) -> list[str]:
    """`["file: problem", ...]` for the weight files of `folder` (`weight_paths`) whose header cannot be read (a
    truncated or corrupt file); only the headers are read."""

    problems = []
    for path in weight_paths(folder):
        try:
            with safe_open(str(path), framework="np"):
                pass
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: all mean "unreadable"
            problems.append(f"{path}: {error}")
    return problems


def tensor_shapes(folder, names=None) -> dict[str, list[int]]:
    """`{name: shape}` of the tensors `names` (default: every tensor) that the weight files of `folder` hold
    (`weight_paths`), read from the files' headers (no weight is read). A file whose header cannot be read is a
    UserError naming it (safetensors' own error names none)."""
    shapes = {}
    for path in weight_paths(folder):
        try:
            with safe_open(str(path), framework="np") as weights:
                for name in weights.keys() if names is None else set(names).intersection(weights.keys()):
                    shapes[name] = list(weights.get_slice(name).get_shape())
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: all mean "unreadable"
            raise UserError(f"{path}: unreadable weights ({error}); the file is truncated or corrupt: copy or "
                            "download it again") from error
    return shapes


def check_config_sizes(folder: Path, config: dict, source: str, flag: str = "--model") -> None:
    """UserError naming the key and both sizes when a size of config.json (`CONFIG_SIZE_TENSORS`: the vocabulary,
    the hidden sizes) disagrees with the tensor of the weights that holds it; transformers would answer with a load
    report a page long."""
    sizes = [(*earlier_layout(keys, tensor, config), dimension) for keys, tensor, dimension in CONFIG_SIZE_TENSORS]
    shapes = tensor_shapes(folder, [tensor for _, tensor, _ in sizes])
    for keys, tensor, dimension in sizes:
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not shapes.get(tensor) or not isinstance(value, int):
            continue  # a size config.json leaves to its default, or a tensor these weights do not hold
        held = shapes[tensor][dimension]
        if value != held:
            raise UserError(f"{flag} {source}: config.json's {'.'.join(keys)} is {value} but the weights' {tensor} "
                            f"has {held} (shape {shapes[tensor]}); the config does not belong to these weights: "
                            "restore the config.json saved with them")


def check_model_source(source, flag: str = "--model") -> str:
    """`source` as a string if it can be loaded as far as can be told without loading it; else a
    UserError: no such folder, a symbolic link loop or a link to nothing, an empty folder or one without config.json, a config.json of another model
    type (named), a truncated safetensors file (named), a config.json whose sizes disagree with the weights (the
    key and both sizes named), a file where a folder is expected, or a Hub id that is not in the local cache while
    the Hub is unreachable by choice (HF_HUB_OFFLINE)."""
    text = str(source)
    path = Path(text).expanduser()
    leads_nowhere = broken_link(path)
    if leads_nowhere is not None:  # not "no such folder", nor taken for a Hub repo id
        raise UserError(f"{flag} {text}: this is {leads_nowhere}; give the checkpoint folder itself or a Hub repo id")
    if path.is_dir():
        if not any(path.iterdir()):
            raise UserError(f"{flag} {text}: the folder is empty; give a checkpoint folder written by "
                            "model.save_pretrained + processor.save_pretrained, or a Hub repo id")
        if not (path / "config.json").is_file():
            raise UserError(f"{flag} {text}: the folder has no config.json, so it is not a saved checkpoint "
                            "(model.save_pretrained writes one)")
        config = check_gap_mllm_config(path, text, flag)
        problems = unreadable_safetensors(path)
        if problems:
            raise UserError(f"{flag} {text}: unreadable weights ({'; '.join(problems)}); the file is truncated or "
                            "corrupt: copy or download it again")
        check_config_sizes(path, config, text, flag)
        return text
    if path.exists():
        raise UserError(f"{flag} {text}: this is a file; give the checkpoint FOLDER (config.json + weights) or a Hub repo id")
    missing = missing_local_folder(text)
    if missing is not None:
        why = "not a Hub repo id of the form org/name" if not HUB_REPO_ID.match(text) else \
            f"its folder {missing.parent} is here, so it is not taken for a Hub repo id"
        raise UserError(f"{flag} {text}: no such folder {missing} ({why})")
    if is_offline_mode():

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise UserError(f"{flag} {text}: no network (HF_HUB_OFFLINE is set) and the repository is not in the "
                            "local Hub cache; download it once with network, or give a local folder")
    return text


def hub_error_message(error: BaseException, source: str, flag: str = "--model") -> str | None:
    """A one-line explanation of a Hub failure found in `error`'s cause chain, or None."""
    for link in exception_chain(error):
        if isinstance(link, hub_errors.GatedRepoError):
            return f"{flag} {source}: the repository is gated; accept its terms on the Hub and log in (hf auth login)"
        if isinstance(link, hub_errors.RepositoryNotFoundError):
            return f"{flag} {source}: no such Hub repository (or it is private: log in with hf auth login)"
        if isinstance(link, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)):
            return (f"{flag} {source}: no network and the repository is not in the local Hub cache; "
                    "connect once to download it, or give a local folder")
    return None


def load_pretrained(loader, source, flag: str = "--model", checked: bool = False, **kwargs):
    """`loader(source, **kwargs)` (e.g. `AutoModel.from_pretrained`) after `check_model_source` (not again when
    `checked`: the caller checked `source` already), with the remaining load failures (refused pickle, Hub errors,
    unreachable Hub) turned into UserErrors. The package's classes are registered first, so they load a GAP folder
    (not its remote-code copy)."""
    text = str(source) if checked else check_model_source(source, flag)
    register_auto_classes()
    try:
        with loading_bar_for(text):  # no progress bar for a small local checkpoint (GAP-MLLM-Mini)
            return loader(text, **kwargs)
    except ValueError as error:  # a Hub checkpoint of a type transformers does not know: it advises upgrading
        unknown = _UNKNOWN_MODEL_TYPE.search(str(error))
        if unknown is None:
            raise
        raise UserError(not_gap_mllm_message(text, unknown.group(1), flag)) from error
    except RuntimeError as error:  # a size of config.json that `check_config_sizes` does not know: after the report
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise UserError(f"{flag} {text}: the weights' shapes disagree with config.json (the load report above lists "
                        "them); the config does not belong to these weights: restore the config.json saved with them"
                        ) from error
    except pickle.UnpicklingError as error:
        files = ", ".join(str(p) for p in sorted(Path(text).glob("*.bin"))) if Path(text).is_dir() else text
        raise UserError(f"{flag} {text}: {files or 'a .bin file'}: {PICKLE_REFUSED}") from error
    except OSError as error:
        message = hub_error_message(error, text, flag)
        if message is None and "couldn't connect to" in str(error):
            message = (f"{flag} {text}: the Hub cannot be reached and the repository is not in the local cache; "
                       "connect once to download it, or give a local folder")
        if message is None:
            raise
        raise UserError(message) from error
