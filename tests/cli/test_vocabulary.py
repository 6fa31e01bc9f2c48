"""One vocabulary across the nine commands, read from their parsers: ``--version``, help text for every option,
plain-text descriptions, ``--json FILE`` for a results file, list options that take ``a,b`` and ``a b``,
``--batch-size`` saying what it counts, and the old spellings still accepted."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scnet
from scnet.cli import bench, cam, data, export, predict, table, train, zoo
from scnet.cli import eval as eval_cli
from scnet.cli._common import ListOption

from ..utils import REPO_ROOT

MODULES = {
    "scnet-zoo": zoo,
    "scnet-data": data,
    "scnet-bench": bench,
    "scnet-train": train,
    "scnet-eval": eval_cli,
    "scnet-table": table,
    "scnet-predict": predict,
    "scnet-export": export,
    "scnet-cam": cam,
}
# The (sub)commands that report results: each takes --json FILE, and no other does.
REPORTING = {
    "scnet-zoo",
    "scnet-bench data",
    "scnet-bench model",
    "scnet-bench kernels",
    "scnet-eval",
    "scnet-table run",
    "scnet-table show",
    "scnet-predict",
    "scnet-export",
    "scnet-cam",
}
REST_MARKUP = re.compile(r"``|:[a-z]+:`")


def _walk(parser: argparse.ArgumentParser, path: str):
    """``(path, parser)`` for a command and each of its subcommands."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


PARSERS = dict(item for prog, module in MODULES.items() for item in _walk(module.build_parser(), prog))


def _options(path: str) -> dict[str, argparse.Action]:
    return {s: a for a in PARSERS[path]._actions for s in a.option_strings}


def test_the_nine_console_scripts_are_the_commands_checked_here():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {prog: f"{module.__name__}:main" for prog, module in MODULES.items()}
    assert {path.split()[0] for path in PARSERS} == set(MODULES)
    assert all(parser.prog == path for path, parser in PARSERS.items())


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_option_has_help(path):
    missing = []
    for action in PARSERS[path]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(name)
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{name} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()]
    assert not missing, f"{path}: no help text for {', '.join(missing)}"


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_help_is_plain_text(path):
    text = PARSERS[path].format_help()
    assert not REST_MARKUP.search(text), f"{path} --help prints reST markup:\n{text}"
    assert text.startswith(f"usage: {path} ")


@pytest.mark.parametrize("prog", sorted(MODULES))
def test_version(prog, capsys):
    with pytest.raises(SystemExit) as stop:
        MODULES[prog].main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"{prog} {scnet.__version__}\n"


def test_version_of_an_installed_console_script():
    """A real process: the console script when it is installed (else the module), its exit status and line."""
    script = shutil.which("scnet-eval", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "scnet.cli.eval"]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"scnet-eval {scnet.__version__}\n"


def test_a_results_file_is_asked_for_as_json_file():
    with_json = {path for path in PARSERS if "--json" in _options(path)}
    assert with_json == REPORTING
    for path in REPORTING:
        assert _options(path)["--json"].metavar == "FILE", path
    # --out names what a command makes (a folder, a file, a figure); no other spelling of an output exists.
    spellings = {s for path in PARSERS for s in _options(path)}
    assert not spellings & {"--output", "--out-json", "--json-out", "--results", "-o"}


@pytest.mark.parametrize("path", sorted(p for p in PARSERS if "--batch-size" in _options(p)))
def test_batch_size_says_what_it_counts(path):
    text = " ".join(_options(path)["--batch-size"].help.split())
    assert re.search(r"\bglobal\b|\bone process\b", text), f"{path} --batch-size: {text}"


def test_every_list_option_is_one_kind():
    lists = [
        (path, a.option_strings[0])
        for path in PARSERS
        for a in PARSERS[path]._actions
        if a.option_strings and (a.nargs in ("+", "*") or isinstance(a, argparse._AppendAction))
    ]
    assert lists, "no list options found"
    wrong = [f"{path} {option}" for path, option in lists if not isinstance(_options(path)[option], ListOption)]
    assert not wrong, f"list options not taking a,b and a b: {wrong}"


