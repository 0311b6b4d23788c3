"""tools/check_refs.py: a citation of a document the repository does not ship fails the lint, a clean file
or a reference to a file the repository holds passes."""

from __future__ import annotations

from pathlib import Path

from tools.check_refs import main

# Assembled at run time, so that this file holds no citation itself.
CITATIONS = [
    "see " + "spec" + "/losses.md §4.4",
    "as the " + "fidelity" + "-audit found",
    "the " + "gpu" + "-review.md stages",
    "the " + "architecture" + "-2 review",
    "shared/" + "review" + "/notes.md",
    "fixed in " + "Issue" + " 12",
    "see " + "issue" + " #7",
    "as the " + "spec" + " §5.2 says",
    "the " + "audit" + " §1 found",
]


def test_finds_each_planted_citation_with_its_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for i, citation in enumerate(CITATIONS):
        f = tmp_path / f"m{i}.py"
        f.write_text(f'"""A module."""\n\nX = 1  # {citation}\n')
        assert main([str(f)]) == 1, citation
        assert f"m{i}.py:3: X = 1  # {citation}" in capsys.readouterr().out


def test_accepts_clean_text_and_references_to_shipped_files(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs" / "spec").mkdir(parents=True)
    (tmp_path / "docs" / "spec" / "losses.md").write_text("# Losses\n")
    clean = tmp_path / "clean.toml"
    clean.write_text(
        "# DBM (AAAI 2025) Eq. 3; the BCL release's loss/contrastive.py; docs/FIDELITY.md, difference 4\n"
        "# the formulas are in docs/"
        + "spec"
        + "/losses.md, which ships; a tissue 3 and an issued 2 are words\n"
        "x = 1\n"
    )
    assert main([str(clean)]) == 0
    assert capsys.readouterr().out == ""
