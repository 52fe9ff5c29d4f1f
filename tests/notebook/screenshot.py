"""Remake docs/images/notebooks-progress.png: run the kernel test's cell on a real kernel, then render a
mid-run update and the final display in Debian's chromium (Playwright) and screenshot them.

    python3 tests/notebook/screenshot.py
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import tempfile

from playwright.sync_api import sync_playwright

HERE = pathlib.Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = HERE.parents[1] / "docs" / "images" / "notebooks-progress.png"


def main() -> None:
    spec = importlib.util.spec_from_file_location("kernel_test", HERE / "test_notebook_kernel.py")
    assert spec is not None
    assert spec.loader is not None
    kernel_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_test)
    nbformat = kernel_test.nbformat
    with tempfile.TemporaryDirectory() as tmp:
        kernels = pathlib.Path(tmp, "kernels", kernel_test.KERNEL)
        kernels.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python"}))
        os.environ["JUPYTER_PATH"] = tmp
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(kernel_test.CELL)])
        client = kernel_test.CountingClient(notebook, timeout=60, kernel_name=kernel_test.KERNEL)
        client.execute()
    updates = [data for kind, _, data in client.messages if kind == "update_display_data"]
    running = [d for d in updates if " 100% " not in d["text/plain"].split("slow_square")[1]]
    code = html.escape(kernel_test.CELL.strip().split("\n\n")[-1])
    panels = "".join(
        f'<div style="margin:12px 0 4px;color:#555;font:13px sans-serif">{label}</div>'
        f'<div style="border:1px solid #ddd;padding:8px;background:#fff">{data["text/html"]}</div>'
        for label, data in (
            ("while it runs (the same display, replaced in place):", running[len(running) // 2]),
            ("when it ends:", updates[-1]),
        )
    )
    page = (
        '<html><body style="margin:0"><div id="shot" style="background:#f7f7f7;padding:16px;'
        'width:760px"><pre style="background:#f5f5f5;border:1px solid #e0e0e0;padding:8px;'
        f'font-size:12px;margin:0">{code}</pre>{panels}</div></body></html>'
    )
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        path = pathlib.Path(tmp, "page.html")
        path.write_text(page)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        tab = browser.new_page(viewport={"width": 800, "height": 400}, device_scale_factor=2)
        tab.goto(path.as_uri())
        tab.locator("#shot").screenshot(path=str(OUT))
        browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
