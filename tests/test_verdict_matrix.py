"""The claim x task matrix of a ledger (cgar_interp/claims/matrix.py), checked against the
ledger's rows and the per-query values behind them, recomputed here with pandas and numpy.

The toy ledger: 8 claim ids (two of them sub-ids of one claim) x 3 tasks and the pooled
``all``, decided by the real ledger (paired bootstrap, Holm) from a per-query table. Its
helpers (:func:`toy_table`, :data:`TOY_CLAIMS`) serve the CLI's and the report's tests too.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from cgar_interp.claims import build_ledger
from cgar_interp.claims.base import (
    CONSISTENCY,
    DECIDED,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PENDING,
    SUPPORTED,
    UNTESTABLE,
    Claim,
    ClaimDefinition,
)
from cgar_interp.claims.matrix import (
    legend_lines,
    matrix_lines,
    plain,
    row_lines,
    verdict_matrix,
)
from cgar_interp.claims.stats import Samples

TASKS = ("agnews-mini", "sst2-mini", "trec-mini")
MAPPING = "Toy mapping, the context vector carries the mapping"
# (claim id, title, rows per cell: (key, effect, sd, n) ...); effects per task are scaled below
DIFFERENCE_CLAIMS = {
    "11": ("Toy gating raises label mass", [("mass", 0.5, 0.1, 40)]),
    "12": (
        "Toy patching: the effect survives the intervention at every context layer",
        [
            ("c=19/mass", 0.5, 0.1, 40),
            ("c=19/acc", 0.4, 0.1, 40),
            ("c=22/mass", 0.6, 0.1, 40),
            ("c=22/acc", 0.05, 0.4, 10),  # noisy: inconclusive
            ("c=26/mass", 0.0, 0.005, 40),  # nothing: not supported
            ("c=26/acc", 0.0, 0.005, 40),
        ],
    ),
    "13a": (f"{MAPPING}: cbar against shuffled labels", [("mass", 0.05, 0.4, 8)]),
    "13b": (f"{MAPPING}: cbar against a random vector", [("mass", 0.3, 0.1, 40)]),
    "17": ("Toy equivalence: the decode equals the patch", [("mass", 0.0, 0.002, 40)]),
}
MARGIN = 0.05


def toy_table() -> pd.DataFrame:
    """Per-query values: one row per (claim id, task, key, query) with value and control."""
    rows = []
    for cid, (_, specs) in DIFFERENCE_CLAIMS.items():
        for t, task in enumerate(TASKS):
            for r, (key, effect, sd, n) in enumerate(specs):
                rng = np.random.default_rng(1000 * int(cid[:2]) + 10 * t + r)
                control = rng.uniform(0.1, 0.3, n)
                # the last task of claim 11 shows no effect at all
                lift = 0.0 if (cid == "11" and task == "trec-mini") else effect
                value = control + lift + rng.normal(0, sd if lift else 0.005, n)
                rows += [
                    {
                        "claim_id": cid,
                        "task": task,
                        "key": key,
                        "query": q,
                        "value": v,
                        "control": c,
                    }
                    for q, (v, c) in enumerate(zip(value, control, strict=True))
                ]
    return pd.DataFrame(rows)


def _difference_rows(cid: str):
    title, _ = DIFFERENCE_CLAIMS[cid]

    def evaluate(tables, manifest):
        frame = tables["toy"]
        frame = frame[frame.claim_id == cid]
        out = []
        for (task, key), part in frame.groupby(["task", "key"], sort=False):
            v, c = part.value.to_numpy(), part.control.to_numpy()
            se_v, se_c = v.std(ddof=1) / math.sqrt(v.size), c.std(ddof=1) / math.sqrt(c.size)
            out.append(
                Claim(
                    cid, title, f"{key}: toy value against toy control", "toy", task,
                    value=v.mean(), ci_low=v.mean() - 2 * se_v, ci_high=v.mean() + 2 * se_v,
                    control="toy control", control_value=c.mean(),
                    control_ci_low=c.mean() - 2 * se_c, control_ci_high=c.mean() + 2 * se_c,
                    margin=MARGIN, rule_kind="equivalence" if cid == "17" else "superiority",
                    selected_on="fit", key=key, samples=Samples.paired(v, c), figure="toy-fig",
                )
            )  # fmt: skip
        if cid == "11":  # a pooled row: the mean over tasks
            v = np.concatenate([frame[frame.task == t].value.to_numpy() for t in TASKS])
            c = np.concatenate([frame[frame.task == t].control.to_numpy() for t in TASKS])
            out.insert(
                0,
                Claim(
                    cid, title, "mass pooled over tasks", "toy", "all", value=v.mean(),
                    control_value=c.mean(), margin=MARGIN, selected_on="pre-specified",
                    key="pooled", samples=Samples.paired(v, c),
                ),
            )  # fmt: skip
        return out

    return ClaimDefinition(cid, title, ("toy",), evaluate)


def _other_rows(tables, manifest):
    """Claims decided otherwise: a rule of their own (14), waiting (15), checks (16)."""
    out = []
    for t, task in enumerate(TASKS):
        verdict = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)[t]
        out.append(
            Claim("14", "Toy theory fit", "R^2 of the toy model", "toy", task, value=0.1 + t,
                  kind="rule", rule="supported if R^2 >= 0.5", verdict=verdict,
                  selected_on="eval (in-sample)")
        )  # fmt: skip
        out.append(
            Claim("15", "Toy heads are necessary", "ablation", "toy", task, kind="pending",
                  verdict=PENDING, note="needs head_mediation")
        )  # fmt: skip
        kind, verdict = ("consistency", CONSISTENCY) if t else ("untestable", UNTESTABLE)
        out.append(
            Claim("16", "Toy consistency", "decode against itself", "toy", task, value=1.0,
                  kind=kind, verdict=verdict)
        )  # fmt: skip
    return out


TOY_CLAIMS = (
    *(_difference_rows(cid) for cid in DIFFERENCE_CLAIMS),
    ClaimDefinition("14", "Toy theory fit", ("toy",), _other_rows),
)
"""Eight claim ids: 11, 12, 13a, 13b, 17 (differences), 14 (rule), 15 (pending), 16 (checks).
Claim 14's function writes the rows of 15 and 16 too (ids are the rows', not the definition's)."""


