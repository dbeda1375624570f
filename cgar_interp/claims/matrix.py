"""The claim x task matrix of a ledger: the verdict a person reads in one screen.

:func:`verdict_matrix` turns a ledger (``tables/claims.parquet``, the frame of
:func:`~cgar_interp.claims.ledger.build_ledger`) into one :class:`Cell` per (claim id, task):
rows are the claim ids in ledger order (sub-ids ``3a``, ``3b`` are rows of their own), columns
the tasks in ledger order with ``all`` last. A cell holding several ledger rows (claim 2 has one
per context layer and metric) shows their verdict if they agree, else the counts
(``3 sup / 1 inc / 2 not``), and the key number of its *headline row* -- the first row of the
cell in ledger order that yields a verdict: ``value - control [corrected interval]``, or
``v=value [95% CI]`` for a row decided by a rule of its own. A ledger with a ``seed`` column
(one row per seed plus rows of seed ``all`` holding the overall verdict) shows the overall
verdict in the cell and the verdict of each seed as a letter (``S S I``).

Rules and corrections are stated once per claim (:class:`ClaimSummary`), the family of the
correction once per ledger (:attr:`VerdictMatrix.family`).

:func:`matrix_lines` lays the matrix out as text no wider than ``width`` columns
(``cgar verdict RUN``), :func:`row_lines` every row with the split it selected on, its paired
interval, its corrected alpha, the difference it can detect and, where inconclusive, the
queries that would decide it (``cgar verdict RUN --rows``). Both return lines of
``(text, tone)`` segments, tones of :data:`TONES`, so a terminal can colour them and a test
can read them as plain text (:func:`plain`). The report draws the same matrix in HTML
(:func:`cgar_interp.report.ledger_html`).

How to read it: docs/science.md#reading-the-verdict. Imports nothing of the package but
:mod:`.base`.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, fields

import pandas as pd

from .base import (
    CONSISTENCY,
    DECIDED,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PENDING,
    SUPPORTED,
    UNTESTABLE,
    Claim,
)

WIDTH = 100
"""The width ``cgar verdict`` fits its text to."""

ALL = "all"
"""The pooled column (task) and the overall row of a multi-seed ledger (seed)."""

TONES = {
    SUPPORTED: "green",
    NOT_SUPPORTED: "red",
    INCONCLUSIVE: "amber",
    PENDING: "grey",
    UNTESTABLE: "grey",
    CONSISTENCY: "grey",
}
"""The colour of each verdict; a cell whose rows disagree has the tone ``mixed``."""

ORDER = (SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED, UNTESTABLE, PENDING, CONSISTENCY)
"""The order of the counts in a cell whose rows disagree."""

SHORT = {
    SUPPORTED: "sup",
    INCONCLUSIVE: "inc",
    NOT_SUPPORTED: "not",
    UNTESTABLE: "untest",
    PENDING: "pend",
    CONSISTENCY: "cons",
}
"""The verdict in a count (``3 sup / 1 inc``)."""

LETTERS = {
    SUPPORTED: "S",
    INCONCLUSIVE: "I",
    NOT_SUPPORTED: "N",
    UNTESTABLE: "U",
    PENDING: "P",
    CONSISTENCY: "C",
}
"""The verdict of one seed in a cell; ``~`` where that seed's rows disagree."""

MIXED = "~"

Segment = tuple[str, str | None]
"""A piece of a text line and its tone (None: plain)."""

_DEFAULTS = {f.name: f.default for f in fields(Claim) if f.name != "samples"}
_RANK = re.compile(r":? rank \d+, alpha_i = [^ ,;()]+")


