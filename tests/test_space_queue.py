"""Several users at once: the Space's gradio queue runs requests one at a time and refuses what is
beyond `max_queue`, with a clear message.

`gap-mllm space --concurrency 1 --max-queue 2`, the console script as a user types it, runs on 127.0.0.1 in the
tests' own environment (gradio: setup.py's space extra, in the dev extra); a gradio_client script, run in a second
process, submits the requests. One at a time is checked on the server side: the server log stamps the start and end
of every request with the local clock time, and no two of these intervals may overlap."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.test_space_browser import free_port, running_app

MAX_QUEUE = 2
GAP_MLLM = Path(sys.executable).with_name("gap-mllm")  # the console script of the environment the tests run in
REQUEST = [None, "synthetic room A", "3D object detection", "", None, "", ""]  # the /run endpoint's inputs
# the server log's lines as space_ui.LOG_FORMAT writes them: "14:03:22.418 gap_mllm.space: request 3 started"
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) gap_mllm\.space: request (\d+) (started|finished)", re.MULTILINE)

CLIENT = r'''
"""Submit requests to the Space with gradio_client; print one JSON line (see test_space_queue.py)."""
import json, sys, time, urllib.error, urllib.request
from gradio_client import Client

url, phase, request = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = Client(url, verbose=False)


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(phase)
        time.sleep(0.01)


def codes(jobs):
    return [job.status().code.name for job in jobs]


def at_once():
    """Three requests: one, then two together while it runs (three together could all be waiting before the first
    is taken, one more than the queue holds: gradio then refuses the third, rightly); the queue states seen while
    they run."""
    first = client.submit(*request, api_name="/run")
    wait_until(lambda: first.done() or codes([first]) == ["PROCESSING"])
    jobs = [first, *(client.submit(*request, api_name="/run") for _ in range(2))]
    polls = []
    while not all(job.done() for job in jobs):
        polls.append(codes(jobs))
        time.sleep(0.02)
    return {"statuses": [job.result(timeout=60)[5] for job in jobs], "polls": polls}


def overflow():
    """One request running and MAX_QUEUE waiting, then one more through the HTTP API, sent when the client has seen
    the first one processing and the others queued (or the first one done: then the queue can no longer fill). Every
    request it made has ended when it returns, an accepted last one too, so that the server log holds `requests`
    intervals of this call; `refused_at` and `answered_at` bound when the server decided on the last one."""
    running = client.submit(*request, api_name="/run")
    wait_until(lambda: running.done() or codes([running]) == ["PROCESSING"])
    waiting = [client.submit(*request, api_name="/run") for _ in range(int(sys.argv[4]))]
    wait_until(lambda: running.done() or codes(waiting) == ["IN_QUEUE"] * len(waiting))
    call = urllib.request.Request(url + "gradio_api/call/run", data=json.dumps({"data": request}).encode(),
                                  headers={"Content-Type": "application/json"})
    refused_at, accepted = time.time(), None
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            accepted = json.loads(response.read())["event_id"]
        refusal = {"code": 200, "detail": "accepted"}
    except urllib.error.HTTPError as error:
        refusal = {"code": error.code, "detail": json.loads(error.read())["detail"]}
    answered_at = time.time()
    statuses = [job.result(timeout=60)[5] for job in [running, *waiting]]
    if accepted is not None:  # its stream closes when it has run
        with urllib.request.urlopen(url + f"gradio_api/call/run/{accepted}", timeout=60) as stream:
            stream.read()
    return {"refused_at": refused_at, "answered_at": answered_at, **refusal, "statuses": statuses,
            "requests": 1 + len(waiting) + (accepted is not None)}


print(json.dumps(at_once() if phase == "at_once" else overflow()))
'''


@pytest.fixture(scope="module")
def queued_space(tmp_path_factory):
    """`gap-mllm space` with one request at a time and at most MAX_QUEUE waiting."""
    folder = tmp_path_factory.mktemp("queue")
    port, log_path = free_port(), folder / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACE_ID", None)
    command = [str(GAP_MLLM), "space", "--host", "127.0.0.1", "--port", str(port),
               "--model", "tiny", "--concurrency", "1", "--max-queue", str(MAX_QUEUE), "--max-new-tokens", "8"]
    client = folder / "client.py"
    client.write_text(CLIENT)
    with running_app(command, env, log_path, port, timeout=90) as url:
        yield {"url": url, "client": client, "log": log_path, "command": command}


def test_gap_mllm_space_serves_the_page_from_the_package_environment(queued_space):
    """`gap-mllm space` runs where the package is installed: gradio comes with the package's space extra, so no
    second environment is needed (nor refused for)."""
    assert queued_space["command"][:2] == [str(GAP_MLLM), "space"]
    with urllib.request.urlopen(queued_space["url"] + "config", timeout=30) as page:  # the page's gradio config
        assert page.status == 200 and json.load(page)["title"] == "GAP-MLLM demo"
    log = queued_space["log"].read_text()
    assert "GPU: spaces 0.51.3, not on ZeroGPU: @spaces.GPU is a no-op, requests run in this process" in log
    assert "Traceback" not in log


def run_client(space, phase: str) -> dict:
    done = subprocess.run([sys.executable, str(space["client"]), space["url"], phase, json.dumps(REQUEST),
                           str(MAX_QUEUE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def clock_seconds(clock: str, now: datetime) -> float:
    """A log line's local clock time ("14:03:22.418", written before `now`) as seconds since the epoch, as time.time()
    gives them: on `now`'s day, or the day before when that would put it after `now` (a run across midnight)."""
    stamp = datetime.combine(now.date(), datetime.strptime(clock, "%H:%M:%S.%f").time())
    return (stamp - timedelta(days=1) if stamp > now + timedelta(seconds=1) else stamp).timestamp()