@pytest.fixture(scope="module")
def table():
    return toy_table()


@pytest.fixture(scope="module")
def ledger(table):
    return build_ledger({"toy": table}, {}, claims=TOY_CLAIMS, n_boot=2000)


def test_rows_are_claim_ids_in_ledger_order_and_columns_tasks_with_all_last(ledger):
    m = verdict_matrix(ledger)
    assert m.claims == tuple(dict.fromkeys(ledger.claim_id))
    assert m.claims == ("11", "12", "13a", "13b", "14", "15", "16", "17")
    assert ledger.task.iloc[0] == "all"  # claim 11's pooled row comes first in the ledger ...
    assert m.tasks == (*TASKS, "all")  # ... and its column last
    assert set(m.cells) == set(zip(ledger.claim_id, ledger.task, strict=True))


def test_cells_aggregate_their_rows(ledger):
    m = verdict_matrix(ledger)
    groups = ledger.groupby(["claim_id", "task"], sort=False)
    assert len(m.cells) == groups.ngroups
    for (cid, task), part in groups:
        cell = m.cell(cid, task)
        assert dict(cell.counts) == part.verdict.value_counts().to_dict()
        assert cell.rows == tuple(part.index)
        if part.verdict.nunique() == 1:
            assert cell.verdict == part.verdict.iloc[0] and cell.word() == cell.verdict
        else:
            assert cell.verdict is None and cell.tone == "mixed"
            shown = re.findall(r"(\d+) (sup|inc|not|untest|pend|cons)", cell.word())
            short = {"sup": SUPPORTED, "inc": INCONCLUSIVE, "not": NOT_SUPPORTED}
            assert {short[w]: int(n) for n, w in shown} == dict(cell.counts)
        decided = part[part.verdict.isin(DECIDED)]
        head = (decided if len(decided) else part).iloc[0]
        assert cell.headline == head.name
    # claim 12 mixes its six rows on every task; the design gives 3 supported, 2 not
    for task in TASKS:
        counts = dict(m.cell("12", task).counts)
        assert counts[SUPPORTED] == 3 and counts[NOT_SUPPORTED] == 2, counts
    assert m.cell("11", "trec-mini").verdict == NOT_SUPPORTED  # no effect there
    assert m.cell("11", "sst2-mini").tone == "green"
    assert m.cell("15", "sst2-mini").tone == "grey" and m.cell("16", "agnews-mini").tone == "grey"
    assert m.cell("14", "trec-mini").tone == "amber"


