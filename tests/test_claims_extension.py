"""A researcher's claim, written here with the public API only, runs in the ledger beside the
paper's claims, is decided by the same rule, and shows in the report's ledger.

Two ways in: pass the claim to ``build_ledger(..., claims=...)``, or register it on
``EXTRA_CLAIMS`` (the default list of ``build_ledger``, which the report uses when a run has
no stored ledger). Nothing registers itself by being imported.
"""

from __future__ import annotations

import pandas as pd
import pytest

from cgar_interp.claims import (
    EXTRA_CLAIMS,
    PAPER_CLAIMS,
    SUPPORTED,
    Claim,
    ClaimDefinition,
    build_ledger,
    register_claim,
)

L = 4  # layers of the synthetic model
MANIFEST = {"architecture": {"n_layers": L}}
TOY_ID = "9"
TOY_TITLE = "Toy: lambda = 1 lifts label mass over lambda = 0 at the last layer"


def gate_table(lift: float = 0.5, width: float = 0.02) -> pd.DataFrame:
    """A small context-gate table (task ``t``): every lambda = 1 row is ``lift`` above lambda = 0."""
    rows = []
    for metric in ("label_mass", "vocab_correct", "label_correct"):
        for mode, c in (("decode", L), ("patch", 2)):
            for vector in ("context", "flipped", "random") if mode == "decode" else ("context",):
                for lam in (0.0, 1.0):
                    value = 0.1 + (lift if lam and vector == "context" else 0.0)
                    rows.append(
                        {"task": "t", "probe": "context_gate", "mode": mode, "vector": vector,
                         "q_layer": L, "c_layer": c, "lam": lam, "metric": metric,
                         "value": value, "n": 48, "ci_low": value - width,
                         "ci_high": value + width}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def toy_lift(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """The toy claim: decode-mode label mass at lambda = 1 against lambda = 0, per task."""
    assert set(tables) <= {"context_gate"}  # the ledger hands over the declared tables only
    gate = tables.get("context_gate")
    if gate is None:
        return []
    n_layers = manifest["architecture"]["n_layers"]
    sel = gate[
        (gate["mode"] == "decode")
        & (gate.vector == "context")
        & (gate.c_layer == n_layers)
        & (gate.metric == "label_mass")
    ]
    rows = []
    for task in sorted(sel.task.unique()):
        one = sel[(sel.task == task) & (sel.lam == 1.0)].iloc[0]
        zero = sel[(sel.task == task) & (sel.lam == 0.0)].iloc[0]
        rows.append(
            Claim(
                claim_id=TOY_ID,
                claim=TOY_TITLE,
                test="label mass at lambda = 1 against lambda = 0",
                reads="context_gate: mode=decode, vector=context, metric=label_mass",
                task=task,
                value=float(one.value),
                ci_low=float(one.ci_low),
                ci_high=float(one.ci_high),
                control="lambda = 0",
                control_value=float(zero.value),
                control_ci_low=float(zero.ci_low),
                control_ci_high=float(zero.ci_high),
                kind="difference",
                margin=0.02,
                figure=f"context_gate-{task}",
            )
        )
    return rows


TOY = ClaimDefinition(TOY_ID, TOY_TITLE, ("context_gate",), toy_lift)


@pytest.fixture
def registered_toy():
    """The toy claim on ``EXTRA_CLAIMS`` for one test, as a researcher's code would add it."""
    register_claim(TOY_ID, title=TOY_TITLE, tables=("context_gate",))(toy_lift)
    try:
        yield
    finally:
        EXTRA_CLAIMS.remove(TOY_ID)


def toy_rows(ledger: pd.DataFrame) -> pd.DataFrame:
    return ledger[ledger.claim_id == TOY_ID]


def test_a_claim_passed_to_the_ledger_gets_a_row_and_a_verdict():
    tables = {"context_gate": gate_table()}
    paper = build_ledger(tables, MANIFEST)
    ledger = build_ledger(tables, MANIFEST, claims=(*PAPER_CLAIMS, TOY))
    (row,) = toy_rows(ledger).itertuples()
    assert row.claim == TOY_TITLE and row.task == "t"
    assert row.verdict == SUPPORTED  # a lift of 0.5 with intervals of half-width 0.02
    assert row.diff == pytest.approx(0.5)
    m = int((ledger.kind == "difference").sum())
    assert f"Holm over the {m} rows" in row.correction  # counted with the paper's rows
    assert ledger.claim_id.iloc[-1] == TOY_ID  # after claim 8's rows: ordered by claim number
    assert TOY_ID not in set(paper.claim_id)  # the default list does not have it
    assert len(ledger) == len(paper) + 1


def test_a_claim_alone_and_without_its_table():
    ledger = build_ledger(
        {"context_gate": gate_table(lift=0.0, width=0.01)}, MANIFEST, claims=(TOY,)
    )
    assert set(ledger.claim_id) == {TOY_ID}
    assert ledger.verdict.iloc[0] == "not supported"  # no lift: below the 0.02 margin
    assert build_ledger({}, MANIFEST, claims=(TOY,)).empty


def test_claim_ids_must_be_unique():
    clash = ClaimDefinition("1", "Another claim 1", (), lambda tables, manifest: [])
    with pytest.raises(ValueError, match="repeated: 1"):
        build_ledger({}, MANIFEST, claims=(*PAPER_CLAIMS, clash))


def test_a_row_without_a_verdict_is_refused():
    def undecided(tables, manifest):
        return [Claim(TOY_ID, TOY_TITLE, "t", "r", "t", kind="rule", verdict="maybe")]

    with pytest.raises(ValueError, match="no valid verdict"):
        build_ledger({}, MANIFEST, claims=(ClaimDefinition(TOY_ID, TOY_TITLE, (), undecided),))


def test_a_registered_claim_joins_the_default_ledger(registered_toy):
    ledger = build_ledger({"context_gate": gate_table()}, MANIFEST)
    assert toy_rows(ledger).verdict.tolist() == [SUPPORTED]
    with pytest.raises(ValueError, match="already registered"):
        register_claim(TOY_ID, title=TOY_TITLE, tables=())(toy_lift)


def test_the_report_shows_the_claim_in_its_ledger(tmp_path):
    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    tables = {"context_gate": gate_table()}
    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest(
            {"identity": {"config_hash": "x"}, "suite": {"name": "s", "tasks": ["t"]}, **MANIFEST}
        )
        run.write_table("context_gate", tables["context_gate"])
        # the stored ledger, as a run writes it, with the researcher's claim in it
        run.write_table("claims", build_ledger(tables, MANIFEST, claims=(*PAPER_CLAIMS, TOY)))
    page = build_report(tmp_path / "run").read_text()
    start = page.index(f'<details id="claim-{TOY_ID}"', page.index('id="verdict"'))
    claim = page[start : page.index("</details>", start)]  # the claim's rows in the ledger
    assert f"<b>{TOY_ID}</b> {TOY_TITLE}" in claim
    assert '<a href="#fig-context_gate-t">context_gate-t</a>' in claim.split(TOY_TITLE)[1]


def test_the_report_of_a_run_without_a_stored_ledger_has_the_registered_claim(
    tmp_path, registered_toy
):
    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest(
            {"identity": {"config_hash": "x"}, "suite": {"name": "s", "tasks": ["t"]}, **MANIFEST}
        )
        run.write_table("context_gate", gate_table())
    page = build_report(tmp_path / "run").read_text()
    assert f"<b>{TOY_ID}</b> {TOY_TITLE}" in page
