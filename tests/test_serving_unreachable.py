"""A server that cannot be reached is one line naming its URL and the `vllm serve` command that starts one
(docs/serving.md), from every client path: `post_chat_completion` (docs/serving.md's Python client), the server checks and
`post_json` of the lmms-eval vLLM backend, and examples/serving/openai_client.py (exit status 1, no traceback)."""

import runpy
import socket
import sys
from pathlib import Path

import pytest

from gap_mllm.serving import ServerUnreachableError, check_served_model, post_chat_completion, post_json, served_models

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "serving"
START = ("start one in the vLLM environment (make vllm-venv) on the folder `gap-mllm export-llm` wrote: vllm serve FOLDER "
         "--served-model-name {name} --port {port} --enable-mm-embeds --limit-mm-per-prompt '{{\"image\": 32, \"video\": 0}}' "
         "--chat-template-content-format openai --structured-outputs-config.backend guidance (docs/serving.md), or pass "
         "the URL of a running one")


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expected(port: int, name: str = "gap-mllm") -> str:
    return (f"http://127.0.0.1:{port}: no OpenAI-compatible server answers there ([Errno 111] Connection refused); "
            + START.format(name=name, port=port))


def test_post_chat_completion_names_the_url_and_how_to_start_a_server(closed_port):
    with pytest.raises(ServerUnreachableError) as error:
        post_chat_completion(f"http://127.0.0.1:{closed_port}", {"model": "gap-7b", "messages": []}, timeout=10)
    assert isinstance(error.value, ConnectionError)
    assert str(error.value) == expected(closed_port, "gap-7b")


def test_the_server_checks_and_post_json_say_the_same(closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    for call in (lambda: served_models(url, timeout=10), lambda: check_served_model(url, "gap-mllm", "mini"),
                 lambda: post_json(url, {"model": "gap-mllm"}, timeout=10)):
        with pytest.raises(ServerUnreachableError) as error:
            call()
        assert str(error.value) == expected(closed_port)


def test_openai_client_example_prints_one_line_and_exits_non_zero(closed_port, monkeypatch, capsys):
    script = EXAMPLES / "openai_client.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--url", f"http://127.0.0.1:{closed_port}", "--task", "grounding_stage2",
                                      "--views", "2", "--device", "cpu"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 1
    err = capsys.readouterr().err  # (after the weights' loading bar)
    assert err.splitlines()[-1] == f"openai_client.py: error: {expected(closed_port)}" and "Traceback" not in err
