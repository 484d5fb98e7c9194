"""The CLI explains itself: every experiment setting and option with its default, the version, one name for one
setting (the old one warns), system folders refused by every command that writes, `generate --compare`."""

from __future__ import annotations

import argparse
import dataclasses
import re
from importlib.metadata import version

import pytest
import torch

import interp
from interp.cli import build_parser, main
from interp.directions import Direction
from interp.experiments import load_registry, make_config, parse_settings
from interp.experiments.checks import settings_of


@pytest.mark.parametrize("name", sorted(load_registry()))
def test_reproduce_help_lists_every_setting_with_its_type_default_and_meaning(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["reproduce", name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--set KEY=VALUE" in out and "--progress" in out
    config = load_registry()[name].config_type
    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = "null" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        match = re.search(rf"^  {field.name} \((.+), default: (.*)\)\n      (.+)$", out, re.MULTILINE)
        assert match, f"{name}: {field.name} is not listed"
        assert match.group(2) == shown and match.group(3).strip(), f"{name}: {field.name}: {match.group(0)!r}"
    assert set(re.findall(r"^  (\w+) \(", out, re.MULTILINE)) == set(settings_of(config))


def test_reproduce_help_without_a_name_lists_the_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in load_registry())


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {"interp": parser, **actions[0].choices}


def test_every_option_has_help_that_shows_its_default():
    for command, parser in _subcommands(build_parser()).items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{command} {action.option_strings[0]} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                help_text = " ".join(action.help.split())
                assert f"{help_text} (default: {action.default})" in text, f"{command} {action.option_strings[0]}"


def test_version(capsys):
    assert interp.__version__ == version("interp")
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"interp {interp.__version__}\n"


def test_melbo_sae_path_is_an_alias_of_dictionary_that_warns(tmp_path, capsys, monkeypatch):
    with pytest.warns(DeprecationWarning, match="sae_path is renamed dictionary"):
        assert make_config("melbo", sae_path="x").dictionary == "x"
    with pytest.warns(DeprecationWarning, match="--set sae_path is renamed dictionary"):
        assert parse_settings(["melbo"], {"sae_path": str(tmp_path)}) == {"dictionary": str(tmp_path)}
    with pytest.raises(ValueError, match="sae_path: the old name of dictionary; give only dictionary"):
        make_config("melbo", sae_path="x", dictionary="y")
    assert "dictionary" in settings_of(load_registry()["melbo"].config_type)  # one name in every experiment
    assert not any("sae_path" in settings_of(e.config_type) for e in load_registry().values())
    import interp.models

    monkeypatch.setattr(interp.models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.warns(DeprecationWarning):  # the CLI names the new setting in its errors
        assert main(["reproduce", "melbo", "--set", f"sae_path={tmp_path / 'none'}", "--out", str(tmp_path)]) == 2
    assert "--set dictionary: " in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["reproduce", "steering", "--out", "{folder}"],
    ["train-sae", "--layers", "1", "--out", "{folder}"],
    ["train-sae", "--layers", "1", "--corpus", "{folder}/corpus.jsonl"],
    ["features", "--dictionary", "interp/data/saes/smollm2-135m-instruct/blocks.15.hook_resid_pre", "--out", "{folder}"],
])
def test_every_command_that_writes_refuses_system_folders(command, capsys, monkeypatch):
    import interp.models

    monkeypatch.setattr(interp.models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    for folder in ("/etc", "/usr/share"):
        assert main([part.format(folder=folder) for part in command]) == 2
        assert re.search(r"--(out|corpus): /\S+ is a system folder", capsys.readouterr().err)


def _columns(text: str) -> tuple[str, str]:
    """The two completions of a printed Comparison, each column's lines joined."""
    lines = text.split("\n")
    body = lines[2 : lines.index("")]
    left = " ".join(line.split(" | ", 1)[0].strip() for line in body).split()
    right = " ".join(line.split(" | ", 1)[1].strip() for line in body).split()
    return " ".join(left), " ".join(right)


def test_generate_compare_prints_the_unsteered_completion_beside_the_steered(tiny_folder, tmp_path, capsys):
    Direction(torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5, layer=1, model=str(tiny_folder),
              source="random").save(tmp_path / "d")
    args = ["generate", "--model", str(tiny_folder), "--prompt", "the cat sat on the", "--raw", "--max-new-tokens", "6",
            "--device", "cpu"]
    steer = ["--direction", str(tmp_path / "d"), "--scale", "4"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + steer) == 0
    steered = capsys.readouterr().out
    assert main(args + steer + ["--compare"]) == 0
    compared = capsys.readouterr().out
    assert "baseline" in compared and "intervened: Steer(4)" in compared and "next token" in compared
    assert _columns(compared) == (" ".join(plain.split()), " ".join(steered.split()))
    assert main(args + ["--compare"]) == 2
    assert "--compare need --direction" in capsys.readouterr().err
