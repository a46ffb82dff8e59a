"""`gap-mllm space`: run the Gradio Space (examples/space/app.py) locally.

    gap-mllm space                          # the embedded GAP-MLLM-Mini (--model tiny: the untrained test model)
    gap-mllm space --model org/gap-mllm     # any folder or Hub id

gradio is in the package's `space` extra (`pip install -e '.[space]'`; `make install` installs it), not among its
core requirements: a plain install that only predicts needs no web server. The extra shares the package's one
environment (gradio 6 asks for pillow<13, which the package runs on: setup.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .argument_types import port_number, positive_int
from .command_arguments import SPACE_HOST, SPACE_PORT, add_free_decoding_argument, add_quantize_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='a GAP-MLLM folder or Hub id; "mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model')
    parser.add_argument("--host", default=SPACE_HOST, help=f"interface to listen on ({SPACE_HOST}: this machine only)")
    parser.add_argument("--port", type=port_number, default=SPACE_PORT, help="port to listen on (1-65535)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="generation budget (default: each task's own; generation stops at the answer's end)")
    add_free_decoding_argument(parser)
    add_quantize_argument(parser)
    parser.add_argument("--concurrency", type=positive_int, default=1, help="requests run at once; the rest wait in the queue")
    parser.add_argument("--max-queue", type=positive_int, default=16, help="queued requests beyond which new ones are refused")


def gradio_missing() -> str | None:
    """The one line saying how to get gradio when it is not installed, else None (looked up, not imported: launch()
    must set GRADIO_TEMP_DIR first). `gap-mllm space` prints it; `gap-mllm demo --space` raises it from its early
    check (cli/early_checks.py), before the demo's own imports (seconds of torch and transformers)."""
    if importlib.util.find_spec("gradio") is not None:
        return None
    return ("the Space needs gradio, which a plain install leaves out: pip install 'gap-mllm[space]' (in a checkout: "
            "pip install -e '.[space]', or make install)")


def main(args: argparse.Namespace) -> int:
    missing = gradio_missing()
    if missing is not None:
        print(f"gap-mllm space: error: {missing}", file=sys.stderr)
        return 2
    # here, not at the top: the Space's modules need its environment (gradio; datasets through the evaluation
    # package), so a missing gradio is the one clear line above, not an ImportError
    from .space_ui import SpaceSettings, launch

    launch(SpaceSettings(model=args.model, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency,
                         max_queue=args.max_queue, constrained=args.constrained, quantize=args.quantize),
           host=args.host, port=args.port)
    return 0
