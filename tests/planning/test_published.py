"""docs/time.md "Published errors": the table of public long-context prefill measurements is
recomputed from the shipped catalog and time model (qwenprep.planning.published) and must equal the
doc;
each row lies inside its band or the doc says why not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qwenprep.planning.published import ROWS, table_lines

DOC = Path(__file__).resolve().parents[2] / "docs" / "time.md"


def _doc_table() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- published-rows:")
    end = text.index("<!-- /published-rows -->")
    return text[start:end].splitlines()[1:]


def test_the_doc_table_is_the_code() -> None:
    assert _doc_table() == table_lines()


def test_rows_are_public_long_context_and_sourced() -> None:
    assert len(ROWS) >= 12  # issue 23: at least 12 public measurements
    for r in ROWS:
        assert r.tokens >= 32768 and r.source.startswith("https://"), r
        assert r.measured_s > 0


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.model}-{r.tokens}" for r in ROWS])
def test_each_row_is_inside_its_band_or_the_doc_says_why(row) -> None:  # type: ignore[no-untyped-def]
    est = row.estimate()
    assert est.seconds_at_peak and est.seconds_typical
    lo, hi = est.seconds_typical
    assert hi <= 4 * est.seconds_at_peak  # the band stays within 4x of the floor
    if row.inside():
        assert not row.outside_why
    else:
        assert row.outside_why, row
        # the doc names the row and gives the same reason
        doc = " ".join(DOC.read_text(encoding="utf-8").split())
        assert f"Outside: **{row.model} at {row.tokens // 1000}K on {row.gpus} " in doc
        assert "the tensor-parallel all-reduces this model leaves out" in row.outside_why
        assert "the tensor-parallel all-reduces this model leaves out" in doc


def test_the_lmsys_series_inside_under_either_chunking() -> None:
    # the lmsys post's Qwen examples: dynamic chunks from 18,432, or fixed 6,144-token chunks
    lmsys = [r for r in ROWS if r.model == "Qwen3-235B-A22B-FP8" and r.layout.pp == 8]
    assert [r.tokens for r in lmsys] == [131072, 262144, 524288, 1048576]
    assert [r.measured_s for r in lmsys] == [10.54, 32.68, 114.33, 420.91]
    for r in lmsys:
        assert r.inside()
        # the blog's other example, fixed 6,144-token chunks: 128K and 256K lie 0.4% and 0.3%
        # below the band's fast end since the TP all-reduces joined the floor (docs/time.md)
        lo, hi = replace(r, chunk=6144, dynamic_chunking=False).estimate().seconds_typical or (0, 0)
        assert 0.995 * lo <= r.measured_s <= hi
    first = lmsys[0].estimate()
    assert first.seconds_typical is not None and first.terms is not None
    # 128K: 6.17 s of FLOPs + 1.34 s of fill and drain + 5 ms over 3 node boundaries + 30 ms
    # + 0.11 s of TP 4 all-reduces (NVLS on the H20's NVSwitch: 1x the tensor each way)
    assert first.terms.compute == pytest.approx(6.166, abs=1e-3)
    assert first.terms.pp_bubble == pytest.approx(1.344, abs=1e-3)
    assert first.terms.tp_allreduce == pytest.approx(0.1113, abs=1e-4)
    assert first.terms.cross_node_boundaries == 3
    assert first.seconds_typical[0] < 10.54 < first.seconds_typical[1]
