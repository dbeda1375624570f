"""The HTML report in a real headless Chromium: figures draw, no console errors, no network.

Skips only where no Chromium exists (``.ci/run`` installs Debian's ``chromium``). The
screenshot is kept in ``test-artifacts/`` for a person to look at.
"""

import shutil
from pathlib import Path

import pytest

from cgar_interp.report import build_report
from cgar_interp.rundir import RunDir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    """A run directory with hand-made tables (no model): a figure per probe, hostile text."""
    import pandas as pd

    path = tmp_path_factory.mktemp("run")
    rows = []
    for mode in ("baseline", "decode", "patch"):
        for lam in (0.0,) if mode == "baseline" else (0.0, 0.1, 1.0, 10.0):
            for metric, value in (
                ("vocab_correct", 0.2 + lam / 20),
                ("label_mass", 0.1 + lam / 15),
            ):
                vector = "zero_shot" if mode == "baseline" else "context"
                rows.append(
                    {
                        "task": "<script>alert(1)</script>",
                        "probe": "context_gate",
                        "mode": mode,
                        "vector": vector,
                        "q_layer": 4,
                        "c_layer": 4 if mode != "baseline" else -1,
                        "lam": lam,
                        "metric": metric,
                        "value": value,
                        "n": 10,
                        "ci_low": value - 0.05,
                        "ci_high": value + 0.05,
                    }
                )
    tv = [
        {
            "task": "<script>alert(1)</script>",
            "probe": "task_vectors",
            "layer": layer,
            "metric": m,
            "value": 0.1 * layer,
            "n": 10,
            "ci_low": 0.1 * layer - 0.05,
            "ci_high": 0.1 * layer + 0.05,
            "theta_norm": 1.0,
            "best_layer": 3,
        }
        for layer in range(4)
        for m in ("vocab_correct", "label_mass")
    ]
    with RunDir.open(path, {"config_hash": "x"}) as run:
        run.write_manifest(
            {
                "identity": {"config_hash": "x"},
                "model": "tiny </div><b>bold</b>",
                "suite": {"name": "browser-test", "tasks": ["<script>alert(1)</script>"]},
            }
        )
        run.write_table("context_gate", pd.DataFrame(rows))
        run.write_table("task_vectors", pd.DataFrame(tv))
    return build_report(path)


def test_report_draws_offline_without_errors(report_path):
    from playwright.sync_api import sync_playwright

    console, requests, dialogs = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report_path.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
        n_plots = page.locator(".js-plotly-plot").count()
        n_traces = page.locator(".js-plotly-plot .scatterlayer .trace").count()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        body_text = page.inner_text("body")
        browser.close()
    assert n_plots == 2 and n_traces > 4
    assert [c for c in console if c[0] == "error"] == []
    assert [u for u in requests if not u.startswith("file://")] == []  # nothing leaves the page
    assert dialogs == []  # the hostile task name did not execute
    assert "<script>alert(1)</script>" in body_text  # ... it renders as text
    assert "</div><b>bold</b>" in body_text
    assert shot.stat().st_size > 20_000  # a non-blank page
