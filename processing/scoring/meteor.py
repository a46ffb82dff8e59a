"""METEOR 1.5 (the jar shipped in pycocoevalcap) through a subprocess that can neither hang nor die unseen.

pycocoevalcap's `Meteor` speaks a line protocol with the Java process: one `SCORE ||| ref ||| ... |||
hypothesis` line per sample, answered by one statistics line, then one `EVAL ||| stats ||| ...` line
answered by one score per sample and the corpus score. A caption containing a line break splits a
request in two; the Java side answers the wrong number of lines (or an error), `readline` then blocks
forever, and because the wrapper holds its lock while failing, its `__del__` blocks too: the process
never exits. Here the same protocol and the same jar and options (`-stdio -l en -norm`, 2 GB heap)
are driven with a reader thread and a time limit on every answer; a dead, silent or confused scorer
is killed and becomes a `ScorerError` that says what happened.

What is sent is first made safe for the protocol by `sanitize_for_scorers` (also applied to the
other scorers' input, so all metrics see the same text).
"""

from __future__ import annotations

import collections
import queue
import re
import subprocess
import threading
from pathlib import Path

METEOR_TIMEOUT = 120.0  # seconds without an answer (JVM start + paraphrase tables take ~2-10 s)
METEOR_JAR = "meteor-1.5.jar"

# Characters that end a line for Java's `readLine` or Python's `splitlines`, and other control
# characters; the field separator "|||" of the METEOR protocol.
_LINE_BREAKS_AND_CONTROLS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_SPACES = re.compile(r" {2,}")


class ScorerError(RuntimeError):
    """A caption scorer failed (died, timed out, or answered something unreadable)."""


def sanitize_for_scorers(text: str) -> str:
    """The caption as sent to the scorers: line breaks (\\n, \\r, \\v, \\f, U+0085, U+2028, U+2029),
    tabs and every other control character become a space, the METEOR field separator "|||" becomes
    a space, runs of spaces are collapsed to one and the ends are stripped."""
    text = _LINE_BREAKS_AND_CONTROLS.sub(" ", text).replace("|||", " ")
    return _SPACES.sub(" ", text).strip()


def meteor_command() -> tuple[list[str], Path]:
    """`(argv, working folder)` of pycocoevalcap's METEOR call (same jar, heap and options)."""
    try:  # here, not at the top: pycocoevalcap is optional (the eval extra)
        import pycocoevalcap.meteor.meteor as meteor_module
    except ImportError as error:  # pragma: no cover - the eval extra installs it
        raise ScorerError("METEOR needs pycocoevalcap (pip install pycocoevalcap) and Java") from error
    folder = Path(meteor_module.__file__).resolve().parent
    return ["java", "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"], folder


class _Process:
    """A subprocess whose stdout lines arrive in a queue (a thread drains it, so writes never block on a
    full pipe) and whose last stderr lines are kept for error messages."""

    def __init__(self, command, cwd):
        try:
            self.proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        except OSError as error:
            raise ScorerError(f"cannot start METEOR ({' '.join(map(str, command[:3]))} ...): {error}") from error
        self.lines: queue.Queue = queue.Queue()
        self.stderr = collections.deque(maxlen=20)
        self.write_errors: list[BaseException] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip())

    def write(self, text: str) -> None:
        """Write in a thread: a scorer that stops reading must not block us (the read timeout fires)."""
        def run():
            try:
                self.proc.stdin.write(text.encode("utf-8"))
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as error:  # died or killed meanwhile
                self.write_errors.append(error)

        threading.Thread(target=run, daemon=True).start()

    def read(self, what: str, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise ScorerError(f"METEOR sent no {what} within {timeout:g} s; it was stopped"
                              f"{self._stderr_note()}") from None
        if line is None:
            self.proc.wait(timeout=5)
            raise ScorerError(f"METEOR exited with code {self.proc.returncode} before sending {what}"
                              f"{self._stderr_note()}")
        return line.decode("utf-8", "replace").strip()

    def _stderr_note(self) -> str:
        return f" (stderr: {' | '.join(self.stderr)})" if self.stderr else ""

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScorerError(f"METEOR answered {text[:80]!r} where {what} (a number) was expected") from None


def meteor_score(gts: dict, res: dict, timeout: float = METEOR_TIMEOUT, command=None, cwd=None) -> tuple[float, list[float]]:
    """Corpus METEOR and per-sample scores, like pycocoevalcap's `Meteor().compute_score(gts, res)`.

    Args:
        gts: `{id: [reference, ...]}`; res: `{id: [hypothesis]}` (same ids); texts already sanitised.
        timeout: seconds to wait for each answer line before the process is killed.
        command / cwd: override the Java call (tests use fakes that exit, hang or babble).
    Raises:
        ScorerError: the process could not start, exited, went silent for `timeout` s, or answered
            something that is not a number.
    """
    if gts.keys() != res.keys():
        raise ValueError("references and hypotheses must have the same ids")
    ids = list(gts)
    if not ids:
        return 0.0, []
    for i in ids:
        if len(res[i]) != 1:
            raise ValueError(f"sample {i!r} needs exactly one hypothesis, got {len(res[i])}")
    if command is None:
        command, cwd = meteor_command()
    process = _Process(command, cwd)
    try:
        process.write("".join(f"SCORE ||| {' ||| '.join(gts[i])} ||| {res[i][0]}\n" for i in ids))
        stats = [process.read(f"statistics for sample {n + 1} of {len(ids)}", timeout) for n in range(len(ids))]
        process.write("EVAL ||| " + " ||| ".join(stats) + "\n")
        scores = [_number(process.read(f"the score of sample {n + 1} of {len(ids)}", timeout), "a sample score")
                  for n in range(len(ids))]
        total = _number(process.read("the corpus score", timeout), "the corpus score")
    finally:
        process.close()
    return total, scores
