"""One self-contained HTML report per run: provenance, key numbers with intervals, figures.

plotly.js is inlined once in the page head (no external URL: the page works offline). Every
piece of text that comes from data (task names, labels, prompts, config values) goes through
:func:`html.escape`, so a dataset row holding ``<script>`` renders as text.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .figures import FigureKey, build_figures, section_rank, section_title
from .probes import PROBES
from .results import atomic_write_text
from .rundir import discard_temp_dir, temp_dir_for
from .shots import at_shots, sweep_shots

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.prov td{text-align:left}.muted{color:#777;font-size:.85em}
.banner{background:#b00020;color:#fff;padding:.8em 1em;border-radius:4px;font-weight:600}
.fail{color:#b00020;font-weight:600}.pass{color:#1b7f3b}
.t-green{color:#1b7f3b;font-weight:600}.t-red{color:#b00020;font-weight:600}
.t-amber{color:#8a5a00;font-weight:600}.t-grey{color:#666}
table.matrix td.v{padding:0}table.matrix td.v a{display:block;padding:.3em .6em;color:inherit;text-decoration:none}
table.matrix td.v a:hover{outline:2px solid #333}table.matrix th.l{max-width:24em;font-weight:normal}
.v-green{background:#dcf2e1}.v-red{background:#f9dcdf}.v-amber{background:#fff1c7}
.v-grey{background:#eee}.v-mixed{background:#fff}.v-none{color:#aaa;text-align:center}
.num{font-variant-numeric:tabular-nums;font-size:.9em}.seeds{font-family:monospace;font-size:.85em}
details.claim{margin:.3em 0}details.claim summary{cursor:pointer}tr:target{background:#ffffc8}
td.test,td.note{min-width:16em}
"""

PROVENANCE_KEYS = (
    "model",
    "model_hash",
    "backend",
    "device",
    "dtype",
    "prepend_bos",
    "bos_token",
    "seed",
    "started",
    "finished",
    "status",
    "config_hash",
)


def safe_filename(name: str) -> str:
    """A file name from data-derived text: no path separators, nothing a shell would trip on."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "figure"
    return slug[:120]


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table_html(frame: pd.DataFrame, left: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row, strict=True):
            text = f"{value:.4f}" if isinstance(value, float) else value
            cells.append(f'<td class="{"l" if col in left else ""}">{_e(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def key_numbers_by_probe(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Per probe kind, the compact tables of its headline numbers (title -> frame), as the
    probe computes them from the run's tables
    (:meth:`~cgar_interp.probes.protocol.ProbeConfig.key_numbers`); probes with none left out."""
    out = {}
    for kind, spec in PROBES.items():
        numbers = spec.config_cls.key_numbers(tables)
        if numbers:
            out[kind] = numbers
    return out


def key_numbers(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Compact tables of the numbers a reader looks for first (value [95% CI]), by the table
    whose report section they follow: ``{table: {title: frame}}``. A probe's numbers
    (:func:`key_numbers_by_probe`) follow the section of the table it writes under its kind."""
    return key_numbers_by_probe(tables)


def self_check_banner_html(manifest: dict) -> str:
    """A red banner, first on the page, when the fast paths were not shown to be right."""
    check = manifest.get("self_check")
    if not check:
        return (
            '<div class="banner" id="self-check-banner">This run has no self-check record: '
            "its fast paths were never compared with a plain forward (made before the "
            "check existed). Treat its numbers with care.</div>"
        )
    failed = [path for path, row in check.get("paths", {}).items() if not row["passed"]]
    if failed or check.get("rows_per_task") == 0:
        what = (
            f"failed: {', '.join(failed)}" if failed else "was switched off (self_check_rows = 0)"
        )
        return (
            '<div class="banner" id="self-check-banner">Self-check '
            f"{_e(what)}. The run went on because the user asked for it "
            "(--allow-self-check-failure); numbers that use these paths may be wrong.</div>"
        )
    return ""


def self_check_html(manifest: dict, banner: bool = True) -> str:
    """The largest difference of each fast path from the plain forward, against the
    tolerance (after the red banner of :func:`self_check_banner_html` if ``banner``)."""
    check = manifest.get("self_check")
    parts = [self_check_banner_html(manifest)] if banner else []
    if not check:
        return "".join(parts)
    rows = [
        {
            "path": path,
            "compares": row["compares"],
            "max |delta p|": f"{row['max_abs_diff']:.2e}",
            "max |delta logit|": ""
            if row.get("max_logit_diff") is None
            else f"{row['max_logit_diff']:.2e}",
            "worst task": row["task"],
            "result": "pass" if row["passed"] else "FAIL",
        }
        for path, row in check.get("paths", {}).items()
    ]
    table = _table_html(pd.DataFrame(rows), left=("path", "compares", "worst task", "result"))
    table = table.replace('<td class="l">FAIL</td>', '<td class="l fail">FAIL</td>')
    table = table.replace('<td class="l">pass</td>', '<td class="l pass">pass</td>')
    parts.append(
        '<h2 id="self-check">Self-check of the fast paths</h2>'
        f'<p class="muted">Before the first probe, each shortcut this run uses was compared '
        f"with a plain full forward of the same rows on the same backend "
        f"({_e(check.get('rows_per_task'))} eval queries per task; {_e(check.get('metric'))}); "
        f"tolerance {_e(check.get('tolerance'))} for {_e(check.get('dtype'))}; "
        f"{_e(check.get('seconds'))} s.</p>" + table
    )
    return "".join(parts)


def _num(v, lo, hi) -> str:
    if v != v:  # NaN
        return ""
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else "")


class _Ids:
    """Element ids from data-derived text: only ``[A-Za-z0-9._-]``, each handed out once."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = "-".join(safe_filename(str(p)) for p in parts)
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}-{i}"
        self.used.add(name)
        return name


