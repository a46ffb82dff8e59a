"""Build the separate virtual environment that runs the Gradio Space locally (`.venv-demo`).

Why a second environment: gradio 6 requires `pillow<13` while the package's main environment has
pillow 13; installing gradio there would silently downgrade pillow for everything else
(docs/transformers-notes.md §15). The demo environment therefore holds gradio and its own dependencies only, and
borrows torch, transformers and the editable `gap_mllm` from the main environment through a `.pth`
file, so nothing heavy is downloaded twice.

Packages both environments need are pinned to the main environment's versions (a constraints file
from `pip freeze`), so the borrowed transformers sees the huggingface_hub / numpy it was tested with.

    python examples/space/build_demo_venv.py --main-venv .venv --demo-venv .venv-demo

Idempotent: an environment whose stamp file exists is left alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

# av: video decoding for uploaded clips; spaces: Hugging Face's ZeroGPU decorator (a no-op off ZeroGPU), which the
# Space wraps its GPU work in (gap_mllm/cli/space_gpu.py); pinned as in setup.py's "demo" extra
DEMO_REQUIREMENTS = ["gradio>=6,<7", "av>=12", "spaces==0.51.3"]
BROWSER_TEST_REQUIREMENTS = ["playwright>=1.50"]  # drives the system Chromium; no browser download
# never pin these from the main environment: gradio needs its own pillow, pip/setuptools are per-venv
NOT_CONSTRAINED = {"pillow", "pip", "setuptools", "wheel", "gap-mllm", "gap_mllm"}
STAMP = ".gap-mllm-demo-ready"


def python_of(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def site_packages_of(python: Path) -> Path:
    """The `site-packages` folder of the environment that `python` belongs to."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def constraints_from(main_python: Path) -> str:
    """`pip freeze` of the main environment, minus editable installs and the unpinnable packages."""
    frozen = subprocess.run([str(main_python), "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout
    lines = []
    for line in frozen.splitlines():
        name = line.split("==")[0].strip().lower()
        if "==" in line and name not in NOT_CONSTRAINED:
            lines.append(line.strip())
    return "\n".join(lines) + "\n"


def _missing(demo_python: Path, requirements: list[str]) -> list[str]:
    """The requirements an existing demo environment does not satisfy (one added to DEMO_REQUIREMENTS later)."""
    check = ("import sys\nfrom importlib.metadata import PackageNotFoundError, version\n"
             "from packaging.requirements import Requirement\nfor line in sys.argv[1:]:\n"
             "    req = Requirement(line)\n    try:\n        ok = req.specifier.contains(version(req.name), prereleases=True)\n"
             "    except PackageNotFoundError:\n        ok = False\n    print('' if ok else line)\n")
    out = subprocess.run([str(demo_python), "-c", check, *requirements], check=True, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line]


def build(main_venv: Path, demo_venv: Path, quiet: bool = True, browser_test: bool = False) -> Path:
    """Create `demo_venv` (if not ready) and return its python; `browser_test` adds Playwright. A ready environment
    gets what it lacks of the requirements (e.g. spaces, added after it was built).

    One builder at a time (a lock file beside the environment, `<demo_venv>.lock`): a second build started meanwhile
    (two test workers, two terminals) waits and then finds the environment ready, instead of clearing the folder
    the first one is installing into."""
    from filelock import FileLock  # huggingface_hub's requirement, so in every main environment

    with FileLock(f"{demo_venv}.lock"):
        return _build_unlocked(main_venv, demo_venv, quiet, browser_test)


def _build_unlocked(main_venv: Path, demo_venv: Path, quiet: bool, browser_test: bool) -> Path:
    demo_python = python_of(demo_venv)
    if (demo_venv / STAMP).exists() and demo_python.exists():
        missing = _missing(demo_python, DEMO_REQUIREMENTS + (BROWSER_TEST_REQUIREMENTS if browser_test else []))
        if missing:
            subprocess.run([str(demo_python), "-m", "pip", "--disable-pip-version-check", "install",
                            *(["-q"] if quiet else []), *missing], check=True)
        return demo_python
    main_python = python_of(main_venv)
    if not main_python.exists():
        raise FileNotFoundError(f"main environment not found: {main_python}")
    venv.EnvBuilder(with_pip=True, clear=demo_venv.exists()).create(demo_venv)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(constraints_from(main_python))
    # compiled afterwards on every core (compileall -j 0), not by pip one module after the other (as `make install`)
    pip = [str(demo_python), "-m", "pip", "--disable-pip-version-check", "install", "--no-compile"] + (
        ["-q"] if quiet else [])
    extra = BROWSER_TEST_REQUIREMENTS if browser_test else []
    subprocess.run(pip + ["-c", handle.name, *DEMO_REQUIREMENTS, *extra], check=True)
    demo_site = site_packages_of(demo_python)
    # like pip, passing over the few files that do not compile (templates, other Pythons' code): no check
    subprocess.run([str(demo_python), "-m", "compileall", "-qq", "-j", "0", str(demo_site)])
    # Installed AFTER gradio, so pip never saw (and never tried to replace) the main environment's packages.
    # `site.addsitedir` (not a bare path) also runs the main environment's own .pth files: that is how the
    # editable `gap_mllm` install is found.
    main_site = site_packages_of(main_python)
    (demo_site / "zz_gap_mllm_main_env.pth").write_text(
        f"import site; site.addsitedir({str(main_site)!r})\n", encoding="utf-8")
    check = "import gradio, spaces, PIL, torch, transformers, gap_mllm; print(gradio.__version__, PIL.__version__)"
    subprocess.run([str(demo_python), "-c", check], check=True)
    (demo_venv / STAMP).write_text("ok\n", encoding="utf-8")
    return demo_python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main-venv", default=".venv", type=Path)
    parser.add_argument("--demo-venv", default=".venv-demo", type=Path)
    parser.add_argument("--browser-test", action="store_true", help="also install Playwright (tests/test_space_browser.py)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    print(build(args.main_venv, args.demo_venv, quiet=not args.verbose, browser_test=args.browser_test))
    return 0


if __name__ == "__main__":
    sys.exit(main())
