"""Assemble a folder that can be pushed as a Hugging Face Space as it is, for one checkpoint and one hardware.

    python examples/space/bundle_space.py --out build/space                          (or: make space-bundle)
    python examples/space/bundle_space.py --out build/space --model ORG/NAME --hardware zero-a10g

The folder is written beside OUT and renamed into place when complete (processing/output_folder.py): an earlier
bundle there is replaced, any other non-empty folder is refused unless `--overwrite` is given.

The folder gets app.py, README.md (the Space card: its front matter with `suggested_hardware` and the checkpoint
among `models`), `space_defaults.json` (the checkpoint the app runs: `GAP_MLLM_MODEL`; a Space variable of the same
name overrides it), a wheel of this checkout of gap-mllm and a requirements.txt that pins torch to the version this
checkout runs with and installs the wheel with its `space` extra (gradio, spaces, av). The package is not on PyPI, so
shipping the wheel beside the app is what makes the Space reproducible: it runs exactly the code of the checkout it
was bundled from.

Hardware: `cpu-basic` (free; CPU torch wheels keep the image small) or `zero-a10g` (ZeroGPU: torch's CUDA build from
PyPI; the request's model work runs inside `@spaces.GPU`, gap_mllm/cli/space_backend.py). The front matter only suggests
the hardware: the Space gets it when created with it (`HfApi().create_repo(..., space_hardware="zero-a10g")`) or in
its settings. Push the folder with `hf upload --repo-type space ORG/SPACE build/space .` (docs/publish.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id

from gap_mllm.cli.model_scores import held_out_scores
from gap_mllm.mini.default_model import SHIPPED_DIR
from gap_mllm.processing.output_folder import OutputFolderRefused, writing_output_folder

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
HARDWARE = ("cpu-basic", "zero-a10g")
EMBEDDED_MODELS = ("mini", "tiny")  # shipped inside the package: no Hub id
DEFAULTS_FILE = "space_defaults.json"  # read by app.py; Space variables override it
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu\n"


def check_model_id(model: str) -> str:
    """`model` as the Space will load it: "mini", "tiny" or a Hub id (a Space cannot read a folder on this machine).

    Raises:
        ValueError: naming --model, for anything else.
    """
    if model in EMBEDDED_MODELS:
        return model
    try:
        validate_repo_id(model)
    except HFValidationError as error:
        raise ValueError(f"--model {model!r}: give a Hub model id (ORG/NAME) or one of {', '.join(EMBEDDED_MODELS)}; a "
                         f"Space cannot read a folder of this machine ({error})") from None
    if "/" not in model:
        raise ValueError(f"--model {model!r}: give the Hub id with its owner (ORG/NAME)")
    return model


# The card's block of GAP-MLLM-Mini's held-out scores: its lines are the results file's, never typed in
SCORES_BEGIN = "<!-- held-out scores: written from mini/gap-mllm-mini/evaluation_results.json"
SCORES_END = "<!-- end of held-out scores -->"


def with_mini_scores(card: str, mini_folder: Path = SHIPPED_DIR) -> str:
    """`card` with its held-out-scores block (between `SCORES_BEGIN`'s line and `SCORES_END`) written from the
    Mini's `evaluation_results.json`, in the words the Space, the demo and `predict` use (cli/model_scores.py).

    Raises:
        ValueError: the card has no such block, or the folder no results file.
    """
    lines = card.split("\n")
    begin = next((i for i, line in enumerate(lines) if line.startswith(SCORES_BEGIN)), None)
    end = next((i for i, line in enumerate(lines) if line == SCORES_END), None)
    if begin is None or end is None or end < begin:
        raise ValueError(f"the Space card has no block from {SCORES_BEGIN!r}... to {SCORES_END!r}")
    # imported here: the backend brings torch and transformers (4 s), which a refused --out never needs
    from gap_mllm.cli.space_backend import SpaceSettings

    scores = held_out_scores(mini_folder, constrained=SpaceSettings.constrained)  # the decoding the Space runs
    if scores is None:
        raise ValueError(f"{mini_folder}: no evaluation_results.json to write the Space card's scores from")
    return "\n".join([*lines[:begin + 1], scores.markdown(), *lines[end:]])


def space_card(model: str, hardware: str) -> str:
    """The Space's README.md: this folder's card with the hardware and the checkpoint in its front matter and the
    Mini's held-out scores written from its results file."""
    _, front, body = with_mini_scores((HERE / "README.md").read_text(encoding="utf-8")).split("---\n", 2)
    matter = yaml.safe_load(front)
    matter["suggested_hardware"] = hardware
    if model not in EMBEDDED_MODELS:
        matter["models"] = [*matter.get("models", []), model]
        body = (f"\n**This Space runs [`{model}`](https://huggingface.co/{model})** (bundled by "
                f"examples/space/bundle_space.py; the Space variable `GAP_MLLM_MODEL` overrides it).\n" + body)
    return "---\n" + yaml.safe_dump(matter, sort_keys=False, allow_unicode=True) + "---\n" + body


def requirements(wheel: str, hardware: str) -> str:
    """requirements.txt: torch pinned to this environment's version (CPU wheels on cpu-basic), then the wheel."""
    torch_version = version("torch").split("+")[0]
    index = CPU_INDEX if hardware == "cpu-basic" else ""
    return (f"# Generated by examples/space/bundle_space.py for {hardware}: the gap-mllm wheel of the bundled checkout.\n"
            f"{index}torch=={torch_version}\n./{wheel}[space]\n")


COMMAND = "examples/space/bundle_space.py"  # the marker's name for a folder this script wrote


def bundle(out_dir: Path, model: str = "mini", hardware: str = "cpu-basic", overwrite: bool = False) -> Path:
    """Write the Space folder `out_dir` (module docstring); `overwrite` replaces a folder this script did not write.

    Raises:
        ValueError: a bad --model or --hardware, or `out_dir` holds files of its own (OutputFolderRefused).
    """
    model = check_model_id(model)
    if hardware not in HARDWARE:
        raise ValueError(f"--hardware {hardware!r}: choose from {', '.join(HARDWARE)}")
    out_dir = Path(out_dir)
    with writing_output_folder(out_dir, COMMAND, overwrite=overwrite,
                               settings={"model": model, "hardware": hardware}) as staging:
        _write_bundle(staging, model, hardware)
    return out_dir


def _write_bundle(out_dir: Path, model: str, hardware: str) -> None:
    """The files of the Space folder, into the empty folder `out_dir`."""
    shutil.copy2(HERE / "app.py", out_dir / "app.py")
    (out_dir / "README.md").write_text(space_card(model, hardware), encoding="utf-8")
    (out_dir / DEFAULTS_FILE).write_text(json.dumps({"GAP_MLLM_MODEL": model}, indent=1) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), str(REPO_ROOT)],
                   check=True)
    wheels = sorted(out_dir.glob("gap_mllm-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one gap_mllm wheel in {out_dir}, found {[w.name for w in wheels]}")
    (out_dir / "requirements.txt").write_text(requirements(wheels[0].name, hardware), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "build" / "space"),
                        help="folder to write (an earlier bundle there is replaced; any other non-empty folder is "
                             "refused unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it holds files this script "
                                                                 "did not write (they are deleted)")
    parser.add_argument("--model", default="mini", help="the checkpoint the Space runs: a Hub id (ORG/NAME), or mini "
                                                        "(default: the embedded GAP-MLLM-Mini) or tiny")
    parser.add_argument("--hardware", default="cpu-basic", choices=HARDWARE, help="the hardware the Space suggests and "
                                                                                  "the torch build it installs")
    parser.add_argument("--update-card", action="store_true", help="only rewrite the held-out scores of this folder's "
                                                                       "README.md from the Mini's evaluation_results.json")
    args = parser.parse_args()
    if args.update_card:
        (HERE / "README.md").write_text(with_mini_scores((HERE / "README.md").read_text(encoding="utf-8")), encoding="utf-8")
        print(f"{HERE / 'README.md'}: held-out scores written from {SHIPPED_DIR / 'evaluation_results.json'}")
        return 0
    try:
        folder = bundle(Path(args.out), args.model, args.hardware, overwrite=args.overwrite)
    except (ValueError, OutputFolderRefused) as error:
        parser.error(str(error))
    print(f"Space folder ready: {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