def request_intervals(log_text: str) -> list[tuple[float, float]]:
    """`(start, end)` of every finished request in the server log, by start time."""
    times, now = {}, datetime.now()
    for clock, number, event in LOG_LINE.findall(log_text):
        times.setdefault(int(number), {})[event] = clock_seconds(clock, now)
    return sorted((t["started"], t["finished"]) for t in times.values() if "finished" in t)


def assert_one_at_a_time(intervals) -> None:
    for (_, end), (next_start, _) in zip(intervals, intervals[1:]):
        assert next_start >= end, f"two requests overlapped: {intervals}"


def test_three_requests_two_sent_together_while_one_runs_all_complete_one_at_a_time(queued_space):
    report = run_client(queued_space, "at_once")
    assert len(report["statuses"]) == 3
    assert all(s.startswith("detection on 4 frame(s); exact synthetic geometry") for s in report["statuses"])
    # the client saw jobs wait in the queue while another ran (its view lags: the server log is the proof)
    assert any("PROCESSING" in poll and "IN_QUEUE" in poll for poll in report["polls"])
    intervals = request_intervals(queued_space["log"].read_text())
    assert len(intervals) == 3
    assert_one_at_a_time(intervals)


def test_request_beyond_max_queue_is_refused_with_a_clear_message(queued_space):
    """The request beyond the queue is refused while one request runs and MAX_QUEUE wait. The tiny model answers in
    0.3-1 s and the client sends that request about 0.15 s into the first one's run, so a slow moment of a busy
    machine can let the first one end before the server decides: then the queue had room, the attempt decides
    nothing either way (the server log says so), and it is made again, at most 3 times."""
    attempts = []
    for _ in range(3):
        before = len(request_intervals(queued_space["log"].read_text()))  # every earlier request has ended
        report = run_client(queued_space, "overflow")
        intervals = request_intervals(queued_space["log"].read_text())
        ours = intervals[before:]
        assert len(ours) == report["requests"], (report, ours)
        attempts.append({**report, "first_request": ours[0]})
        first_start, first_end = ours[0]
        if report["answered_at"] <= first_end:  # decided while the first ran and the others waited: the queue was full
            break
    else:
        pytest.fail(f"in 3 attempts the first request always ended before the last one was answered: {attempts}")
    assert report["code"] == 503, attempts
    assert report["detail"] == f"Queue is full. Max size is {MAX_QUEUE} and size is {MAX_QUEUE}."
    assert len(report["statuses"]) == 1 + MAX_QUEUE and all(s.startswith("detection") for s in report["statuses"])
    assert len(ours) == 1 + MAX_QUEUE  # the refused request never reached the backend
    assert_one_at_a_time(intervals)
    # it was refused while the first request ran and the others waited (answered before the first ended: the loop's
    # condition), not after a slot freed up
    assert first_start <= report["refused_at"]
    assert sum(start <= report["refused_at"] <= end for start, end in intervals) == 1


# ----------------------------------------------------------------- the Space from a script (last: the queue tests first)


def test_the_documented_gradio_client_call_runs_against_the_space(queued_space, capsys):
    """docs/usage.md's "The Space from a script", as written but for the Space's address: `/run` called by parameter
    name answers spatial QA on the bundled room the page opens on; `view_api` names every parameter, each with a
    default, and lists every task the command line answers, spatial QA included."""
    from gradio_client import Client

    from gap_mllm.cli.scenes import EXAMPLE_SEEDS
    from gap_mllm.cli.space_backend import TASK_LABELS
    from gap_mllm.cli.task_names import front_end_tasks

    from .test_docs_snippets import SPACE_CLIENT_HEADING, SPACE_URL, doc_snippets, run_alone

    snippets = doc_snippets()
    (snippet,) = [s for s in snippets if s.path == "docs/usage.md" and s.heading == SPACE_CLIENT_HEADING]
    assert snippet.code.count(SPACE_URL) == 1
    capsys.readouterr()
    namespace = run_alone(snippet, snippets, replace=(SPACE_URL, queued_space["url"]))
    printed = capsys.readouterr().out.splitlines()[-2:]  # (after gradio_client's "Loaded as API: ..." line)
    assert printed[0].startswith("spatial_qa on 4 frame(s); exact synthetic geometry") and printed[0] == namespace["status"]
    assert printed[1] == namespace["parsed"] and namespace["raw"] is not None
    shown = namespace["frames"]["value"]  # the gallery with its column count (the page's grid): its value
    assert [frame["caption"] for frame in shown] == [f"frame {i}" for i in range(4)]
    assert all(Path(frame["image"]).suffix == ".png" for frame in shown)

    api = Client(queued_space["url"], verbose=False).view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/run"] and not api["unnamed_endpoints"]  # the page's helpers are private
    parameters = {p["parameter_name"]: p for p in api["named_endpoints"]["/run"]["parameters"]}
    assert list(parameters) == ["frames", "example", "task", "query", "caption_object", "box", "marker"]
    assert all(p["parameter_has_default"] for p in parameters.values())
    assert parameters["example"]["parameter_default"] == next(iter(EXAMPLE_SEEDS))  # the page opens on a bundled room
    labels = {spec.name: label for label, spec in TASK_LABELS.items()}
    assert sorted(labels) == sorted(spec.name for spec in front_end_tasks()) and "spatial_qa" in labels
    assert set(parameters["task"]["type"]["enum"]) == set(labels.values())
