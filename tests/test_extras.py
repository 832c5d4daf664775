"""An optional dependency that is not installed is one line naming the extra that installs it."""

from __future__ import annotations

import sys

import pytest

from lstm_attn import cli, data, extras


@pytest.fixture
def without_statsmodels(monkeypatch):
    # None in sys.modules makes `import statsmodels...` raise ImportError, as on a machine without it.
    for name in ("statsmodels", "statsmodels.datasets", "statsmodels.datasets.co2"):
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_extra_names_the_extra(without_statsmodels):
    with pytest.raises(extras.MissingExtra, match=r"the built-in series 'co2' needs statsmodels, which is not "
                                                  r"installed: pip install 'lstm_attn\[train\]'"):
        data.load_builtin()


def test_the_command_line_says_it_in_one_line(without_statsmodels, tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["lstm-attn train: error: the built-in series 'co2' needs statsmodels, which "
                                        "is not installed: pip install 'lstm_attn[train]'"]
    assert not (tmp_path / "runs").exists()


def test_every_extra_named_is_one_of_pyproject_s():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = config["project"]["optional-dependencies"]
    for module, extra in extras.EXTRA_OF.items():
        assert any(dep.split(">")[0].split("=")[0] == module for dep in declared[extra]), (module, extra)
