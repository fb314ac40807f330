"""Benchmark commands that share one document each keep to their own marked section."""

from __future__ import annotations

from pathlib import Path

from bench.report import MarkedSection, marked_sections


def test_a_section_is_appended_then_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nWritten by hand.\n")
    soak, failover = MarkedSection("soak", "soak"), MarkedSection("failover", "failover")
    soak.write(doc, "first soak")
    failover.write(doc, "failover figures")
    soak.write(doc, "second soak")
    text = doc.read_text()
    assert text.startswith("# Title\n\nWritten by hand.\n\n<!-- soak:begin")
    assert "first soak" not in text
    assert text.index("second soak") < text.index("failover figures")
    assert text.count(soak.begin) == text.count(failover.end) == 1


def test_a_rewrite_of_the_whole_document_can_keep_every_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    soak, failover = MarkedSection("soak", "soak"), MarkedSection("failover", "failover")
    doc.write_text("old report\n")
    failover.write(doc, "failover figures")
    soak.write(doc, "soak figures")
    kept = marked_sections(doc.read_text())
    assert "old report" not in kept
    assert kept == failover.wrap("failover figures") + "\n" + soak.wrap("soak figures")