@pytest.mark.parametrize(
    ("path", "dest", "forms"),
    [
        ("scnet-zoo", "models", [["--models", "a,b"], ["--models", "a", "b"], ["--models", "a", "--models", "b"]]),
        ("scnet-data prepare-imagenet", "splits", [["--splits", "val,train"], ["--splits", "val", "train"]]),
        ("scnet-cam", "model", [["--model", "auto,resnet50"], ["--model", "auto", "--model", "resnet50"]]),
        ("scnet-table runs", "rows", [["--rows", "a,b"], ["--rows", "a", "b"], ["--rows", "a", "--rows", "b"]]),
    ],
)
def test_list_forms_are_one_list(path, dest, forms):
    required = {
        "scnet-cam": ["--checkpoint", "c.pth", "--image", "i.png", "--out", "f.png"],
        "scnet-table runs": ["release", "--data", "d"],
        "scnet-data prepare-imagenet": ["--src", "s", "--out", "o"],
    }.get(path, [])
    argv_prefix = path.split()[1:]
    values = [getattr(PARSERS[path.split()[0]].parse_args([*argv_prefix, *required, *form]), dest) for form in forms]
    assert all(v == values[0] for v in values), values
    assert len(values[0]) == 2


def test_list_forms_keep_file_names_whole():
    """--checkpoint takes paths, which may hold a comma: space-separated or repeated, never split."""
    parse = PARSERS["scnet-cam"].parse_args
    common = ["--image", "i.png", "--out", "f.png"]
    spaced = parse(["--checkpoint", "a,1.pth", "b.pth", *common]).checkpoint
    assert spaced == parse(["--checkpoint", "a,1.pth", "--checkpoint", "b.pth", *common]).checkpoint
    assert spaced == ["a,1.pth", "b.pth"]


def test_a_list_checks_each_value(capsys):
    with pytest.raises(SystemExit) as stop:
        PARSERS["scnet-data"].parse_args(["prepare-imagenet", "--src", "s", "--out", "o", "--splits", "train,test"])
    assert stop.value.code == 2
    assert "--splits: invalid choice: test (choose from train, val)" in capsys.readouterr().err
    defaults = PARSERS["scnet-data"].parse_args(["prepare-imagenet", "--src", "s", "--out", "o"])
    assert defaults.splits == ["train", "val"]
    assert PARSERS["scnet-data"].parse_args(["make-shards", "--data", "d", "--out", "o", "--splits", "val"]).splits == [
        "val"
    ]


def test_old_spellings_still_parse():
    kernels = ["kernels", "--model", "scnet50"]
    parse = PARSERS["scnet-bench"].parse_args
    assert parse(kernels).channels_last is True
    assert parse([*kernels, "--nchw"]).channels_last is False  # the alias of --no-channels-last
    assert parse([*kernels, "--no-channels-last"]).channels_last is False
    assert parse(["model", "--model", "a", "--channels-last"]).channels_last is True
    assert parse(["model", "--model", "a"]).channels_last is False
    assert "(alias)" in _options("scnet-bench kernels")["--nchw"].help


def _table(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = table.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_table_rows_either_way_and_overrides_anywhere(tmp_path):
    """scnet-table runs (the plan, nothing trained): the rows picked and the overrides' effect on the run
    folders are the same whichever way the list is written, and the old order (--rows before NAME) works."""
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    forms = [
        ["runs", "release", *common, "--rows", "resnet50,scnet50", "train.epochs=1", "optim.lr=0.1"],
        ["runs", "release", "train.epochs=1", *common, "--rows", "resnet50", "scnet50", "optim.lr=0.1"],
        ["runs", "--rows", "resnet50", "scnet50", "release", "train.epochs=1", *common, "optim.lr=0.1"],
        ["runs", "release", *common, "--rows", "resnet50", "--rows", "scnet50", "train.epochs=1", "optim.lr=0.1"],
    ]
    plans = []
    for argv in forms:
        code, out, err = _table(*argv)
        assert code == 0, (argv, err)
        plans.append(out)
    assert all(plan == plans[0] for plan in plans), plans
    assert [line.split("\t")[0] for line in plans[0].splitlines()] == ["resnet50", "scnet50"]
    code, plain, _ = _table("runs", "release", *common, "--rows", "resnet50,scnet50")
    assert code == 0 and plain != plans[0]  # the overrides were applied: other run folders


def test_json_of_a_command_that_printed_only(tmp_path, capsys):
    """scnet-zoo --json: the rows --format json prints, whatever --format is."""
    target = tmp_path / "sub" / "zoo.json"
    assert zoo.main(["--models", "resnet50,scnet50", "--format", "csv", "--json", str(target)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(target.read_text())
    assert [r["model"] for r in rows] == ["resnet50", "scnet50"]
    assert printed.splitlines()[0] == "model,baseline,params_m,gmacs,top1,checkpoint"
    assert zoo.main(["--models", "resnet50", "scnet50", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
