"""The READMEs' figures against the committed files they come from (benchmarks/readme.py)."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme  # noqa: E402

READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


@pytest.mark.parametrize("path", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_table_matches_its_files(path):
    assert readme.BLOCK.search(path.read_text()), f"{path} has no generated block"
    stale = readme.update(path, check=True)
    assert not stale, f"{path}'s tables differ from their files; run `python benchmarks/readme.py`: {stale}"


def test_a_stale_block_is_found_and_rewritten(tmp_path):
    results = ROOT / "benchmarks" / "results" / "profile-nvidia-h200-2026-11-27.json"
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


@pytest.mark.parametrize("path", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_result_file_a_readme_names_is_committed(path):
    """A figure's evidence must exist: a renamed or deleted result file fails here, not in a reader's hands."""
    named = set(re.findall(r"results/([A-Za-z0-9_.-]+\.(?:json|md|log|png))", path.read_text()))
    assert named, f"{path} names no result file"
    missing = sorted(n for n in named if not (ROOT / "benchmarks" / "results" / n).is_file())
    assert not missing, f"{path} names result files that are not committed: {missing}"


# A measured figure: a number with the unit of a time, a rate, a size or a ratio.
MEASURED = re.compile(r"\d(?:[\d.,]*\d)?\s*(?:ms|µs|us|GB/s|GFLOP/s|TFLOP/s|GB|MB|%|x\b|×)")


def test_the_readme_states_no_measured_figure_outside_its_generated_blocks():
    """The top README's prose says what is faster and where; every figure comes from a committed file through a
    generated block, so that no number in it can go stale unnoticed."""
    prose = readme.BLOCK.sub("", (ROOT / "README.md").read_text())
    prose = re.sub(r"```.*?```", "", prose, flags=re.DOTALL)  # commands and code
    assert not MEASURED.findall(prose), MEASURED.findall(prose)
    # Nor words of the project's own process: a user knows the original model, not "the seed" or an issue number.
    assert not re.findall(r"\bissue \d+|\bADR\b|\bthe seed\b(?! and)|\bseed's (?:model|class)", prose, re.IGNORECASE)
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