@dataclass(frozen=True)
class Cell:
    """The rows of one claim id on one task.

    Attributes:
        claim_id, task: where it sits.
        rows: positions (0-based, ``ledger.iloc``) of its rows that carry the verdict (those of
            seed ``all`` in a multi-seed ledger), in ledger order.
        counts: ``(verdict, number of rows)`` in :data:`ORDER`, verdicts present only.
        headline: the position of its headline row (the first that yields a verdict, else the
            first).
        number: the headline row's key number as text (``+0.12 [0.05, 0.19]``), or ``""``.
        seeds: ``(seed, letter)`` per seed of a multi-seed ledger (empty otherwise).
    """

    claim_id: str
    task: str
    rows: tuple[int, ...]
    counts: tuple[tuple[str, int], ...]
    headline: int
    number: str
    seeds: tuple[tuple[str, str], ...] = ()

    @property
    def verdict(self) -> str | None:
        """The verdict of every row, or None where they disagree."""
        return self.counts[0][0] if len(self.counts) == 1 else None

    @property
    def tone(self) -> str:
        """A tone of :data:`TONES`, or ``mixed``."""
        return TONES.get(self.verdict, "grey") if self.verdict else "mixed"

    def word_segments(self, compact: bool = False) -> list[Segment]:
        """The verdict, or the counts each in its tone (``3S 1I 2N`` when ``compact``)."""
        if self.verdict:
            return [(self.verdict, self.tone)]
        out: list[Segment] = []
        for i, (verdict, n) in enumerate(self.counts):
            if i:
                out.append((" " if compact else " / ", None))
            text = f"{n}{LETTERS[verdict]}" if compact else f"{n} {SHORT[verdict]}"
            out.append((text, TONES.get(verdict, "grey")))
        return out

    def word(self, compact: bool = False) -> str:
        """:meth:`word_segments` as plain text."""
        return "".join(text for text, _ in self.word_segments(compact))

    @property
    def seed_letters(self) -> str:
        """The seeds' verdicts, ``S S I`` (empty for a ledger of one seed)."""
        return " ".join(letter for _, letter in self.seeds)


@dataclass(frozen=True)
class ClaimSummary:
    """What a claim id states once: its title, its rules, its correction.

    Attributes:
        claim_id, title: the claim; ``short``: the title as the matrix labels it.
        rules: the distinct rules of its rows, in full, in ledger order.
        rule: the rules in one short line (``S if > 0, N if < 0.02``).
        correction: its part in the family of the correction, in words.
        counts: ``(verdict, rows)`` over all its rows, in :data:`ORDER`.
        rows: positions of all its rows (every seed), in ledger order.
    """

    claim_id: str
    title: str
    short: str
    rules: tuple[str, ...]
    rule: str
    correction: str
    counts: tuple[tuple[str, int], ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class VerdictMatrix:
    """The claim x task matrix of one ledger (see :func:`verdict_matrix`).

    Attributes:
        ledger: the ledger, with every column of :data:`~cgar_interp.claims.base.COLUMNS`
            (those an older ledger lacks filled with their defaults) and a string ``seed``
            column where it has one.
        claims: the claim ids, in ledger order; ``tasks``: the tasks, ``all`` last.
        cells: ``{(claim_id, task): Cell}`` where the ledger has rows.
        summaries: ``{claim_id: ClaimSummary}``.
        family: the correction's family, stated once per distinct family (usually one).
        seeds: the seeds of a multi-seed ledger, in ledger order (``all`` not among them).
    """

    ledger: pd.DataFrame
    claims: tuple[str, ...]
    tasks: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]
    summaries: dict[str, ClaimSummary]
    family: tuple[str, ...]
    seeds: tuple[str, ...] = ()

    def cell(self, claim_id: str, task: str) -> Cell | None:
        """The cell of a claim id on a task (None where the ledger has no row)."""
        return self.cells.get((claim_id, task))


# --------------------------------------------------------------------------------------------
# building the matrix


def normalise(ledger: pd.DataFrame) -> pd.DataFrame:
    """The ledger with every column of a :class:`~cgar_interp.claims.base.Claim` row (those an
    older ledger lacks: their defaults), a clean 0..n-1 index and ``seed`` as text."""
    frame = ledger.reset_index(drop=True).copy()
    for name, default in _DEFAULTS.items():
        if name not in frame.columns:
            frame[name] = default
    for name in ("claim_id", "task", "verdict", "claim", "rule", "correction", "selected_on"):
        frame[name] = frame[name].fillna("").astype(str)
    if "seed" in frame.columns:
        frame["seed"] = frame["seed"].astype(str)
    return frame