def _matrix_cell(cell, href: str | None) -> str:
    if cell is None:
        return '<td class="v-none">&ndash;</td>'
    words = "".join(
        f'<span class="t-{tone}">{_e(text)}</span>' if tone else _e(text)
        for text, tone in cell.word_segments()
    )
    body = words
    if cell.number:
        body += f'<br><span class="num">{_e(cell.number)}</span>'
    if cell.seeds:
        seeds = " ".join(f"{seed}:{letter}" for seed, letter in cell.seeds)
        body += f'<br><span class="seeds" title="verdict per seed">{_e(seeds)}</span>'
    return f'<td class="v v-{cell.tone}"><a href="#{href}">{body}</a></td>'


def _claim_rows_html(matrix, summary, anchors: dict, figure_names) -> str:
    """The rows of one claim id, every column of the ledger a reader needs; a column empty in
    all of them is left out (``n needed`` where none is inconclusive, ...)."""
    from .claims.matrix import TONES, number_text

    frame = matrix.ledger
    cells: list[dict[str, tuple[str, str]]] = []  # per row: column -> (class, html)
    for i in summary.rows:
        r = frame.loc[i]
        figure = r["figure"] or ""
        link = (
            f'<a href="#fig-{_e(safe_filename(figure))}">{_e(figure)}</a>'
            if figure and figure in figure_names
            else _e(figure)
        )
        details = "; ".join(
            _e(part)
            for part in (r["method"], f"reads {r['reads']}" if r["reads"] else "", r["note"])
            if part
        )
        ctl = _num(r["control_value"], r["control_ci_low"], r["control_ci_high"])
        needed = (
            number_text(r["n_needed"], ".0f", missing="") if r["verdict"] == "inconclusive" else ""
        )
        row = {
            "task": ("l", _e(r["task"])),
            "seed": ("l", _e(r["seed"]) if "seed" in frame.columns else ""),
            "test": ("l test", _e(r["test"])),
            "value [95% CI]": ("", _e(_num(r["value"], r["ci_low"], r["ci_high"]))),
            "control": ("l", _e(f"{r['control']} {ctl}".strip())),
            "difference [corrected CI]": ("", _e(_num(r["diff"], r["diff_low"], r["diff_high"]))),
            "verdict": (f"l t-{TONES.get(r['verdict'], 'grey')}", _e(r["verdict"])),
            "selected on": ("l", _e(r["selected_on"])),
            "n": ("", _e(number_text(r["n"], ".0f", missing="") if r["n"] else "")),
            "p": ("", _e(number_text(r["p_value"], missing=""))),
            "alpha_i": ("", _e(number_text(r["alpha"], missing=""))),
            "detectable": ("", _e(number_text(r["detectable"], missing=""))),
            "n needed": ("", _e(needed)),
            "method, rows read, note": ("l muted note", details),
            "figure": ("l", link),
        }
        cells.append(row)
    always = ("task", "test", "verdict")
    columns = [c for c in cells[0] if c in always or any(row[c][1] for row in cells)]
    head = "".join(f'<th class="l">{c}</th>' for c in columns)
    rows = []
    for i, row in zip(summary.rows, cells, strict=True):
        row_id = f' id="{anchors[i]}"' if i in anchors else ""
        tds = "".join(f'<td class="{row[c][0]}">{row[c][1]}</td>' for c in columns)
        rows.append(f"<tr{row_id}>{tds}</tr>")
    return f'<table class="ledger"><tr>{head}</tr>{"".join(rows)}</table>'