def test_a_cell_shows_the_paired_difference_of_its_headline_row(ledger, table):
    """The number in a cell is mean(value - control) over the headline row's queries,
    recomputed from the per-query table, and its corrected interval from the ledger row."""
    m = verdict_matrix(ledger)
    checked = 0
    for (cid, task), cell in m.cells.items():
        row = ledger.loc[cell.headline]
        if row.kind != "difference":
            continue
        if task == "all":
            q = table[table.claim_id == cid]
        else:
            q = table[(table.claim_id == cid) & (table.task == task) & (table.key == row.key)]
        diff = float(np.mean(q.value.to_numpy() - q.control.to_numpy()))
        assert math.isclose(row["diff"], diff, rel_tol=1e-9, abs_tol=1e-12)
        assert cell.number == f"{diff:+.2f} [{row.diff_low:.2f}, {row.diff_high:.2f}]"
        checked += 1
    assert checked == 5 * 3 + 1  # five difference claims on three tasks, and the pooled row
    rule = m.cell("14", "sst2-mini")
    assert rule.number == "v=1.10"  # a row decided by its own rule shows its value


def test_the_rule_and_the_correction_are_stated_once_per_claim(ledger):
    m = verdict_matrix(ledger)
    m_rows = int(ledger.alpha.notna().sum())
    assert m_rows == int((ledger.kind == "difference").sum())  # every difference row, no other
    assert m.family == (
        f"Holm over the {m_rows} rows of this ledger that yield a verdict (family alpha 0.05)",
    )
    twelve = m.summaries["12"]
    assert len(twelve.rules) == 1 and "lies below 0.05" in twelve.rules[0]
    assert twelve.rule == "S if diff > 0, N if diff < 0.05, else I"
    assert twelve.correction.startswith("18 rows in the family, alpha_i ")
    lo, hi = ledger[ledger.claim_id == "12"].alpha.agg(["min", "max"])
    assert twelve.correction.endswith(f"{lo:.2g}-{hi:.2g}")
    assert m.summaries["17"].rule.startswith("S if diff within ±0.05")
    assert m.summaries["14"].rule == "supported if R^2 >= 0.5"
    assert m.summaries["14"].correction.startswith("not in the family")
    # sub-ids of one claim are told apart by what follows the shared title
    assert m.summaries["13a"].short == "Cbar against shuffled labels"
    assert m.summaries["13b"].short == "Cbar against a random vector"
    assert m.summaries["11"].short == "Toy gating raises label mass"


def test_the_text_fits_100_columns(ledger):
    m = verdict_matrix(ledger)
    lines = plain(matrix_lines(m)) + plain(legend_lines(m))
    assert max(map(len, lines)) <= 100
    assert lines[0].split() == ["claim", *TASKS, "all"]
    body = "\n".join(lines)
    for cid in m.claims:
        assert re.search(rf"^{cid}\s", body, flags=re.M), cid
    assert f"Holm over the {int(ledger.alpha.notna().sum())} rows" in body
    rows = plain(row_lines(m))
    assert max(map(len, rows)) <= 100


