"""Category lists over which detection scores are averaged (docs/method.md §6.1).

The official lists are kept verbatim, quirks included: `cate31` lists "lamp" twice (so lamp weighs
double in the cate31 mean) and spells towel "towl" (a category no ground truth carries, so it always
contributes 0). `CLEAN_SPLITS` is the consistent default: "lamp" once and "towel" spelled right,
30 entries.

Worked example (one dataset: "lamp" detected perfectly, F1 1.0; "chair" present with F1 0.0;
no other category occurs):
    official cate31 mean F1 = (1 + 1 + 0) / 31 = 0.0645   (lamp counted twice; absent categories,
                                                          "towl" included, count as 0)
    clean    cate31 mean F1 = (1 + 0) / 2  = 0.5          (mean over the entries present in the data)
A dataset that spells "towel" correctly gets credit for it only in the clean lists.
"""

from __future__ import annotations

CATE8 = ("chair", "cabinet", "table", "bin", "couch", "bed", "bathtub", "toilet")

CATE20 = (
    "chair", "pillow", "cabinet", "table", "lamp", "couch", "desk", "stand", "bed", "backpack",
    "bathtub", "ottoman", "dresser", "bin", "toilet", "refrigerator", "stove", "microwave", "monitor", "computer",
)  # fmt: skip

OFFICIAL_CATE31 = CATE20 + (
    "window", "shelf", "curtain", "plant", "stairs", "picture", "book", "bottle", "lamp", "towl", "sink",
)  # fmt: skip

CLEAN_CATE31 = CATE20 + ("window", "shelf", "curtain", "plant", "stairs", "picture", "book", "bottle", "towel", "sink")

OFFICIAL_SPLITS = {"cate8": CATE8, "cate20": CATE20, "cate31": OFFICIAL_CATE31}
CLEAN_SPLITS = {"cate8": CATE8, "cate20": CATE20, "cate31": CLEAN_CATE31}
HEADLINE_SPLIT = "cate31"  # the official headline is the mean F1 over cate31
