"""The command line's own contract: help, version, and which errors are the user's."""

import subprocess
import sys

import pytest

import resnetkit
from resnetkit import cli
from resnetkit.errors import UserError


def run(*args):
    return subprocess.run([sys.executable, "-m", "resnetkit.cli", *map(str, args)], capture_output=True, text=True)


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0 and "train" in out.stdout and "report" in out.stdout
    assert "``" not in out.stdout  # plain text, not reStructuredText markup
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"resnetkit {resnetkit.__version__}"
    train_help = run("train", "--help").stdout
    assert "--widths" in train_help and "{A,B,C,none}" in train_help  # generated from the config fields


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def bad_input(pattern):
        raise UserError("no such thing")

    monkeypatch.setattr(cli, "list_models", bad_input)
    assert cli.main(["list"]) == 2
    assert capsys.readouterr().err == "resnetkit: error: no such thing\n"

    def bug(pattern):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(cli, "list_models", bug)
    with pytest.raises(ValueError, match="internal invariant"):  # not disguised as bad input
        cli.main(["list"])


def test_bad_model_arguments_are_user_errors():
    out = run("summary", "resnet20", "--shortcut", "D")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "shortcut must be one of" in out.stderr
    out = run("summary", "resnet20", "--widths", "16", "32")
    assert out.returncode == 2 and "one width per stage" in out.stderr and "Traceback" not in out.stderr


def test_summary_and_draw_build_the_stem_for_the_input_size_channels(tmp_path):
    # Fashion-MNIST's 1x28x28: 16 3x3 filters of 1 channel in ResNet-20's stem, 18 whitening
    # filters (9 directions and their negatives) in the fashion nets', 16 (8 directions) in pool16's.
    for model, filters in (("resnet20", 16), ("fashion_resnet8", 18), ("fashion_resnet8_pool", 18),
                           ("fashion_resnet8_pool16", 16)):
        out = run("summary", model, "--input-size", 1, 28, 28)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[2].split()[:4] == ["conv1", "Conv2d", f"1x{filters}x28x28", f"{filters * 9}"]
    drawn = run("draw", "fashion_resnet8", "--input-size", 1, 28, 28, "-o", tmp_path / "f8.svg")
    assert drawn.returncode == 0 and "1x28x28" in (tmp_path / "f8.svg").read_text()
    out = run("summary", "resnet20", "--input-size", 1, 28, 28, "--in-chans", 3)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "1 channels but --in-chans is 3" in out.stderr
