"""Headless Chromium for checking what users see: `dvc plots show` pages, the HTML report, the MLflow UI.

Used by tests/test_browser.py (which skips, naming the reason, without Chromium or the Vega scripts) and by
bench/browser_check.py (which writes the screenshots for a person to look at).

DVC's plot pages load Vega, Vega-Lite and Vega-Embed from a CDN. Offline, the same files come from the npm
registry (`npm pack`, the packages' `build/*.min.js`, the files the CDN serves) into a cache folder, or from
``LSMIA_VEGA_DIR`` when that names a folder holding them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

# the scripts dvc_render's VegaRenderer.SCRIPTS loads, and the npm package file each is served from
VEGA_SCRIPTS = {
    "https://cdn.jsdelivr.net/npm/vega@5.20.2": ("vega@5.20.2", "vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0": ("vega-lite@5.2.0", "vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2": ("vega-embed@6.18.2", "vega-embed.min.js"),
}
VEGA_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lsmia" / "vega"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE_ID = "lsmia-probe"


def chromium() -> str | None:
    """The headless browser's executable, or None when none is installed."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def vega_dir(fetch: bool = True) -> Path | None:
    """A folder holding vega.min.js, vega-lite.min.js and vega-embed.min.js (fetched once with npm), or None."""
    folder = Path(os.environ.get("LSMIA_VEGA_DIR") or VEGA_CACHE)
    if all((folder / name).is_file() for _, name in VEGA_SCRIPTS.values()):
        return folder
    if not fetch or shutil.which("npm") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package, name in VEGA_SCRIPTS.values():
            done = subprocess.run(
                ["npm", "pack", "--silent", package], cwd=tmp, capture_output=True, text=True, timeout=120
            )
            if done.returncode != 0:
                return None
            with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as archive:
                member = archive.extractfile(f"package/build/{name}")
                if member is None:
                    return None
                (folder / name).write_bytes(member.read())
    return folder


def offline_copy(page: Path, scripts: Path, probe: bool = True) -> Path:
    """A copy of a `dvc plots show` page beside it that loads Vega from ``scripts``, draws SVG (so its text is in
    the DOM) and, with ``probe``, records what it drew into the DOM for `--dump-dom`."""
    text = page.read_text(encoding="utf-8")
    for url, (_, name) in VEGA_SCRIPTS.items():
        text = text.replace(url, (scripts / name).resolve().as_uri())
    text = re.sub(r"vegaEmbed\('(#[^']+)', spec\);", r"vegaEmbed('\1', spec, {renderer: 'svg'});", text)
    if probe:
        text = text.replace("</body>", f"{PROBE_SCRIPT}</body>")
    copy = page.with_name(f"{page.stem}.offline.html")
    copy.write_text(text, encoding="utf-8")
    return copy


# After the charts are drawn: per chart its title, texts and axis tick labels; the page's width; images and errors.
PROBE_SCRIPT = (
    """<script>
window.lsmiaErrors = [];
window.addEventListener('error', e => window.lsmiaErrors.push(String(e.message)));
window.addEventListener('load', () => setTimeout(() => {
  const charts = [...document.querySelectorAll('svg.marks')].map(svg => {
    const texts = [...svg.querySelectorAll('text')].map(t => t.textContent);
    const axes = [...svg.querySelectorAll('g.role-axis')].map(axis => ({
      title: [...axis.querySelectorAll('g.role-axis-title text')].map(t => t.textContent).join(' '),
      labels: [...axis.querySelectorAll('g.role-axis-label text')].map(t => t.textContent)}));
    return {id: svg.closest('div[id]').id, texts: texts, axes: axes};
  });
  const images = [...document.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth}));
  const facts = {charts: charts, images: images, errors: window.lsmiaErrors,
                 scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
                 height: document.documentElement.scrollHeight};
  const probe = document.createElement('pre');
  probe.id = '"""
    + PROBE_ID
    + """';
  probe.textContent = JSON.stringify(facts);
  document.body.appendChild(probe);
}, 500));
</script>"""
)


def _browser_args(width: int, height: int) -> list[str]:
    executable = chromium()
    if executable is None:
        raise RuntimeError("no Chromium: apt-get install chromium")
    return [
        executable,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--mute-audio",
        f"--window-size={width},{height}",
        "--virtual-time-budget=15000",
    ]


def page_facts(page: Path, width: int = 1280, height: int = 900) -> dict[str, Any]:
    """What the probe script of :func:`offline_copy` (or :data:`PROBE_SCRIPT` added to any page) recorded."""
    done = subprocess.run(
        [*_browser_args(width, height), "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        raise RuntimeError(f"the page {page} did not finish drawing: {done.stderr[-500:]}")
    import html

    facts: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return facts


def with_probe(page: Path) -> Path:
    """A copy of any HTML page with the probe script, beside it."""
    copy = page.with_name(f"{page.stem}.probe.html")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", f"{PROBE_SCRIPT}</body>"), encoding="utf-8")
    return copy


def screenshot(url_or_page: str | Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the page (a file or an http URL) as a window of ``width`` x ``height`` shows it."""
    target = url_or_page if isinstance(url_or_page, str) else url_or_page.resolve().as_uri()
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*_browser_args(width, height), f"--screenshot={png}", target], capture_output=True, timeout=180, check=True
    )
    return png


def dvc_plots_page(repo: Path, out: Path, dvc: str = "dvc") -> tuple[Path, str]:
    """`dvc plots show -o out` in ``repo``: the page and what DVC printed (warnings included)."""
    done = subprocess.run([dvc, "plots", "show", "-o", str(out)], cwd=repo, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"dvc plots show failed: {done.stdout}{done.stderr}")
    return out / "index.html", done.stdout + done.stderr
