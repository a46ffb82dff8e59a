"""transformers' own common model and processor tests (`ModelTesterMixin`, `ProcessorTesterMixin`),
taken from the source distribution of the installed transformers version on the package index.

The wheel holds no tests; the source distribution holds `tests/test_modeling_common.py` and
`tests/test_processing_common.py` (not `ConfigTester`'s `tests/utils/`). `common_tests_folder()` downloads it once
(`pip download --no-deps --no-binary :all: transformers==<installed>`) and keeps its top-level `tests/*.py` in a
cache folder of the environment (`<venv>/gap-mllm-cache/transformers-<version>-tests`, or `~/.cache/gap-mllm/...`
outside a virtual environment): never in the checkout. `make test` runs this file first
(`python tests/transformers_common.py`), so that the test workers find the folder ready.

`load_common_tests()` imports the two modules as the package `transformers_common_tests`, with stand-ins for what
the distribution lacks: `exporters/test_export.py` and `generation/test_utils.py` (empty `ExportTesterMixin`,
`GenerationTesterMixin`: the project's own tests cover generation) and the repository's
`utils/fetch_hub_objects_for_ci.py` (`url_to_local_path` gives a local picture for an image address).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

PACKAGE = "transformers_common_tests"
MODULES = ("test_modeling_common", "test_processing_common")


def cache_folder() -> Path:
    """Where the tests of the installed transformers version are kept (see the module docstring)."""
    version = importlib.metadata.version("transformers")
    in_venv = sys.prefix != sys.base_prefix
    root = Path(sys.prefix) / "gap-mllm-cache" if in_venv else Path.home() / ".cache" / "gap-mllm"
    return root / f"transformers-{version}-tests"


def common_tests_folder() -> tuple[Path | None, str]:
    """`(folder, "")` with the distribution's top-level `tests/*.py`, downloaded if absent; `(None, reason)` when
    they cannot be had (no network, no such distribution). Concurrent callers (test workers) each download into a
    temporary folder; the first to finish renames its copy into place, the others keep it."""
    folder = cache_folder()
    if all((folder / f"{name}.py").is_file() for name in MODULES):
        return folder, ""
    version = importlib.metadata.version("transformers")
    requirement = f"transformers=={version}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                   "--no-binary", ":all:", "--retries", "1", "--timeout", "20", "--dest", work, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(work).glob("transformers-*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
            return None, (f"transformers' common tests need its {requirement} source distribution, "
                          f"not downloadable: {last}")
        extracted = Path(work) / "tests"
        extracted.mkdir()
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-<version>/tests/<name>.py
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    (extracted / parts[2]).write_bytes(archive.extractfile(member).read())
        missing = [name for name in MODULES if not (extracted / f"{name}.py").is_file()]
        if missing:
            return None, f"the {requirement} source distribution has no tests/{missing[0]}.py"
        try:
            os.replace(extracted, folder)
        except OSError:  # another worker renamed its copy first
            if not folder.is_dir():
                raise
    return folder, ""


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _local_picture(folder: Path, url: str) -> str:
    """A 64×96 picture of random colours in `folder` for an image address (`.png`, `.jpg`), else `url`."""
    if not url.endswith((".png", ".jpg")):
        return url
    import numpy as np
    from PIL import Image

    path = folder / "sample_picture.png"
    if not path.is_file():
        pixels = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        temporary = path.with_suffix(f".{os.getpid()}.png")
        Image.fromarray(pixels).save(temporary)
        os.replace(temporary, path)
    return str(path)


def load_common_tests() -> tuple[types.SimpleNamespace | None, str]:
    """`(modules, "")`: `modules.test_modeling_common` and `.test_processing_common` imported from
    `common_tests_folder()`; `(None, reason)` when it is not available."""
    folder, reason = common_tests_folder()
    if folder is None:
        return None, reason
    if PACKAGE not in sys.modules:
        package = _stub(PACKAGE)
        package.__path__ = [str(folder)]
        # modules the source distribution does not ship, imported by test_modeling_common
        for sub, mixin in (("exporters", "ExportTesterMixin"), ("generation", "GenerationTesterMixin")):
            _stub(f"{PACKAGE}.{sub}").__path__ = []
            _stub(f"{PACKAGE}.{sub}.{'test_export' if sub == 'exporters' else 'test_utils'}",
                  **{mixin: type(mixin, (), {})})
        # transformers' utils/fetch_hub_objects_for_ci.py, imported by test_processing_common: its CI downloads the
        # mixin's sample files from the Hub; here an image address becomes a local picture, others stay addresses
        if "fetch_hub_objects_for_ci" not in sys.modules:
            _stub("fetch_hub_objects_for_ci", url_to_local_path=lambda url: _local_picture(folder, url))
    modules = {name: importlib.import_module(f"{PACKAGE}.{name}") for name in MODULES}
    return types.SimpleNamespace(**modules), ""


if __name__ == "__main__":  # `make test`: fetch before the workers start; offline, the tests say why they skip
    found, why = common_tests_folder()
    print(f"transformers' common tests: {found}" if found else f"transformers' common tests skipped: {why}")
