"""`gap-mllm space`: run the Gradio Space (examples/space/app.py) locally.

    gap-mllm space                          # the embedded GAP-MLLM-Mini (--model tiny: the untrained test model)
    gap-mllm space --model org/gap-mllm     # any folder or Hub id

gradio is not a dependency of the package: it requires pillow<13 and would downgrade the main
environment's pillow (docs/transformers-notes.md §15). Install it in a separate environment
(`python examples/space/build_demo_venv.py`, then `.venv-demo/bin/python -m gap_mllm.cli.main space`) or with
`pip install "gap-mllm[demo]"` where pillow<13 is acceptable.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .argument_types import positive_int
from .command_arguments import add_free_decoding_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='a GAP-MLLM folder or Hub id; "mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model')
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="generation budget (default: each task's own; generation stops at the answer's end)")
    add_free_decoding_argument(parser)
    parser.add_argument("--concurrency", type=positive_int, default=1, help="requests run at once; the rest wait in the queue")
    parser.add_argument("--max-queue", type=positive_int, default=16, help="queued requests beyond which new ones are refused")


def gradio_missing() -> str | None:
    """The one line saying how to get gradio when it is not installed, else None (looked up, not imported: launch()
    must set GRADIO_TEMP_DIR first). `gap-mllm space` prints it; `gap-mllm demo --space` raises it from its early
    check (cli/early_checks.py), before the demo's own imports (seconds of torch and transformers)."""
    if importlib.util.find_spec("gradio") is not None:
        return None
    return ("the Space needs gradio, which is kept out of the main environment (it requires pillow<13): build the demo "
            "environment with python examples/space/build_demo_venv.py, then run .venv-demo/bin/python -m "
            "gap_mllm.cli.main space")


def main(args: argparse.Namespace) -> int:
    missing = gradio_missing()
    if missing is not None:
        print(f"gap-mllm space: error: {missing}", file=sys.stderr)
        return 2
    # here, not at the top: the Space's modules need its environment (gradio; datasets through the evaluation
    # package), so a missing gradio is the one clear line above, not an ImportError
    from .space_ui import SpaceSettings, launch

    launch(SpaceSettings(model=args.model, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency,
                         max_queue=args.max_queue, constrained=args.constrained), host=args.host, port=args.port)
    return 0