@pytest.mark.parametrize("n_tasks", [1, 4, 9])
def test_many_long_tasks_split_into_blocks_within_the_width(ledger, n_tasks):
    per_task = ledger[ledger.task != "all"]
    frame = pd.concat(
        [
            per_task[per_task.task == TASKS[i % 3]].assign(task=f"a-rather-long-task-name-{i}")
            for i in range(n_tasks)
        ],
        ignore_index=True,
    )
    m = verdict_matrix(frame)
    lines = plain(matrix_lines(m, width=100))
    assert max(map(len, lines)) <= 100
    headers = [line for line in lines if line.startswith("claim")]
    assert (len(headers) == 1) == (n_tasks == 1)  # blocks of tasks only where they must
    shown = [name for h in headers for name in h.split()[1:]]  # every task once, in order
    assert len(shown) == len(m.tasks) == n_tasks
    for name, task in zip(shown, m.tasks, strict=True):
        assert task.startswith(name.rstrip("…")), (name, task)
    assert sum(line.startswith("12 ") for line in lines) == len(headers)  # each block: every row


def test_seeds_show_the_overall_verdict_and_one_letter_per_seed():
    rows = []
    for seed, verdicts in (
        ("0", (SUPPORTED, SUPPORTED)),
        ("1", (SUPPORTED, SUPPORTED)),
        ("2", (INCONCLUSIVE, SUPPORTED)),
        ("all", (INCONCLUSIVE, SUPPORTED)),
    ):
        for key, verdict in zip(("mass", "acc"), verdicts, strict=True):
            rows.append(
                {"claim_id": "1", "claim": "c", "task": "t", "key": key, "seed": seed,
                 "verdict": verdict, "kind": "difference", "diff": 0.1, "diff_low": 0.05,
                 "diff_high": 0.15, "alpha": math.nan if seed == "all" else 0.025}
            )  # fmt: skip
    rows.append(dict(rows[-1], task="u", seed="all", verdict=SUPPORTED))
    m = verdict_matrix(pd.DataFrame(rows))
    assert m.seeds == ("0", "1", "2")
    cell = m.cell("1", "t")
    assert cell.rows == (6, 7)  # the overall rows only
    assert cell.word() == "1 sup / 1 inc" and cell.seed_letters == "S S ~"
    assert m.cell("1", "u").seed_letters == ""  # no per-seed rows there
    lines = plain(matrix_lines(m))
    assert "S S ~" in "\n".join(lines) and len(lines) == 1 + 3  # header, three lines per claim
    assert any("seed 2" in line for line in plain(row_lines(m)))
    assert m.summaries["1"].correction == "2 rows per seed's family, alpha_i 0.025"


def test_the_counts_of_a_mixed_cell_and_an_old_ledger_without_the_new_columns():
    verdicts = [NOT_SUPPORTED, SUPPORTED, INCONCLUSIVE, SUPPORTED, NOT_SUPPORTED, SUPPORTED]
    old = pd.DataFrame(
        {
            "claim_id": "2",
            "claim": "The effect survives patching",
            "task": "t",
            "test": [f"row {i}" for i in range(6)],
            "kind": "difference",
            "verdict": verdicts,
            "diff": [np.nan, 0.2, 0.01, 0.3, 0.0, 0.1],
            "diff_low": [np.nan, 0.1, -0.1, 0.2, -0.01, 0.05],
            "diff_high": [np.nan, 0.3, 0.12, 0.4, 0.01, 0.15],
            "rule": "r",
            "correction": "Bonferroni over 53 comparisons (z = 3.31)",
        }
    )  # fmt: skip  (a ledger from before selected_on, key, alpha, ... existed)
    m = verdict_matrix(old)
    cell = m.cell("2", "t")
    assert cell.word() == "3 sup / 1 inc / 2 not" and cell.word(compact=True) == "3S 1I 2N"
    assert cell.headline == 0 and cell.number == ""  # the first decided row has no number
    assert m.family == ("Bonferroni over 53 comparisons (z = 3.31)",)
    assert m.summaries["2"].correction == m.family[0]
    assert max(map(len, plain(row_lines(m)))) <= 100