OPEN_TARGET_JS = """
function cgarOpenTarget(){var id=location.hash.slice(1);var t=id&&document.getElementById(id);
if(!t)return;for(var e=t;e;e=e.parentElement){if(e.tagName==='DETAILS')e.open=true;}
t.scrollIntoView();}
window.addEventListener('hashchange',cgarOpenTarget);
document.addEventListener('DOMContentLoaded',cgarOpenTarget);
"""
"""Opens the ``<details>`` holding a link's target (a matrix cell's rows), where the browser
does not do so itself."""


def ledger_html(ledger: pd.DataFrame | None, figure_names) -> str:
    """The claims ledger as the report's first section: the claim x task matrix (each cell
    coloured by its verdict and linked to its rows), the correction's family once, then per
    claim a collapsible ``<details>`` with its rule and correction once and its rows (each
    linking to its figure)."""
    if ledger is None or ledger.empty:
        return ""
    from .claims.matrix import verdict_matrix

    matrix = verdict_matrix(ledger)
    ids = _Ids()
    claim_ids = {cid: ids("claim", cid) for cid in matrix.claims}
    cell_ids = {key: ids("rows", *key) for key in matrix.cells}
    anchors: dict[int, str] = {}  # ledger position -> id, on the first row of each cell
    seen: set[tuple[str, str]] = set()
    for cid in matrix.claims:
        for i in matrix.summaries[cid].rows:
            key = (cid, matrix.ledger.at[i, "task"])
            if key in cell_ids and key not in seen:
                seen.add(key)
                anchors[i] = cell_ids[key]
    head = '<th class="l">claim</th>' + "".join(f"<th>{_e(t)}</th>" for t in matrix.tasks)
    body = []
    for cid in matrix.claims:
        s = matrix.summaries[cid]
        short = s.short if len(s.short) <= 70 else s.short[:69] + "…"
        cells = "".join(
            _matrix_cell(matrix.cell(cid, task), cell_ids.get((cid, task))) for task in matrix.tasks
        )
        body.append(
            f'<tr><th class="l" title="{_e(s.title)}"><a href="#{claim_ids[cid]}">{_e(cid)}</a> '
            f"{_e(short)}</th>{cells}</tr>"
        )
    family = "; ".join(_e(f) for f in matrix.family) or "none (no row yields a p-value)"
    seeds = (
        f" Below it, the verdict of each seed ({_e(', '.join(matrix.seeds))}); the cell's is "
        "the overall verdict, supported only if every seed supports."
        if matrix.seeds
        else ""
    )
    claims = []
    for cid in matrix.claims:
        s = matrix.summaries[cid]
        tally = ", ".join(f"{n} {v}" for v, n in s.counts)
        rules = "".join(f"<li>{_e(rule)}</li>" for rule in s.rules) or "<li>none stated</li>"
        claims.append(
            f'<details id="{claim_ids[cid]}" class="claim"><summary><b>{_e(cid)}</b> '
            f'{_e(s.title)} <span class="muted">({len(s.rows)} rows: {_e(tally)})</span>'
            f'</summary><p class="muted">Rule:</p><ul class="muted">{rules}</ul>'
            f'<p class="muted">Correction: {_e(s.correction)}.</p>'
            f"{_claim_rows_html(matrix, s, anchors, figure_names)}</details>"
        )
    return (
        '<h2 id="verdict">Verdict: claims x tasks</h2>'
        '<p class="muted">Each claim of the paper that this run tests, computed from its tables '
        "(tables/claims.parquet; <code>cgar verdict RUN_DIR</code> prints this matrix, "
        "<code>--rows</code> every row). A cell gives the verdict of its rows (the counts where "
        "they disagree) and its headline row's value - control with its interval at the row's "
        "Holm level (v= a value decided by a rule of its own); it links to its rows."
        f"{seeds}</p>"
        f'<table class="matrix"><tr>{head}</tr>{"".join(body)}</table>'
        f'<p class="muted">Correction, for every row that yields a verdict: {family}. Each '
        "row gives its own alpha_i. Decode-mode agreement of the exact-norm model is a "
        "consistency check, not evidence.</p>"
        f'<h3 id="verdict-rows">The rows of each claim</h3>{"".join(claims)}'
        f"<script>{OPEN_TARGET_JS}</script>"
    )


