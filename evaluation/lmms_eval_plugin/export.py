"""`gap-mllm export-lmms`: write the lmms-eval tasks of a data root (SynthRooms or the ScanNet posed_images layout).

    gap-mllm export-lmms --data DATA --out lmms_tasks [--split val] [--tasks gap_scanrefer,gap_det]
                         [--limit N] [--official-compat] [--no-meteor] [--overwrite]

For each task: `<out>/<task>.jsonl` (the documents, documents.py) and `<out>/<task>.yaml` (the task YAML, `task_yaml`,
with `dataset_kwargs.data_files` pointing at the documents, a path relative to the YAML, which lmms-eval resolves
against the YAML's folder), plus `<out>/gap_mllm.yaml`, the group of the tasks written. Then
`python -m lmms_eval --include_path <out> --tasks gap_mllm ...`. Frame paths in the documents are absolute: the
data root must stay where it was when exported.

`<out>` is written whole, as every writer of a folder writes it (processing/output_folder.py): beside it, then
renamed into place, marked as this command's; a folder this command did not write (the user's files) is refused
unless `--overwrite` replaces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gap_mllm.processing.output_folder import writing_output_folder

from . import GROUP, LMMS_TASKS, task_yaml
from .documents import documents_for
from .export_arguments import add_arguments  # noqa: F401 - the command's add_arguments


def data_files_block(documents_file: str) -> str:
    return f"dataset_kwargs:\n  data_files:\n    test: {documents_file}\n"


COMMAND = "gap-mllm export-lmms"  # the marker of a folder this command wrote


def export_tasks(data_dir, out_dir, split: str = "val", tasks=None, limit: int | None = None,
                 official_compat: bool = False, meteor: bool | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write the documents and task YAMLs of `tasks` (default: all; an empty list is refused, it would write a
    group of no task) into the folder `out_dir` (module docstring: `overwrite` replaces a folder of other files);
    returns `{task: number of documents}`.

    Raises:
        OutputFolderRefused: `out_dir` holds files this command did not write, and no `overwrite`.
    """
    tasks = list(LMMS_TASKS) if tasks is None else list(tasks)
    if not tasks:
        raise ValueError(f"no task named: choose one or more of {', '.join(LMMS_TASKS)} (or leave tasks out for all)")
    unknown = [t for t in tasks if t not in LMMS_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(LMMS_TASKS)}")
    settings = {"data": str(data_dir), "split": split, "tasks": tasks, "limit": limit}
    with writing_output_folder(out_dir, COMMAND, overwrite=overwrite, settings=settings) as staging:
        counts = {}
        for task in tasks:
            documents = documents_for(LMMS_TASKS[task], data_dir, split, official_compat=official_compat,
                                      meteor=meteor, limit=limit)
            if not documents:
                raise ValueError(f"{task}: the {LMMS_TASKS[task]} annotation file of split {split!r} under {data_dir} "
                                 "has no records")
            with open(staging / f"{task}.jsonl", "w", encoding="utf-8") as handle:
                for document in documents:
                    handle.write(json.dumps(document) + "\n")
            (staging / f"{task}.yaml").write_text(task_yaml(task) + data_files_block(f"{task}.jsonl"), encoding="utf-8")
            counts[task] = len(documents)
        group = [f"group: {GROUP}", "task:", *(f"  - {task}" for task in tasks)]
        (staging / f"{GROUP}.yaml").write_text("\n".join(group) + "\n", encoding="utf-8")
    return counts


def main(args: argparse.Namespace) -> int:
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r}: no task named; choose one or more of {', '.join(LMMS_TASKS)}, "
                         "comma-separated (or leave --tasks out for all)")
    counts = export_tasks(args.data, args.out, args.split, tasks, args.limit, args.official_compat,
                          meteor=False if args.no_meteor else None, overwrite=args.overwrite)
    for task, count in counts.items():
        print(f"{task}: {count} documents -> {Path(args.out) / (task + '.yaml')}")
    print(f"lmms-eval: --include_path {args.out} --tasks {','.join(counts)} (or the group {GROUP})")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="gap-mllm export-lmms", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