def counts_of(verdicts: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``(verdict, n)`` in :data:`ORDER` (unknown verdicts after, as found).

    >>> counts_of(["not supported", "supported", "supported"])
    (('supported', 2), ('not supported', 1))
    """
    verdicts = list(verdicts)
    known = [v for v in ORDER if v in verdicts]
    other = [v for v in dict.fromkeys(verdicts) if v not in ORDER]
    return tuple((v, verdicts.count(v)) for v in (*known, *other))


def fmt(x: float) -> str:
    """A number at the precision a cell needs: two decimals, fewer for large magnitudes.

    >>> fmt(0.1234), fmt(-0.05), fmt(23.456), fmt(1234.5)
    ('0.12', '-0.05', '23.5', '1234')
    """
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def number_text(x, spec: str = ".3g", missing: str = "-") -> str:
    """A number of a ledger row as text (``format(x, spec)``); ``missing`` where it is absent
    or not finite.

    >>> number_text(0.001316), number_text(float("nan")), number_text(None, missing="")
    ('0.00132', '-', '')
    """
    try:
        x = float(x)
    except (TypeError, ValueError):
        return missing
    return format(x, spec) if math.isfinite(x) else missing


def _finite(*xs) -> bool:
    return all(isinstance(x, int | float) and math.isfinite(x) for x in xs)


def key_number(row, number=None) -> str:
    """A row's key number: the difference with its corrected interval (``+0.12 [0.05,
    0.19]``), or for a row without one its value (``v=0.81 [0.70, 0.90]``); ``""`` if none.
    ``number`` formats each number (default :func:`fmt`).

    >>> key_number(pd.Series({"diff": 0.12, "diff_low": 0.05, "diff_high": 0.19}))
    '+0.12 [0.05, 0.19]'
    >>> key_number(pd.Series({"diff": math.nan, "value": 0.31, "ci_low": math.nan}))
    'v=0.31'
    """
    fmt_ = number or fmt
    diff = row.get("diff", math.nan)
    if _finite(diff):
        sign = "+" if diff >= 0 else ""
        text = f"{sign}{fmt_(diff)}"
        low, high = row.get("diff_low", math.nan), row.get("diff_high", math.nan)
        return text + (f" [{fmt_(low)}, {fmt_(high)}]" if _finite(low, high) else "")
    value = row.get("value", math.nan)
    if _finite(value):
        low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
        interval = f" [{fmt_(low)}, {fmt_(high)}]" if _finite(low, high) else ""
        return f"v={fmt_(value)}" + interval
    return ""


def family_of(correction: str) -> str:
    """A row's correction without its own rank and alpha_i: the statement of its family.

    >>> family_of("Holm over the 53 rows of this ledger that yield a verdict: rank 16, "
    ...           "alpha_i = 0.00132 (family alpha 0.05)")
    'Holm over the 53 rows of this ledger that yield a verdict (family alpha 0.05)'
    """
    return re.sub(r"\s+", " ", _RANK.sub("", correction)).strip()


def short_titles(titles: dict[str, str]) -> dict[str, str]:
    """The label of each claim id in the matrix: its title, or for sub-ids of one claim whose
    titles share the text before ``": "``, the text after it (what tells them apart)."""
    groups: dict[str, list[str]] = {}
    for cid in titles:
        groups.setdefault(re.sub(r"[A-Za-z]+$", "", cid) or cid, []).append(cid)
    out = dict(titles)
    for ids in groups.values():
        heads = {titles[i].partition(": ")[0] for i in ids}
        if len(ids) > 1 and len(heads) == 1 and all(": " in titles[i] for i in ids):
            for i in ids:
                rest = titles[i].partition(": ")[2]
                out[i] = rest[:1].upper() + rest[1:]
    return out


def _compact_rule(row) -> str:
    """A row's rule in a few words (``S if diff > 0, N if diff < 0.02, else I``: *diff > x*
    when the whole corrected interval of value - control lies above x); the full rule of a
    row its claim function decides."""
    if row.kind == "difference":
        if row.rule_kind == "equivalence":
            return f"S if diff within ±{row.margin:g}, N if wholly outside, else I"
        return f"S if diff > {row.threshold:g}, N if diff < {row.margin:g}, else I"
    if row.kind == CONSISTENCY or row.verdict == CONSISTENCY:
        return "consistency check (never evidence)"
    if row.kind == PENDING:
        return "pending (waits for a probe this run lacks)"
    if row.kind == UNTESTABLE:
        return "untestable (the run's data cannot decide it)"
    return row.rule or row.kind


def _summary(claim_id: str, part: pd.DataFrame, short: str) -> ClaimSummary:
    rules = tuple(dict.fromkeys(r for r in part.rule if r))
    compact = tuple(dict.fromkeys(_compact_rule(r) for r in part.itertuples()))
    rule = "; ".join(compact)
    in_family = part[part.alpha.apply(_finite)]
    levels = in_family.alpha.astype(float)
    families = tuple(dict.fromkeys(family_of(c) for c in part.correction if c))
    if len(levels):
        lo, hi = levels.min(), levels.max()
        span = f"{lo:.2g}" if math.isclose(lo, hi) else f"{lo:.2g}-{hi:.2g}"
        if "seed" in part.columns:  # each seed's ledger is a family of its own
            per_seed = int(in_family.groupby("seed").size().max())
            correction = f"{per_seed} rows per seed's family, alpha_i {span}"
        else:
            correction = f"{len(levels)} rows in the family, alpha_i {span}"
    elif families:
        correction = "; ".join(families)
    else:
        correction = "not in the family (no p-value: decided by its own rule)"
    return ClaimSummary(
        claim_id=claim_id,
        title=part.claim.iloc[0],
        short=short,
        rules=rules,
        rule=rule,
        correction=correction,
        counts=counts_of(part.verdict),
        rows=tuple(int(i) for i in part.index),
    )


def _cell(claim_id: str, task: str, part: pd.DataFrame, by_seed: dict) -> Cell:
    decided = [i for i, v in zip(part.index, part.verdict, strict=True) if v in DECIDED]
    headline = int(decided[0] if decided else part.index[0])
    seeds = []
    for seed, rows in by_seed.items():
        counts = counts_of(rows.verdict)
        seeds.append((seed, LETTERS.get(counts[0][0], "?") if len(counts) == 1 else MIXED))
    return Cell(
        claim_id=claim_id,
        task=task,
        rows=tuple(int(i) for i in part.index),
        counts=counts_of(part.verdict),
        headline=headline,
        number=key_number(part.loc[headline]),
        seeds=tuple(seeds),
    )


def verdict_matrix(ledger: pd.DataFrame) -> VerdictMatrix:
    """The claim x task matrix of a ledger (see the module's docstring)."""
    frame = normalise(ledger)
    seeded = "seed" in frame.columns
    seeds = tuple(dict.fromkeys(s for s in frame.seed if s != ALL)) if seeded else ()
    overall = frame
    if seeded and (frame.seed == ALL).any():
        overall = frame[frame.seed == ALL]
    claims = tuple(dict.fromkeys(frame.claim_id))
    tasks = [t for t in dict.fromkeys(frame.task) if t != ALL]
    tasks = tuple(tasks + ([ALL] if ALL in set(frame.task) else []))
    titles = {cid: frame.claim[frame.claim_id == cid].iloc[0] for cid in claims}
    shorts = short_titles(titles)
    cells = {}
    for (cid, task), part in overall.groupby(["claim_id", "task"], sort=False):
        by_seed = {}
        if seeds:
            mine = frame[(frame.claim_id == cid) & (frame.task == task) & (frame.seed != ALL)]
            by_seed = {s: rows for s, rows in mine.groupby("seed", sort=False)}
            by_seed = {s: by_seed[s] for s in seeds if s in by_seed}
        cells[(cid, task)] = _cell(cid, task, part, by_seed)
    summaries = {cid: _summary(cid, frame[frame.claim_id == cid], shorts[cid]) for cid in claims}
    family = tuple(dict.fromkeys(family_of(c) for c in frame.correction if c))
    return VerdictMatrix(frame, claims, tasks, cells, summaries, family, seeds)


# --------------------------------------------------------------------------------------------
# text


def plain(lines: Sequence[Sequence[Segment]]) -> list[str]:
    """Lines of segments as plain text."""
    return ["".join(text for text, _ in line) for line in lines]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _label_lines(cid: str, title: str, id_w: int, width: int, n: int) -> list[str]:
    """The label column of a matrix row: the id, then the title wrapped on ``n`` lines."""
    room = max(width - id_w - 1, 1)
    wrapped = textwrap.wrap(title, room) or [""]
    if len(wrapped) > n:
        wrapped = wrapped[: n - 1] + [_clip(" ".join(wrapped[n - 1 :]), room)]
    wrapped += [""] * (n - len(wrapped))
    return [f"{(cid if i == 0 else ''):<{id_w}} {text}" for i, text in enumerate(wrapped)]


def matrix_lines(matrix: VerdictMatrix, width: int = WIDTH) -> list[list[Segment]]:
    """The matrix as text no wider than ``width``: per claim id a label (id, short title) and
    per task a cell of two lines (verdict or counts; key number), three with seeds (letters).
    Counts go compact (``3S 1I``) and the tasks into several blocks where they would not fit."""
    gap, id_w = 2, max((len(c) for c in matrix.claims), default=1)
    min_label = id_w + 1 + 12
    compact = False

    def col_width(task: str, compact: bool) -> int:
        cells = [matrix.cell(c, task) for c in matrix.claims]
        content = [
            len(x)
            for cell in cells
            if cell
            for x in (cell.word(compact), cell.number, cell.seed_letters)
        ]
        return max([*content, min(len(task), 24), 3])

    widths = {t: col_width(t, False) for t in matrix.tasks}
    if min_label + sum(w + gap for w in widths.values()) > width:
        compact = True
        widths = {t: col_width(t, True) for t in matrix.tasks}
    blocks: list[list[str]] = [[]]
    used = min_label
    for task in matrix.tasks:
        need = min(widths[task], width - min_label - gap) + gap
        if blocks[-1] and used + need > width:
            blocks.append([])
            used = min_label
        blocks[-1].append(task)
        used += need
    n_lines = 3 if matrix.seeds else 2
    out: list[list[Segment]] = []
    for b, block in enumerate(blocks):
        cols = {t: min(widths[t], width - min_label - gap) for t in block}
        label_w = min(width - sum(w + gap for w in cols.values()), id_w + 1 + 44)
        if b:
            out.append([("", None)])
        header: list[Segment] = [(f"{'claim':<{label_w}}", None)]
        header += [(" " * gap + f"{_clip(t, w):<{w}}", None) for t, w in cols.items()]
        out.append(_rstrip(header))
        for cid in matrix.claims:
            labels = _label_lines(cid, matrix.summaries[cid].short, id_w, label_w, n_lines)
            lines: list[list[Segment]] = [[(f"{text:<{label_w}}", None)] for text in labels]
            for task, w in cols.items():
                cell = matrix.cell(cid, task)
                if cell is None:
                    parts: list[list[Segment]] = [[("-", "grey")], [], []]
                else:
                    parts = [cell.word_segments(compact), [(cell.number, None)]]
                    parts.append([(cell.seed_letters, None)])
                for i, line in enumerate(lines):
                    segs = parts[i] if i < len(parts) else []
                    text_len = sum(len(t) for t, _ in segs)
                    if text_len > w:  # only when a single cell is wider than the screen
                        segs = [(_clip("".join(t for t, _ in segs), w), segs[0][1])]
                        text_len = w
                    line.append((" " * gap, None))
                    line.extend(segs)
                    line.append((" " * (w - text_len), None))
            out.extend(_rstrip(line) for line in lines)
    return out


def _rstrip(line: list[Segment]) -> list[Segment]:
    """A line without its trailing blanks (the padding of its last cell)."""
    line = list(line)
    while line and not line[-1][0].strip():
        line.pop()
    if line:
        line[-1] = (line[-1][0].rstrip(), line[-1][1])
    return line


def legend_lines(matrix: VerdictMatrix, width: int = WIDTH) -> list[list[Segment]]:
    """What a cell says, then the family of the correction once and one line per claim id:
    its rules in short and its part in the family."""
    text = (
        "Each cell: the verdict of its rows, or where they disagree their counts (S supported, "
        "I inconclusive, N not supported, U untestable, P pending, C consistency check); then "
        "its headline row's value - control [interval at the row's Holm level] (v= a value "
        "decided by a rule of its own)."
    )
    if matrix.seeds:
        text += (
            f" Third line: the verdict of each seed ({', '.join(matrix.seeds)}; ~ where that "
            "seed's rows disagree); the cell's verdict is the overall one (supported only if "
            "every seed supports)."
        )
    out: list[list[Segment]] = [[(t, None)] for t in textwrap.wrap(text, width)]
    for family in matrix.family or ("no correction: no row yields a p-value",):
        for t in textwrap.wrap(f"Correction: {family}.", width):
            out.append([(t, None)])
    id_w = max((len(c) for c in matrix.claims), default=1)
    for cid in matrix.claims:
        s = matrix.summaries[cid]
        line = f"{cid:<{id_w}}  rule: {s.rule} | {s.correction}"
        out.append([(_clip(line, width), None)])
        power = power_line(matrix, cid)
        if power:
            out.append([(_clip(" " * (id_w + 2) + power, width), None)])
    out.append(
        [(_clip("cgar verdict RUN --rows: every row in full; --json: the ledger", width), None)]
    )
    return out


def power_line(matrix: VerdictMatrix, claim_id: str) -> str:
    """One claim's selection and power in a line: the splits its rows selected on, the range
    of the differences they could detect (80% power at their Holm level), and for its
    inconclusive rows the most eval queries one of them needs to be decided ("" when none of
    its rows yields a verdict)."""
    frame = matrix.ledger.iloc[list(matrix.summaries[claim_id].rows)]
    if "seed" in frame.columns:
        frame = frame[frame["seed"] != ALL]
    frame = frame[frame.kind == "difference"]
    if frame.empty:
        return ""
    splits = sorted({str(x) for x in frame.selected_on if str(x)})
    parts = [f"selected on: {', '.join(splits) or 'nothing'}"]
    det = frame.detectable.dropna()
    if len(det):
        parts.append(f"detectable diff {_sig(det.min())}-{_sig(det.max())}")
    inc = frame[frame.verdict == "inconclusive"]
    if len(inc):
        need = inc.n_needed.replace([float("inf")], float("nan")).dropna()
        more = f", n to decide up to {int(need.max())}" if len(need) else ""
        parts.append(f"{len(inc)} inconclusive{more}")
    return " | ".join(parts)


def _sig(x: float) -> str:
    return f"{x:.3g}"


def row_lines(matrix: VerdictMatrix, width: int = WIDTH) -> list[list[Segment]]:
    """Every row of the ledger, grouped by claim id (its title, rules and correction once):
    task (and seed), verdict, test in short, the split it selected on, the difference with its
    paired interval, alpha_i, the detectable difference, and where inconclusive the queries
    that would decide it; wrapped to ``width``."""
    frame = matrix.ledger
    out: list[list[Segment]] = []
    indent = "    "

    def wrap(text: str, first: str = "", rest: str = indent) -> None:
        for t in textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest):
            out.append([(t, None)])

    def fields_(parts: list[str]) -> None:
        """``parts`` joined by ``"; "``, broken between parts only (where one fits a line)."""
        line = indent
        for i, part in enumerate(parts):
            piece = part + (";" if i < len(parts) - 1 else "")
            if line.strip() and len(line) + 1 + len(piece) > width:
                out.append([(line, None)])
                line = indent
            line += ("" if not line.strip() else " ") + piece
        if line.strip():
            wrap(line.strip(), indent, indent)

    for family in matrix.family:
        wrap(f"Correction: {family}; each row gives its alpha_i.")
    for cid in matrix.claims:
        s = matrix.summaries[cid]
        out.append([("", None)])
        wrap(f"claim {cid}: {s.title}", rest="  ")
        for rule in s.rules:
            wrap(f"rule: {rule}", "  ", indent)
        wrap(f"correction: {s.correction}", "  ", indent)
        for i in s.rows:
            r = frame.loc[i]
            verdict = r["verdict"]
            seed = f" | seed {r['seed']}" if "seed" in frame.columns else ""
            head = f"{cid} | {r['task']}{seed} | "
            room = max(width - len(head) - len(verdict) - 3, 10)
            test = _clip(" ".join(str(r["test"]).split()), room)
            out.append([(head, None), (verdict, TONES.get(verdict)), (f" | {test}", None)])
            figures = []
            n = f", n = {int(r['n'])}" if _finite(r["n"]) and r["n"] > 0 else ""
            if _finite(r["diff"]):
                how = "paired" if str(r["method"]).startswith("paired") else "unpaired approx."
                figures.append(f"diff {key_number(r, _sig)} ({how}{n})")
            elif _finite(r["value"]):
                figures.append(f"value {key_number(r, _sig)[2:]}")
            figures.append(f"selected on {r['selected_on'] or '-'}")
            if _finite(r["alpha"]):
                figures += [
                    f"alpha_i {number_text(r['alpha'])}",
                    f"detectable {number_text(r['detectable'])}",
                ]
                if verdict == INCONCLUSIVE:
                    figures.append(f"n needed {number_text(r['n_needed'], '.0f')}")
            elif verdict != CONSISTENCY:
                figures.append("no p-value: not in the correction's family")
            fields_(figures)
    return out
