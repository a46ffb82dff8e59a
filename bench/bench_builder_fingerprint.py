"""What the builders' content fingerprint costs: stat-only key vs content key vs preparing the builder.

    python bench/bench_builder_fingerprint.py DATA_ROOT [--repeats 5]

For every task builder of DATA_ROOT (e.g. `gap-mllm synth --preset mini --scenes 20 --out DATA_ROOT`):
    stat      a key over (size, mtime) of the referenced files, the fingerprint the builders used before
    content   `builder_cache_key` (size + xxh3-128 of every referenced file), what a builder computes each
              time it is made
    prepare   `download_and_prepare` into a fresh cache folder (once per builder)
Arms are interleaved; medians of `--repeats` runs; the last column is content / prepare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import datasets

from gap_mllm.processing import builder_fingerprint
from gap_mllm.processing.builders import BUILDERS, MultiViewConfig


def stat_key(files) -> list:
    return [(f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    print("| task | files | MB | stat ms | content ms | prepare s | content / prepare |")
    print("|---|---|---|---|---|---|---|")
    for task, builder_class in BUILDERS.items():
        builder = builder_class(data_root=args.data_root, cache_dir=tempfile.mkdtemp())
        config = MultiViewConfig(name="default", data_root=args.data_root)
        annotation_files = builder._annotation_files(config)
        records = [r for path in annotation_files.values() for r in json.loads(Path(path).read_text())]
        files = builder_fingerprint._media_files(builder.media_root, records, False, False)
        megabytes = sum(f.stat().st_size for f in files if f.exists()) / 1e6
        stat_times, content_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            stat_key(files)
            stat_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            builder_fingerprint.builder_cache_key(task, config, annotation_files, builder.media_root)
            content_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        builder.download_and_prepare()
        prepare = time.perf_counter() - start
        content = statistics.median(content_times)
        print(f"| {task} | {len(files)} | {megabytes:.1f} | {statistics.median(stat_times) * 1e3:.1f} | {content * 1e3:.1f} | "
              f"{prepare:.2f} | {content / prepare:.3f} |")


if __name__ == "__main__":
    main()
