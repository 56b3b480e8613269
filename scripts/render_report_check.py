"""Check that a run's report.html renders: parse it, decode every embedded PNG, and — when a headless
Chromium is installed — take a screenshot and check it is not blank.

    python scripts/render_report_check.py runs/quickstart/report.html [--screenshot shot.png]

Exit status 0: the page parses and every image decodes (and, with a browser, the screenshot shows
content); 1: a check failed (the reason is printed). Without a browser the screenshot step is skipped
and says so. Chromium comes from the system (Debian: ``apt-get install chromium``), not from pip.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(page: Path, png: Path, browser: str, width: int = 1400, height: int = 4000,
               timeout_s: float = 120) -> Path:
    """Render ``page`` headless into ``png`` (``width`` × ``height`` px); raise RuntimeError on failure."""
    with tempfile.TemporaryDirectory() as profile:  # a throw-away profile: nothing of the user's is touched
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                   page.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png.exists():
        raise RuntimeError(f"{browser} wrote no screenshot (exit {result.returncode}): {result.stderr[-300:]}")
    return png


def screenshot_shows_content(png: Path) -> float:
    """Fraction of screenshot rows that are not a single flat colour (0 = blank page)."""
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    return float(np.mean(pixels.std(axis=1).max(axis=1) > 0.02))


def main(argv: list[str] | None = None) -> int:
    from spectrafm_hf.training.report_html import check_html_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="report.html")
    parser.add_argument("--screenshot", type=Path, default=None, help="where to write the screenshot PNG")
    args = parser.parse_args(argv)
    try:
        summary = check_html_report(args.page)
    except (ValueError, OSError) as error:
        print(f"FAIL: {error}")
        return 1
    sizes = ", ".join(f"{w}×{h}" for w, h in summary["images"])
    print(f"ok: {args.page} parses ('{summary['title']}'), {len(summary['images'])} embedded PNGs decode ({sizes}), "
          f"{summary['tags'].get('table', 0)} tables")
    browser = find_browser()
    if browser is None:
        print("screenshot: not possible here (no chromium / google-chrome on PATH); the pure-Python checks passed")
        return 0
    png = args.screenshot or args.page.with_name("report_screenshot.png")
    try:
        screenshot(args.page, png, browser)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"FAIL: screenshot: {error}")
        return 1
    filled = screenshot_shows_content(png)
    print(f"screenshot: {png} ({browser}); {filled:.0%} of its rows show content")
    return 0 if filled > 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
