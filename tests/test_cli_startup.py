"""`gap-mllm --help` and `gap-mllm COMMAND --help` answer at once: they import neither torch nor transformers (each
command's arguments are defined in a light module, cli/main.py `ARGUMENTS`); the command's own module is imported
only once its arguments parsed. `import gap_mllm` is light too; its classes (and their Auto* registration) come on
first use. Each check runs in a fresh interpreter, since this one has imported torch already."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")
# what `--help` and an argument mistake need neither: huggingface_hub (125 ms), numpy (63 ms), scipy (0.4 s), PIL; the
# early checks of a command's files, imported once its arguments parsed, bring them (cli/main.py)
START_UP = (*HEAVY, "huggingface_hub", "numpy", "scipy", "PIL")
# the commands whose task names come from the evaluation package: its metrics import numpy (not scipy)
EVALUATION_COMMANDS = ("evaluate", "export-lmms", "export-vsibench")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def heavy_modules_after(argv: list[str], hidden: tuple[str, ...] = ()) -> dict:
    """Run `gap-mllm <argv>` through `python -m gap_mllm.cli.main` in a fresh interpreter; its exit status, output
    and which of HEAVY it imported. `hidden`: packages that interpreter finds as if not installed (a None entry in
    sys.modules: importlib.util.find_spec returns None and an import raises ImportError)."""
    code = (
        "import contextlib, io, json, runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({list(hidden)!r}))\n"
        f"sys.argv = ['gap-mllm', *{argv!r}]\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "try:\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        runpy.run_module('gap_mllm.cli.main', run_name='__main__')\n"
        "    status = 0\n"
        "except SystemExit as stop:\n"
        "    status = stop.code\n"
        f"print(json.dumps({{'status': status, 'out': out.getvalue(), 'err': err.getvalue(),\n"
        f"                  'heavy': [name for name in {HEAVY!r} if name in sys.modules],\n"
        f"                  'imported': [name for name in {START_UP!r} if name in sys.modules]}}))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gap_mllm_help_imports_neither_torch_nor_transformers():
    """Nor huggingface_hub, numpy, scipy or PIL: cli/main.py imports the early checks (which read files with them)
    only once a command's arguments parsed."""
    from gap_mllm.cli.main import COMMANDS

    result = heavy_modules_after(["--help"])
    assert result["status"] == 0 and result["heavy"] == [] and result["imported"] == []
    assert all(command in result["out"] for command in COMMANDS)


@pytest.mark.parametrize("argv, message", [
    (["predict", "--taks", "detection", "--example", "synthetic room A"], "(--taks: did you mean --task?)"),
    (["predict", "--example", "synthetic room A", "--task", "grounding", "--qurey", "x"], "(did you mean --query?)"),
    (["train", "--config"], "argument --config: expected one argument"),
    (["synth", "--scenes", "many", "--out", "data/x"], "argument --scenes"),
    (["demo", "--example", "room Z"], "argument --example: invalid choice"),
])
def test_an_argument_mistake_imports_nothing_it_does_not_need(argv, message):
    result = heavy_modules_after(argv)
    assert result["status"] == 2 and message in result["err"] and result["imported"] == [], result


