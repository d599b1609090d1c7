"""The command-line dispatcher, `shufflenet list` and `shufflenet profile`; every command answers --help."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from shufflenet import __version__, create_model, list_models, profile
from shufflenet.cli import list_models as list_cmd
from shufflenet.cli import profile as profile_cmd
from shufflenet.cli.main import COMMANDS, main


def test_profile_json_matches_library(capsys):
    assert main(["profile", "shufflenet_v1_g3_x1_0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = profile(create_model("shufflenet_v1_g3_x1_0"), 224)
    assert out == json.loads(report.to_json())
    assert out["macs"] == report.macs and out["flops"] == 2 * report.macs
    assert out["input_shape"] == [1, 3, 224, 224]
    assert abs(out["conv_macs"] / 1e6 - 137) <= 0.5  # Table 1, g = 3


def test_profile_options(capsys):
    args = [
        "shufflenet_v1_g8_x0_5",
        "--input-size",
        "32",
        "--num-classes",
        "10",
        "--small-input",
        "--json",
    ]
    assert profile_cmd.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    model = create_model("shufflenet_v1_g8_x0_5", num_classes=10, small_input=True)
    assert out == json.loads(profile(model, 32).to_json())
    assert (
        profile_cmd.main(
            ["shufflenet_v1_g3_x0_25", "--in-chans", "1", "--input-size", "64", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, 1, 64, 64]


def test_profile_table(capsys):
    assert main(["profile", "shufflenet_v1_g3_x0_5", "--input-size", "64", "--max-rows", "5"]) == 0
    text = capsys.readouterr().out
    report = profile(create_model("shufflenet_v1_g3_x0_5"), 64)
    assert f"{report.macs:,}" in text and f"{report.params:,}" in text
    assert "multiply-adds (MACs)" in text and "FLOPs (2 x MACs)" in text
    assert "more layers" in text


def test_profile_unknown_model(capsys):
    assert main(["profile", "shufflenet_v1_g3"]) == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, the close names in it
    assert line.startswith("shufflenet profile: error: unknown model 'shufflenet_v1_g3'")
    assert "did you mean shufflenet_v1_g3_x2_0" in line


def test_list(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    assert list_cmd.main(["shufflenet_v1_g8*"]) == 0
    assert capsys.readouterr().out.split() == list_models("shufflenet_v1_g8*")


def test_list_no_match(capsys):
    assert main(["list", "no_such_model*"]) == 1
    assert "no model matches 'no_such_model*'" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["profil"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'profil'" in err and "did you mean profile" in err


def test_top_level_help_and_version(capsys):
    assert main([]) == 0
    usage = capsys.readouterr().out
    for command in COMMANDS:
        assert command in usage
    assert main(["--help"]) == 0
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"shufflenet {__version__}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and command in out
    module = importlib.import_module(COMMANDS[command][0])
    assert isinstance(module.build_parser(), argparse.ArgumentParser)


@pytest.mark.parametrize("command", ["list", "profile"])
def test_defaults_shown_in_help(command):
    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    text = " ".join(parser.format_help().split())  # undo line wrapping
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default in (None, False, True, argparse.SUPPRESS) or action.nargs == 0:
            continue
        default = action.default
        shown = " ".join(str(default).split())
        assert f"default: {shown}" in text, (
            f"{command} {action.option_strings[0]}: default {default!r} not shown"
        )


@pytest.mark.parametrize(
    "argv", [["list", "--no-such-flag"], ["profile", "alexnet_g2", "--no-such-flag"]]
)
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--no-such-flag" in line


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "shufflenet", "list", "alexnet*"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["alexnet_g1", "alexnet_g2"]
