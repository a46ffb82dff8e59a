"""Drive a running Space in headless Chromium: pick a bundled example and a task, press Run, wait for
the answer, and save screenshots; prints one JSON line with what the page showed.

    python examples/space/drive_in_browser.py --url http://127.0.0.1:7860/ --out shots/ [--chromium /usr/bin/chromium]
        [--scenarios '[{"name": "upload", "files": ["a.png", "b.png"], "task": "3D visual grounding (text query)", "query": "the red chair"}]']
        (a scenario may also give "marker": "view x y")

Uses Playwright with the system Chromium (no browser download). WebGL runs on SwiftShader in
headless mode (the flags below, docs/transformers-notes.md §15); the 3D canvas needs several seconds to draw.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--hide-scrollbars"]
VIEWPORT = (1280, 800)  # a laptop's window: every frame of a request must be in sight in it (cli/frame_grid.py)


def textbox_value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def choose_dropdown(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def run_scenario(page, scenario: dict, out_dir: Path) -> dict:
    """One request through the page: inputs, Run, wait for the status line, read every output."""
    name = scenario["name"]
    if scenario.get("files"):
        choose_dropdown(page, "example", "(my uploaded files)")
        page.locator("#uploads input[type=file]").set_input_files(scenario["files"])
        # the file list shows each name as stem + suffix in separate elements
        page.locator("#uploads").get_by_text(Path(scenario["files"][-1]).stem, exact=True).first.wait_for()
    else:
        choose_dropdown(page, "example", scenario["example"])
    page.get_by_label(scenario["task"], exact=True).check()
    page.locator("#query textarea, #query input").first.fill(scenario.get("query") or "")
    page.locator("#marker textarea, #marker input").first.fill(scenario.get("marker") or "")
    previous = page.locator("#status").inner_text()
    started = time.monotonic()
    page.locator("#run").click()
    # The status line is the callback's last output; while pending, gradio overlays a timer on the old text,
    # so wait for a new text that is exactly a status line ("<task> on N frame(s); ...").
    page.wait_for_function(
        "([sel, before]) => { const t = document.querySelector(sel).innerText.trim();"
        " return t !== before && /^(detection|grounding|captioning|reconstruction) on \\d+ frame\\(s\\)/.test(t); }",
        arg=["#status", previous.strip()])
    report = {"name": name, "seconds_to_answer": round(time.monotonic() - started, 2),
              "status": page.locator("#status").inner_text(), "parsed": textbox_value(page, "parsed"),
              "raw": textbox_value(page, "raw"), "reference": textbox_value(page, "reference"),
              "gallery_images": page.locator("#frames img").count(),
              "gates_image": page.locator("#gates img").count(), "frames": frames_in_view(page)}
    canvas = page.locator("#scene3d canvas")
    canvas.wait_for()
    report["canvas"] = canvas.count()
    report["canvas_drawn_fraction"] = wait_for_canvas_drawing(page, canvas, out_dir / f"{name}_scene3d.png")
    page.screenshot(path=str(out_dir / f"{name}_page.png"), full_page=True)
    return report


# Each frame of the gallery's grid as the page lays it out, read with the page scrolled to its top: the image element's
# box in the viewport, the image's own size, its object-fit, its caption and where that starts; where the gallery's
# label ends, and whether the grid scrolls inside itself.
FRAMES_IN_VIEW = """() => {
  window.scrollTo(0, 0);
  const wrap = document.querySelector('#frames .grid-wrap');
  const label = document.querySelector('#frames [data-testid="block-label"]');
  const frames = [...document.querySelectorAll('#frames .grid-container img')].map(img => {
    const box = img.getBoundingClientRect();
    const item = img.closest('.thumbnail-item');
    const caption = item ? item.querySelector('.caption-label') : null;
    return {x: box.x, y: box.y, width: box.width, height: box.height, natural: [img.naturalWidth, img.naturalHeight],
            fit: getComputedStyle(img).objectFit, caption: caption ? caption.innerText.trim() : '',
            caption_top: caption ? caption.getBoundingClientRect().top : null};
  });
  return {viewport: [window.innerWidth, window.innerHeight], frames: frames,
          label_bottom: label ? label.getBoundingClientRect().bottom : null,
          grid_scrolls: wrap ? wrap.scrollHeight > wrap.clientHeight + 1 : null};
}"""


def frames_in_view(page) -> dict:
    """Where the gallery's frames lie on the page, once every image has loaded (`FRAMES_IN_VIEW`)."""
    page.wait_for_function("() => [...document.querySelectorAll('#frames .grid-container img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    return page.evaluate(FRAMES_IN_VIEW)


def drawn_fraction(png: Path) -> float:
    """Share of canvas pixels that differ from Model3D's clear colour (0.1, 0.1, 0.1)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    return float((np.abs(pixels - 26).sum(axis=1) > 30).mean())


def wait_for_canvas_drawing(page, canvas, png: Path, timeout_s: float = 45.0, settle_ms: int = 3000) -> float:
    """Screenshot the 3D canvas until WebGL (software-rendered, slow on a busy machine) has drawn the scene,
    then once more after it settles; returns the drawn share of the last screenshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.wait_for_timeout(1500)
        canvas.screenshot(path=str(png))
        if drawn_fraction(png) > 0.02 or time.monotonic() > deadline:
            break
    page.wait_for_timeout(settle_ms)
    canvas.screenshot(path=str(png))
    return drawn_fraction(png)


def drive(url: str, out_dir: Path, chromium: str, scenarios: list[dict], timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"url": url, "runs": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        page.locator("#run").wait_for()
        report["notice"] = page.locator("#model-notice").inner_text()
        page.screenshot(path=str(out_dir / "loaded.png"), full_page=True)
        for number, scenario in enumerate(scenarios):
            if number:  # a fresh page: the upload field would add this scenario's files to the last one's
                page.reload()
                page.locator("#run").wait_for()
            report["runs"].append(run_scenario(page, scenario, out_dir))
        browser.close()
    return report


DEFAULT_SCENARIOS = [{"name": "example_detection", "example": "synthetic room A", "task": "3D object detection"}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--scenarios", type=json.loads, default=DEFAULT_SCENARIOS,
                        help='JSON list of {"name", "example" | "files", "task", "query"}')
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args()
    report = drive(args.url, args.out, args.chromium, args.scenarios, args.timeout)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