def test_every_command_help_imports_neither_torch_nor_transformers():
    """One interpreter asks every command for its help, in turn, and names what each one imported of torch and
    transformers (nothing)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from gap_mllm.cli.main import COMMANDS, main\n"
        "report, seen = {}, set()\n"
        f"for command in sorted(COMMANDS, key=lambda name: name in {EVALUATION_COMMANDS!r}):  # numpy last\n"
        "    out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            main([command, '--help'])\n"
        "        status = None\n"
        "    except SystemExit as stop:\n"
        "        status = stop.code\n"
        f"    heavy = [name for name in {START_UP!r} if name in sys.modules and name not in seen]\n"
        "    seen.update(heavy)\n"
        "    report[command] = {'status': status, 'usage': out.getvalue().startswith(f'usage: gap-mllm {command}'),\n"
        "                       'heavy': heavy}\n"
        "print(json.dumps(report))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    from gap_mllm.cli.main import COMMANDS

    assert set(report) == set(COMMANDS)
    expected = {command: {"status": 0, "usage": True, "heavy": ["numpy"] if command == "evaluate" else []}
                for command in COMMANDS}  # the first evaluation command imports numpy, the others find it there
    assert report == expected


def test_a_bad_argument_is_refused_before_the_command_is_imported():
    """argparse refuses a bad value with exit status 2 and one usage line, before the command's module (and torch)
    is imported."""
    result = heavy_modules_after(["evaluate", "--task", "nope", "--data", "d", "--predictions", "p.jsonl"])
    assert result["status"] == 2 and result["heavy"] == [] and result["imported"] == ["numpy"]
    assert "argument --task: 'nope' is not a task of this command; choose from detection, grounding, captioning, " \
           "reconstruction, spatial_qa" in result["err"]


def test_the_light_argument_modules_define_each_commands_arguments():
    """`ARGUMENTS` names an importable function for every command it lists, and the command's own module re-exports
    that same function as `add_arguments` (one definition; tests and standalone entry points use the module's)."""
    import importlib

    from gap_mllm.cli.main import ARGUMENTS, COMMANDS, argument_adder

    assert set(ARGUMENTS) <= set(COMMANDS)
    for command, (module_name, _) in COMMANDS.items():
        assert importlib.import_module(module_name).add_arguments is argument_adder(command), command


def test_import_gap_mllm_is_light_and_its_classes_register_on_first_use():
    code = (
        "import json, sys\n"
        "import gap_mllm, gap_mllm.training\n"
        f"light = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "exported = 'GapMllmForConditionalGeneration' in dir(gap_mllm) and 'run_training' in dir(gap_mllm.training)\n"
        "from gap_mllm import GapMllmProcessor\n"
        "from transformers import AutoConfig, AutoModel, AutoProcessor\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
        "config = AutoConfig.for_model('gap_mllm')\n"
        "from gap_mllm.training import load_recipe\n"
        "print(json.dumps({'light': light, 'exported': exported, 'config': type(config).__module__,\n"
        "                  'model': AutoModel._model_mapping[type(config)].__module__,\n"
        "                  'processor': PROCESSOR_MAPPING[type(config)] is GapMllmProcessor,\n"
        "                  'recipe': load_recipe.__module__}))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "light": [], "exported": True, "config": "gap_mllm.configuration_gap_mllm", "model": "gap_mllm.modeling_gap_mllm",
        "processor": True, "recipe": "gap_mllm.training.config"}


def test_the_startup_bench_stops_predict_at_the_model_load_and_reports_ratios():
    """bench/bench_startup.py: its `predict` arm replaces the call that reads the weights (it must still exist), and
    each arm's median is divided by `import torch`'s."""
    import importlib.util
    from pathlib import Path

    from gap_mllm.cli import predict

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_startup.py"
    spec = importlib.util.spec_from_file_location("bench_startup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert callable(predict.load_model_and_processor) and "predict.load_model_and_processor = stop" in bench.PREDICT_TO_MODEL_LOAD
    figures = bench.summary({"import torch": [2.0, 4.0, 3.0], "--help": [0.3, 0.1, 0.2]})
    assert figures["--help"]["median_s"] == 0.2 and figures["--help"]["ratio_to_import_torch"] == 0.2 / 3.0


def test_the_package_loaders_load_the_package_classes_in_a_fresh_process(tmp_path):
    """`import gap_mllm` registers nothing, so every loader of the package registers its classes before
    `from_pretrained`: in a process that imported no class, the evaluation's loader gets the package's model class, not
    the folder's remote-code copy (as when `import gap_mllm` registered them)."""
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "tiny")
    code = (
        "import json, sys\n"
        "from gap_mllm.evaluation.generation import BatchGenerator\n"
        "from gap_mllm.cli.model_source import load_pretrained\n"
        "from transformers import AutoModel\n"
        f"generator = BatchGenerator({str(folder)!r})\n"
        f"model = load_pretrained(AutoModel.from_pretrained, {str(folder)!r}, trust_remote_code=True)\n"
        "print(json.dumps([type(generator.model).__module__, type(generator.processor).__module__,\n"
        "                  type(model).__module__]))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        "gap_mllm.modeling_gap_mllm", "gap_mllm.processing_gap_mllm", "gap_mllm.modeling_gap_mllm"]


def test_synth_writes_scenes_without_importing_transformers(tmp_path):
    """SynthRooms needs numpy and PIL (and torch for the frames' alignment helpers), never transformers' image
    processing: `gap-mllm synth` once spent 2 of its 4 s importing it for a resize rule it does not use."""
    out = tmp_path / "data"
    result = heavy_modules_after(["synth", "--scenes", "1", "--val-scenes", "0", "--out", str(out), "--size", "60", "80",
                                  "--frames", "4", "--grounding-frames", "4", "--caption-frames", "4", "--qa-frames", "4"])
    assert result["status"] in (0, None), result["err"][-2000:]
    assert "transformers" not in result["heavy"], result
    assert any(out.rglob("*.jpg")) or any(out.rglob("*.png")), sorted(p.name for p in out.rglob("*"))[:20]
