"""The end of `make gpu-figures`: one table (arm, status, key figure, verdict), the kernel verdicts that decide the
CUDA defaults (training/kernels.py), and a log without its thousand repeated warnings.

    collapse_repeats(text)          each line once, in order, and one count line per line repeated 3 times or more
    key_figure(name, path)          the figure that says most of an arm's JSON, in one short line
    figures_table(summary, out)     the markdown table of the call, from its summary and the arms' JSON files
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

REPEATS_SHOWN = 3  # a line seen this often or more is kept once and counted


def collapse_repeats(text: str) -> str:
    """`text` with every repeated line kept at its first place only, and a count line for each line repeated
    `REPEATS_SHOWN` times or more (inductor's and Triton's warnings repeat once per step and layer)."""
    lines = text.splitlines()
    counts = Counter(lines)
    seen, kept = set(), []
    for line in lines:
        if counts[line] >= REPEATS_SHOWN and line in seen:
            continue
        seen.add(line)
        kept.append(line)
    notes = [f"[repeated {count} times: {line[:160]}]" for line, count in counts.items()
             if count >= REPEATS_SHOWN and line.strip()]
    return "\n".join(kept + notes) + ("\n" if text.endswith("\n") or notes else "")


def _document(path: Path) -> dict:
    """An arm's JSON file ({} when it is missing or cut off mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _train_arms(document: dict) -> str:
    parts = []
    for name, value in document.get("measurements", {}).items():
        if not name.startswith("arm_"):
            continue
        arm = name.removeprefix("arm_")
        if "error" in value:
            parts.append(f"{arm} FAILED ({value['error'].split(':')[0]})")
        elif "skipped" in value:
            parts.append(f"{arm} skipped")
        else:
            mfu = f" {value['mfu'] * 100:.1f} % MFU" if value.get("mfu") else ""
            parts.append(f"{arm} {value['median_step_s']:.3f} s{mfu}")
    return "; ".join(parts)


def _bisect(document: dict) -> str:
    measurements = document.get("measurements", {})
    finite = [n.removeprefix("config_") for n, v in measurements.items() if v.get("finite") is True]
    bad = [n.removeprefix("config_") for n, v in measurements.items() if v.get("finite") is False]
    return f"finite: {', '.join(finite) or '-'}; non-finite: {', '.join(bad) or '-'}"


def _profile(document: dict) -> str:
    parts = []
    for name, value in document.get("measurements", {}).items():
        if name.startswith("profile_") and "kernel_classes_s" in value:
            classes = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in list(value["kernel_classes_s"].items())[:4])
            parts.append(f"{value['arm']}: {value['launches_per_step']:.0f} launches/step; {classes}")
    return "; ".join(parts)


def _scanrefer_minutes(value: dict) -> str:
    estimate = value.get("scanrefer_val")
    if not estimate:
        return ""
    if "refused" in estimate:
        return "; ScanRefer val: no estimate (not a ScanRefer-shaped slice)"
    return f"; ScanRefer val {estimate['minutes_low']:.0f}-{estimate['minutes_high']:.0f} min"


def _eval_scale(document: dict) -> str:
    """bench_eval_scale.py's figures (`tasks` → task → arm): seconds per sample, the slowest stage and, for grounding,
    ScanRefer val's minutes (`bench_eval_scale.scanrefer_estimate`), the graphs its untimed run compiled and the CUDA
    graphs its timed run recorded (0 when every decode step replays one recorded before: gap_mllm/generation.py); an
    arm stopped during its timed run, by its untimed (compiling) run's figures, said so."""
    parts = []
    for task, row in document.get("tasks", {}).items():
        for arm, value in row.items():
            if isinstance(value, dict) and "per_sample_s" not in value and "untimed_run" in value:
                arm, value = f"{arm} (untimed run only, compiling included)", value["untimed_run"]
            if isinstance(value, dict) and "per_sample_s" in value:
                compiled = value.get("untimed_run", {}).get("graphs_compiled")
                recorded = value.get("cuda_graphs_recorded") if "untimed_run" in value else None
                parts.append(f"{task} {arm} {value['per_sample_s']:.2f} s/sample "
                             f"(slowest: {value.get('slowest_stage', '?')})" + _scanrefer_minutes(value)
                             + ("" if compiled is None else f"; {compiled} graphs compiled in the untimed run")
                             + ("" if recorded is None else f", {recorded} CUDA graphs recorded in the timed run"))
    return "; ".join(parts)


KEY_FIGURES = {"train_arms": _train_arms, "bisect": _bisect, "profile": _profile, "eval_scale": _eval_scale}


def key_figure(name: str, path: Path) -> str:
    """The key figure of arm `name` from its JSON file at `path` ("" when it has none)."""
    reader = KEY_FIGURES.get(name)
    return reader(_document(path)) if reader and path.exists() else ""


def switch_verdicts(out: Path) -> dict:
    """The kernel verdicts (training/kernels.py) from this call's train_arms.json; {} without it."""
    import importlib

    importlib.invalidate_caches()  # the package was installed by this process (gpu_figures.py's install step)
    from gap_mllm.training.kernels import verdicts_from_arms

    measurements = _document(out / "train_arms.json").get("measurements", {})
    return verdicts_from_arms(measurements) if measurements else {}


def figures_table(summary: dict, out: Path) -> str:
    """One markdown row per arm: status, seconds, key figure, verdict."""
    verdicts = summary.get("verdicts", {})
    rows = ["| arm | status | s | key figure | verdict |", "|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        figure = key_figure(name, out / arm["output"]) if arm.get("output") else ""
        if name == "train_arms" and verdicts:
            verdict = "; ".join(f"{switch} {'EARNED' if v['earned'] else 'not earned'}" for switch, v in verdicts.items())
        else:
            verdict = "ok" if arm["status"] == "ok" else arm["status"]
        rows.append(f"| {name} | {arm['status']} | {arm.get('seconds', '')} | {figure} | {verdict} |")
    return "\n".join(rows)