def test_the_report_opens_with_the_matrix_and_each_claim_folds_its_rows(tmp_path, ledger, table):
    from html.parser import HTMLParser

    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    hostile = "<script>alert(1)</script>"
    stored = ledger.replace({"task": {"trec-mini": hostile}})
    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest({"identity": {"config_hash": "x"}, "suite": {"name": "toy"}})
        run.write_table("toy", table)
        run.write_table("claims", stored)
    page = build_report(tmp_path / "run").read_text()
    body = page[page.index("<body>") :]
    assert body.index('id="verdict"') < body.index('class="matrix"') < body.index("<details")
    assert body.index("<details") < body.index('class="prov"')  # the ledger opens the report

    class Parse(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.hrefs, self.details = set(), [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                assert a["id"] not in self.ids, a["id"]  # ids are unique
                self.ids.add(a["id"])
            if tag == "a" and a.get("href", "").startswith("#"):
                self.hrefs.append(a["href"][1:])
            if tag == "details":
                self.details.append(a["id"])

    parsed = Parse()
    parsed.feed(body)
    assert set(parsed.hrefs) - {"verdict"} <= parsed.ids  # every link lands on the page
    m = verdict_matrix(stored)
    assert parsed.details == [f"claim-{cid}" for cid in m.claims]  # one fold per claim id

    matrix = body[
        body.index('class="matrix"') : body.index("</table>", body.index('class="matrix"'))
    ]
    cells = re.findall(r'<td class="v v-(\w+)"><a href="#([^"]+)">', matrix)
    assert len(cells) == len(m.cells)  # every cell with rows links; an empty one shows a dash
    assert matrix.count('class="v-none"') == len(m.claims) * len(m.tasks) - len(m.cells)
    tones = {"green": SUPPORTED, "red": NOT_SUPPORTED, "amber": INCONCLUSIVE}
    in_order = [m.cell(c, t) for c in m.claims for t in m.tasks if m.cell(c, t)]
    for (tone, href), cell in zip(cells, in_order, strict=True):
        assert tone == cell.tone and tones.get(tone, cell.verdict) == cell.verdict
        # the link lands on the first row of the cell, inside the claim's fold
        fold = body[body.index(f'<details id="claim-{cell.claim_id}"') :]
        fold = fold[: fold.index("</details>")]
        row = fold[fold.index(f'<tr id="{href}">') :]
        first = ledger.loc[cell.rows[0]]
        assert row.startswith(f'<tr id="{href}"><td class="l">')
        assert f">{first.test}</td>" in row[: row.index("</tr>")]
    assert hostile not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in matrix
    # the rule and the correction once per claim, not in every row
    fold = body[body.index('<details id="claim-12"') :]
    fold = fold[: fold.index("</details>")]
    assert fold.count("supported if the corrected interval") == 1
    assert fold.count("<tr") == 1 + 18 and "18 rows in the family" in fold
    n_family = int(ledger.alpha.notna().sum())
    assert body.count(f"Holm over the {n_family} rows") == 1


def test_each_claim_states_its_split_power_and_the_queries_that_would_decide():
    """Under the matrix, per claim: the split its rows selected on, the range of differences
    they detect, and the most eval queries an inconclusive row needs."""
    import math

    import numpy as np

    from cgar_interp.claims import Claim, build_ledger
    from cgar_interp.claims.base import ClaimDefinition
    from cgar_interp.claims.matrix import power_line, verdict_matrix
    from cgar_interp.claims.stats import Samples

    def rows(tables, manifest):
        out = []
        for task, lift in (("a", 0.5), ("b", 0.1)):
            z = np.linspace(-1, 1, 40)
            v = lift + 0.6 * (z - z.mean()) / z.std(ddof=1)  # mean lift, sd 0.6 exactly
            out.append(
                Claim("9", "toy", "t", "r", task, value=float(v.mean()), control_value=0.0,
                      samples=Samples.paired(v, np.zeros(40)), selected_on="fit", margin=0.2,
                      key="k")
            )  # fmt: skip
        return out

    ledger = build_ledger({}, {}, claims=(ClaimDefinition("9", "toy", (), rows),))
    line = power_line(verdict_matrix(ledger), "9")
    inconclusive = ledger[ledger.verdict == "inconclusive"]
    assert "selected on: fit" in line
    lo, hi = ledger.detectable.min(), ledger.detectable.max()
    assert f"detectable diff {lo:.3g}-{hi:.3g}" in line
    assert len(inconclusive) == 1  # b: +0.1 with se 0.095: the interval holds 0 and 0.2
    need = inconclusive.n_needed.max()
    assert math.isfinite(need) and f"n to decide up to {int(need)}" in line
