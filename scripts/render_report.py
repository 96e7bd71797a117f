#!/usr/bin/env python3
"""Render an evaluation report with headless Chromium, offline, and check that its plots are there.

    python scripts/render_report.py reports/default/report.html reports/default/report.png

Checks, in order (exit 1 if any fails, printing a JSON summary either way):
1. the HTML references nothing outside itself (no http(s)/file/relative src or href, no CSS url()/@import);
2. it embeds at least --min-images PNG plots as data: URIs;
3. in Chromium, with every host unresolvable (so a network fetch cannot succeed), all images decode
   (the report's own load handler writes ``data-images-loaded="k/n"`` on <body>, read via --dump-dom);
4. the screenshot is not blank (enough non-white pixels and colours).

Chromium is ``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``) unless --chromium or
$CHROMIUM says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_CHROMIUM = "/usr/bin/chromium"
IMG_RE = re.compile(r'<img\b[^>]*\bsrc="data:image/png;base64,[A-Za-z0-9+/=]{100,}"')
EXTERNAL_RE = re.compile(
    r"""(?:\b(?:src|href)\s*=\s*["'](?!data:|#)[^"']+["'])|(?:url\(\s*["']?(?!data:)[^)]+\))|(?:@import\b)""",
    re.IGNORECASE,
)
LOADED_RE = re.compile(r'data-images-loaded="(\d+)/(\d+)"')


def chromium_path(explicit: str | None = None) -> str | None:
    for candidate in (explicit, os.environ.get("CHROMIUM"), DEFAULT_CHROMIUM, shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _flags(profile: str) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host resolves
        f"--user-data-dir={profile}",
    ]


def static_checks(html: str) -> dict[str, object]:
    return {
        "images_embedded": len(IMG_RE.findall(html)),
        "external_references": sorted(set(EXTERNAL_RE.findall(html)))[:5],
    }


def png_stats(path: Path) -> dict[str, float]:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    flat = rgb.reshape(-1, 3)
    return {
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "non_white_share": float((flat.min(axis=1) < 240).mean()),
        "colours": int(len(np.unique(flat[::7], axis=0))),
    }


def render(report: Path, png: Path, *, chromium: str | None = None, width: int = 1400, height: int = 6000,
           min_images: int = 5, timeout: float = 120.0) -> dict[str, object]:
    """Run all checks; returns a summary with ``ok``."""
    html = report.read_text(encoding="utf-8")
    summary: dict[str, Any] = {"report": str(report), "png": str(png), **static_checks(html)}
    problems: list[str] = []
    if summary["external_references"]:
        problems.append(f"external references: {summary['external_references']}")
    if int(summary["images_embedded"]) < min_images:
        problems.append(f"only {summary['images_embedded']} embedded images (expected >= {min_images})")

    exe = chromium_path(chromium)
    if exe is None:
        problems.append("chromium not found (install it: apt-get install -y chromium, or set $CHROMIUM)")
        return {**summary, "ok": False, "problems": problems}
    url = report.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="shenhe-chromium-") as profile:
        dom = subprocess.run(
            [exe, *_flags(profile), "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        loaded = LOADED_RE.search(dom.stdout)
        summary["images_loaded"] = f"{loaded.group(1)}/{loaded.group(2)}" if loaded else None
        if loaded is None:
            problems.append(f"no data-images-loaded marker in the rendered DOM (chromium exit {dom.returncode})")
        elif loaded.group(1) != loaded.group(2) or int(loaded.group(2)) < min_images:
            problems.append(f"images decoded in chromium: {loaded.group(1)} of {loaded.group(2)}")

        png.parent.mkdir(parents=True, exist_ok=True)
        if png.exists():
            png.unlink()
        shot = subprocess.run(
            [exe, *_flags(profile), f"--window-size={width},{height}", f"--screenshot={png.resolve()}", url],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    if not png.exists():
        problems.append(f"no screenshot written (chromium exit {shot.returncode}: {shot.stderr.strip()[-200:]})")
    else:
        stats = png_stats(png)
        summary["screenshot"] = stats
        if stats["non_white_share"] < 0.02 or stats["colours"] < 50:
            problems.append(f"screenshot looks blank: {stats}")
    return {**summary, "ok": not problems, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--chromium", default=None)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=6000)
    ap.add_argument("--min-images", type=int, default=5)
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such file", file=sys.stderr)
        return 2
    result = render(args.report, args.png, chromium=args.chromium, width=args.width, height=args.height,
                    min_images=args.min_images)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
