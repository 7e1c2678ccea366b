"""bench/report.py, the one markdown writer: tables, documents, number formats."""

from __future__ import annotations

import pytest

from bench import report

RESULT = {
    "quick": True,
    "date_utc": "2026-12-01T00:00:00+00:00",
    "git_commit": "abc1234",
    "git_dirty": False,
    "machine": {"cpu_model": "cpu", "cpu_count": 2, "platform": "linux", "loadavg_start": [1.0], "loadavg_end": [2.0]},
    "versions": {"python": "3.11"},
}


def test_a_table_aligns_first_left_rest_right_and_writes_empty_cells():
    assert report.table(["a", "b", "c"], [["x", 1, None], ["y", "", 2.5]]) == [
        "| a | b | c |",
        "|---|---:|---:|",
        "| x | 1 | |",
        "| y | | 2.5 |",
    ]
    assert report.pairs([("k", "v")]) == ["| | |", "|---|---|", "| k | v |"]


def test_a_row_of_the_wrong_width_or_a_wrong_alignment_is_an_error():
    with pytest.raises(ValueError, match="a row of 1 cells"):
        report.table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="2 columns, 3 alignments"):
        report.table(["a", "b"], [], "lll")


def test_a_document_has_title_header_facts_and_non_empty_blocks_one_blank_line_apart():
    text = report.document("T", RESULT, "para", [], "", ["l1", "l2"], facts=["fact"])
    assert text == (
        "# T\n\n"
        "- date (UTC): 2026-12-01T00:00:00+00:00; commit: `abc1234`; size: quick\n"
        "- machine: cpu, 2 CPUs, linux; load average 1.00 -> 2.00\n"
        "- versions: python 3.11\n"
        "- fact\n\n"
        "para\n\nl1\nl2\n"
    )
    assert report.document("T", None, "x") == "# T\n\nx\n"


def test_number_formats():
    assert (report.us(83.4), report.us(2410)) == ("83 µs", "2.41 ms")
    assert (report.ms(2.414), report.ms(2.414, 1), report.ms(1234)) == ("2.41 ms", "2.4 ms", "1.23 s")
    assert (report.na(None), report.na(1.234, ".1f")) == ("n/a", "1.2")
    assert report.stats_row("r", None, report.ms) == ["r", 0, "", "", "", ""]
    assert report.stats_row("r", {"n": 3, "p50": 1, "p99": 2, "mean": 1.5, "max": 2}, str) == [
        "r",
        3,
        "1",
        "2",
        "1.5",
        "2",
    ]
    assert report.goals_table({"g": True, "h": False}) == [
        "| goal | result |",
        "|---|---|",
        "| g | PASS |",
        "| h | FAIL |",
    ]
    assert (report.verdict(True), report.verdict(False, "why"), report.verdict(None)) == (
        "**pass**",
        "**FAIL**: why",
        "not judged",
    )
