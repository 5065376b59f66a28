"""The CLI shell: every command explains itself, bad flags exit 2, overrides may follow flags."""

from __future__ import annotations

import json

import pytest

from tabula.cli import COMMANDS, main


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"tabula {command}" in out
    assert len(out.splitlines()) > 3


def test_unknown_flag_is_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "specs/quickstart.yaml", "--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-flag" in err
    assert err.startswith("usage: tabula validate")  # the command's own usage, not the top level's


def test_a_dotted_path_without_a_value_suggests_an_override(specs_dir, capsys):
    assert main(["validate", str(specs_dir / "quickstart.yaml"), "model.n_layers"]) == 2
    assert "did you mean `model.n_layers=VALUE`?" in capsys.readouterr().err


def test_overrides_after_a_flag_are_applied(specs_dir, capsys):
    code = main(["validate", str(specs_dir / "quickstart.yaml"), "--json", "model.n_layrs=2"])
    assert code == 2
    result = json.loads(capsys.readouterr().out)
    assert result["errors"][0]["path"] == "model.n_layrs"
    assert result["errors"][0]["suggestion"] == "n_layers"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
