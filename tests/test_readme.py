"""The READMEs' figures against the committed files they come from (benchmarks/readme.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import readme  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_generated_table_in_the_readme_matches_its_files():
    assert readme.BLOCK.search(README.read_text()), "the README has no generated block"
    stale = readme.update(README, check=True)
    assert not stale, f"README tables differ from their files; run `python benchmarks/readme.py`: {stale}"


def test_a_stale_block_is_found_and_rewritten(tmp_path):
    results = README.parent / "benchmarks" / "results" / "profile-nvidia-h200-2026-11-27.json"
    doc = tmp_path / "doc.md"
    doc.write_text(f"Intro.\n<!-- generated: profile {results} -->\n| typed | by hand |\n"
                   "<!-- end generated -->\nEnd.\n")
    assert readme.update(doc, check=True) == [f"profile {results}"]
    assert "| typed | by hand |" in doc.read_text()  # --check changes nothing
    assert readme.update(doc) == [f"profile {results}"]
    text = doc.read_text()
    assert text.startswith("Intro.\n") and text.endswith("<!-- end generated -->\nEnd.\n")
    assert "| typed | by hand |" not in text and "| dtype | B | T | H | backend |" in text
    assert readme.update(doc, check=True) == []


@pytest.mark.parametrize("spec, message", [("plot x.json", "unknown kind 'plot'"), ("eager", "names no file"),
                                           ("eager missing.json", "no file")])
def test_bad_blocks_are_clear_errors(tmp_path, spec, message):
    doc = tmp_path / "doc.md"
    doc.write_text(f"<!-- generated: {spec} -->\n<!-- end generated -->\n")
    with pytest.raises(ValueError, match=message):
        readme.update(doc)


def test_every_result_file_the_readme_names_is_committed():
    """A figure's evidence must exist: a renamed or deleted result file fails here, not in a reader's hands."""
    import re

    named = set(re.findall(r"benchmarks/results/([A-Za-z0-9_.-]+\.(?:json|md|log|png))", README.read_text()))
    assert named, "the README names no result file"
    missing = sorted(n for n in named if not (README.parent / "benchmarks" / "results" / n).is_file())
    assert not missing, f"the README names result files that are not committed: {missing}"
