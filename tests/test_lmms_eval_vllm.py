"""The lmms-eval plugin's backend=vllm, for real on the CPU: lmms-eval's evaluator, the `gap_mllm` model with its
encoder half in this process, and an OpenAI-compatible server on 127.0.0.1 that does what vLLM 0.33.0 does with the
requests (tests/engine_stand_in.py: a STOCK transformers Qwen3-VL serving the folder `gap-mllm export-llm` writes).
GAP-MLLM-Mini answers through both backends; the answers and scores must be the same."""

import socket

import pytest

from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS
from gap_mllm.evaluation.lmms_eval_plugin.documents import documents_for, request_for
from gap_mllm.evaluation.lmms_eval_plugin.models.gap_mllm import GapMllm
from gap_mllm.evaluation.lmms_eval_plugin.vllm_backend import VllmAnswerer
from gap_mllm.mini import default_model_path
from gap_mllm.serving import export_llm_folder
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1, SPATIAL_QA
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .engine_stand_in import EngineStandIn
from .test_lmms_eval_plugin import DOCS_PER_TASK, _answers, _evaluate, exported  # noqa: F401  (module fixture)

# enough for stage 1's '{"frame": k}' and its <|im_end|>; the longer answers are cut by the budget on both backends
MAX_NEW_TOKENS = 10


@pytest.fixture(scope="module")
def mini_export(tmp_path_factory):
    return export_llm_folder(default_model_path(), tmp_path_factory.mktemp("served") / "gap-mllm-mini-llm").path


@pytest.fixture(scope="module")
def server(mini_export):
    with EngineStandIn(mini_export, served_model_name="gap-mllm") as running:
        yield running


def _scores(results, task) -> dict:
    return {key: value for key, value in results["results"][task].items() if key != "alias"}


def test_vllm_backend_gives_the_hf_backend_answers_and_scores(synth_data, exported, server, tmp_path, monkeypatch):  # noqa: F811
    tasks = list(LMMS_TASKS)  # ScanRefer (both stages), Scan2Cap, detection, spatial QA
    common = f"pretrained=mini,max_new_tokens={MAX_NEW_TOKENS},device=cpu"
    hf = _evaluate("gap_mllm", tasks, exported, DOCS_PER_TASK, tmp_path / "hf", monkeypatch, model_args=common, batch_size=2)
    served_before = len(server.completions)
    vllm = _evaluate("gap_mllm", tasks, exported, DOCS_PER_TASK, tmp_path / "vllm", monkeypatch, batch_size=2,
                     model_args=f"{common},backend=vllm,base_url={server.url},served_model_name=gap-mllm,max_concurrency=4")
    for task in tasks:
        answers = _answers(vllm, task)
        assert len(answers) == DOCS_PER_TASK and answers == _answers(hf, task), task
        assert _scores(vllm, task) == _scores(hf, task), task
    # every model call went to the server: two stages for ScanRefer, one for the others
    completions = server.completions[served_before:]
    assert len(completions) == DOCS_PER_TASK * (len(tasks) + 1)
    # where the server wrote on after an answer's end (it stops only at <|im_end|> or the budget), the client cut the
    # answer where the HF backend's stop rule stopped; whether the Mini writes on depends on its weights, so the cut
    # rule itself is proven on fixed token ids (tests/test_serving_client.py)
    answered = {text for task in tasks for texts in _answers(vllm, task).values() for text in texts}
    cut = [c["content"] for c in completions if c["content"] not in answered]
    assert all(any(c.startswith(a) and len(c) > len(a) for a in answered) for c in cut), cut
    # real captions that share words with the references (ROUGE-L: CIDEr's idf is 0 for words every reference of
    # a 2-document corpus holds, so it can be 0 on such a slice)
    assert vllm["results"]["gap_scan2cap"]["rouge_l@0.5,none"] > 0


def test_vllm_backend_refuses_an_unreachable_server():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ConnectionError, match=f"{url}: no OpenAI-compatible server answers"):
        GapMllm(pretrained="mini", backend="vllm", base_url=url)
    with pytest.raises(ValueError, match="needs base_url"):
        GapMllm(pretrained="mini", backend="vllm")
    with pytest.raises(ValueError, match="base_url, max_concurrency belong to backend=vllm"):
        GapMllm(pretrained="mini", base_url=url, max_concurrency=2)


def test_vllm_backend_refuses_another_model(server, tmp_path):
    with pytest.raises(ValueError, match="serves 'gap-mllm', not 'gap-7b'"):
        GapMllm(pretrained="mini", backend="vllm", base_url=server.url, served_model_name="gap-7b")
    # a server holding the export of another GAP checkpoint (same folder layout, other weights)
    other = save_tiny_checkpoint(tmp_path / "tiny-gap")
    with EngineStandIn(export_llm_folder(other, tmp_path / "tiny-llm").path) as tiny_server:
        with pytest.raises(ValueError, match="exported from other weights than"):
            GapMllm(pretrained="mini", backend="vllm", base_url=tiny_server.url)


def test_vllm_backend_reports_http_errors_with_status_body_and_sample(synth_data, mini_export):  # noqa: F811
    doc = documents_for("spatial_qa", synth_data, limit=1)[0]
    with EngineStandIn(mini_export, max_model_len=64) as short_context:  # vLLM's --max-model-len 64
        answerer = VllmAnswerer(str(default_model_path()), short_context.url, max_new_tokens=4)
        with pytest.raises(RuntimeError, match=r"HTTP 400: .*exceeds model's maximum context length \(64\)") as raised:
            answerer.answer_stages(lambda i, stage, previous: request_for(doc, stage, previous), [0], 1, {0: doc["id"]})
    assert f"sample {doc['id']!r}, stage 1" in "".join(raised.value.__notes__)


def test_constrained_answers_are_the_same_through_vllm_structured_outputs(synth_data, exported, server, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    """`constrained=true`: the HF backend decodes inside each task's grammar (a logits processor), the vLLM
    backend sends the same grammar as the request's `structured_outputs.grammar`, which the stand-in applies with
    llguidance as vLLM's guidance backend does; the answers are the same, each of the budget's grammar (stage 1's answers whole)."""
    tasks = ["gap_scanrefer", "gap_spatial_qa"]
    common = "pretrained=mini,max_new_tokens=12,device=cpu,constrained=true"
    hf = _evaluate("gap_mllm", tasks, exported, DOCS_PER_TASK, tmp_path / "hf", monkeypatch, model_args=common)
    served_before = len(server.completions)
    vllm = _evaluate("gap_mllm", tasks, exported, DOCS_PER_TASK, tmp_path / "vllm", monkeypatch,
                     model_args=f"{common},backend=vllm,base_url={server.url},served_model_name=gap-mllm")
    # the server is shared by the module's tests: count this evaluation's requests only
    assert len(server.completions) - served_before == DOCS_PER_TASK * 3  # two ScanRefer stages, one spatial question
    for task in tasks:
        assert _answers(vllm, task) == _answers(hf, task), task
    for texts in _answers(vllm, "gap_scanrefer").values():
        assert GROUNDING_STAGE1.parse(texts[0]).reason is None, texts  # '{"frame": k}' fits 12 tokens
    for (text,) in _answers(vllm, "gap_spatial_qa").values():
        assert SPATIAL_QA.parse(text).reason is None and SPATIAL_QA.parse(text).answer == text, text