def build_report(
    run_dir: str | Path, extra_figures: dict[str | FigureKey, go.Figure] | None = None
) -> Path:
    """Write ``report.html`` (and ``figures/*.html``) for a run directory; returns the report path.

    ``extra_figures`` (named ``<table>-<task>`` or by :class:`FigureKey`) join the run's own.
    """
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tables = {p.stem: pd.read_parquet(p) for p in sorted((run_dir / "tables").glob("*.parquet"))}
    figures = build_figures(tables)
    figures.update({FigureKey.parse(name): fig for name, fig in (extra_figures or {}).items()})
    ks = sweep_shots(tables)
    if ks:  # a k-shot sweep: the key numbers are those of the largest k (figures show all)
        tables = {name: at_shots(frame, ks[-1]) for name, frame in tables.items()}
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for key, fig in figures.items():
        # "directory": one plotly.min.js beside the figures, referenced relatively (offline)
        fig.write_html(
            fig_dir / f"{safe_filename(str(key))}.html",
            include_plotlyjs="directory",
            full_html=True,
        )

    ledger = tables.get("claims")
    if ledger is None:  # a run made before the ledger existed: compute it from its tables
        from .claims import build_ledger

        ledger = build_ledger(tables, manifest)
    prov = {k: manifest.get(k) for k in PROVENANCE_KEYS if k in manifest}
    versions = manifest.get("versions", {})
    prov_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in prov.items())
    prov_rows += f"<tr><td>versions</td><td>{_e(', '.join(f'{k} {v}' for k, v in versions.items()))}</td></tr>"
    env = manifest.get("environment")
    if env:
        if env.get("lock_sha256"):
            matches = env.get("installed_matches_lock")
            state = (
                "installed packages match it"
                if matches
                else f"installed packages differ: {'; '.join(env.get('mismatches') or [])}"
            )
            text = f"{env.get('lock_file')} sha256 {env['lock_sha256'][:16]}…; {state}"
        else:
            text = "no lock file (installed into an environment of its own)"
        prov_rows += f"<tr><td>environment</td><td>{_e(text)}</td></tr>"
    suite = manifest.get("suite", {})
    parts = [
        f"<h1>cgar_interp report — {_e(suite.get('name', run_dir.name))}</h1>",
        self_check_banner_html(manifest),
        ledger_html(ledger, {str(key) for key in figures}),
        self_check_html(manifest, banner=False),
        f'<table class="prov">{prov_rows}</table>',
        f'<p class="muted">tasks: {_e(", ".join(suite.get("tasks", [])))}; shots per class: '
        f"{_e(suite.get('shots'))}; fit/eval queries: {_e(suite.get('n_fit'))}/{_e(suite.get('n_eval'))}; "
        f"intervals: bootstrap 95% over queries ({_e(suite.get('n_boot'))} resamples).</p>",
    ]
    # one section per registered section title, in (rank, name) order of their first figure;
    # each table's key numbers follow its section's figures
    sections: dict[str, list[FigureKey]] = {}
    for key in sorted(figures, key=lambda k: (section_rank(k.table), str(k))):
        sections.setdefault(section_title(key.table), []).append(key)
    numbers = key_numbers(tables)
    for title, keys in sections.items():
        parts.append(f"<h2>{_e(title)}</h2>")
        for key in keys:
            parts.append(
                figures[key].to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"fig-{safe_filename(str(key))}",
                )
            )
        for table in dict.fromkeys(key.table for key in keys):
            for number_title, frame in numbers.get(table, {}).items():
                parts.append(
                    f"<h3>{_e(number_title)}</h3>" + _table_html(frame, left=tuple(frame.columns))
                )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>cgar_interp — {_e(suite.get('name', run_dir.name))}</title>"
        f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    written = atomic_write_text(run_dir / "report.html", page, temp_dir_for(run_dir))
    discard_temp_dir(run_dir)  # `cgar report` on a finished run leaves nothing beside it
    return written
