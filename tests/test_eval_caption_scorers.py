"""Caption scoring never hangs: text is made safe for the scorers' line protocol, METEOR has a time
limit, and a scorer that dies, stalls or babbles is a `ScorerError` (fakes stand in for Java)."""

from __future__ import annotations

import os
import sys

import pytest

from gap_mllm.processing.scoring.caption_metrics import caption_scores, java_available
from gap_mllm.processing.scoring.meteor import ScorerError, meteor_score, sanitize_for_scorers

GTS = {0: ["sos a chair . eos"], 1: ["sos a table . eos", "sos the table . eos"]}
RES = {0: ["sos a chair eos"], 1: ["sos a table eos"]}


def fake(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_sanitize_replaces_line_breaks_controls_and_the_separator():
    assert sanitize_for_scorers("a chair\nnext to\r\nthe\ttable\u2028by|||the\x00door\x85 ") == "a chair next to the table by the door"
    assert sanitize_for_scorers("plain text .") == "plain text ."


@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_a_newline_in_an_answer_or_a_reference_scores_like_a_space():
    """This input hung pycocoevalcap's METEOR wrapper forever (the process never exited). One call (one
    JVM start, 20-30 s on a loaded 2-core machine): sample 0 has line breaks, sample 1 is the same text
    with spaces; every per-sample score must be equal."""
    out = caption_scores(["a brown chair\nnext to the table .", "a brown chair next to the table ."],
                         [["a brown chair next\r\nto the table ."], ["a brown chair next to the table ."]],
                         meteor=True, meteor_timeout=120)
    for metric in ("meteor", "bleu4", "rouge_l", "cider"):
        first, second = out["per_sample"][metric]
        assert first == second, metric
    assert 0.9 < out["meteor"] <= 1.0 and out["per_sample"]["meteor"][0] > 0.9


def test_a_scorer_that_exits_is_an_error():
    with pytest.raises(ScorerError, match="METEOR exited with code 3 before sending statistics for sample 1 of 2 .stderr: dying"):
        meteor_score(GTS, RES, timeout=30, command=fake("import sys; sys.stderr.write('dying\\n'); sys.exit(3)"))


def test_a_silent_scorer_is_stopped_after_the_time_limit(tmp_path):
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    with pytest.raises(ScorerError, match="METEOR sent no statistics for sample 1 of 2 within 1 s; it was stopped"):
        meteor_score(GTS, RES, timeout=1, command=fake(code))
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(int(pid_file.read_text()), 0)


def test_a_scorer_that_answers_garbage_is_an_error():
    code = "import sys\nfor line in sys.stdin:\n    print('not-a-number', flush=True)"
    with pytest.raises(ScorerError, match="answered 'not-a-number' where a sample score"):
        meteor_score(GTS, RES, timeout=30, command=fake(code))


def test_a_missing_program_is_an_error():
    with pytest.raises(ScorerError, match="cannot start METEOR"):
        meteor_score(GTS, RES, command=["/nonexistent/java-for-a-test"])


def test_the_protocol_round_trip_with_a_well_behaved_fake():
    """Per-sample stats in, one EVAL line answered by per-sample scores and the corpus score."""
    code = ("import sys\n"
            "lines = iter(sys.stdin)\n"
            "for n in range(2):\n"
            "    fields = next(lines).rstrip('\\n').split(' ||| ')\n"
            "    assert fields[0] == 'SCORE', fields\n"
            "    print(len(fields) - 2, flush=True)\n"
            "fields = next(lines).rstrip('\\n').split(' ||| ')\n"
            "assert fields[0] == 'EVAL'\n"
            "for value in fields[1:]:\n"
            "    print(float(value) / 10, flush=True)\n"
            "print(0.5, flush=True)\n")
    total, each = meteor_score(GTS, RES, timeout=30, command=fake(code))
    assert each == [0.1, 0.2] and total == 0.5  # sample 1 has two references
