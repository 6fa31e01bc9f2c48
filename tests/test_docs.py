"""The README and docs/ as a newcomer uses them: every shell command names a program that exists and flags its
parser accepts, every ``key=value`` override is a config key, every config file and script it names exists,
every Python block compiles, every relative link (and its anchor) resolves, the configs page's key reference is
the schema's, and the README's zoo table is what ``scnet-zoo`` prints."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch.distributed.run as torchrun

from scnet.config import parse_override, schema_keys
from scnet.config.reference import with_reference

from .utils import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *(REPO_ROOT / "docs").glob("*.md")])
SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
CONFIG_KEYS = {info.key for info in schema_keys()}
SHELL_LANGS = {"bash", "sh", "shell"}
# Programs a page may name that are not this package's: found on PATH here, or (cluster tools) named on purpose.
EXTERNAL = {"pip", "git", "ruff", "tensorboard", "bash"}
NOT_INSTALLED_HERE = {"sbatch"}  # SLURM's: the script it submits is checked instead
BUILTINS = {"cd", ".", "source", "export"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")


def _blocks(page: Path, langs: set[str]) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang in langs]


def _commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block as its words: continuation lines joined, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in {"&&", "||", ";", "|"}:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def _all_commands() -> list[tuple[str, list[str]]]:
    return [
        (f"{page.relative_to(REPO_ROOT)}: {shlex.join(words)}", words)
        for page in PAGES
        for block in _blocks(page, SHELL_LANGS)
        for words in _commands(block)
    ]


def _parse(module: str, argv: list[str]) -> list[str]:
    """``argv`` through the command's own parser; returns the problems (argparse's message on a failure)."""
    cli = importlib.import_module(module)
    # A command that reads its line in more than one pass (scnet-table) says how in a parse_args of its own.
    parse = getattr(cli, "parse_args", None) or cli.build_parser().parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse(argv)
    except SystemExit:
        return [f"{module} refuses the flags: {err.getvalue().strip().splitlines()[-1]}"]
    return _check_values(args)


def _check_values(args) -> list[str]:
    """What a parsed command names that must exist here: its config file; its overrides must be config keys."""
    problems = []
    config = getattr(args, "config", None)
    if isinstance(config, str) and not (REPO_ROOT / config).is_file():
        problems.append(f"no config file {config}")
    for override in getattr(args, "overrides", None) or []:
        key = parse_override(override)[0]
        if key not in CONFIG_KEYS:
            problems.append(f"{key} is not a config key")
    return problems


def _check_python(words: list[str]) -> list[str]:
    if words[1:2] == ["-c"]:
        compile(words[2], "<python -c>", "exec")
        return []
    if words[1:2] != ["-m"]:
        return [f"python without -m or -c: {shlex.join(words)}"]
    module, argv = words[2], words[3:]
    if module.startswith("scnet."):
        return _parse(module, argv) if hasattr(importlib.import_module(module), "build_parser") else []
    return [] if module in {"pytest", "venv", "pip"} else [f"python -m {module}: not a module the docs may run"]


def _check(words: list[str]) -> list[str]:
    """The problems of one command (empty: it would run as written, up to the data it names)."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]  # VAR=value prefixes
    program = words[0]
    if program in SCRIPTS:
        return _parse(SCRIPTS[program].partition(":")[0], words[1:])
    if program == "torchrun":
        args = torchrun.get_args_parser().parse_args(words[1:])
        if not args.module or not args.training_script.startswith("scnet.cli."):
            return [f"torchrun runs {args.training_script}, not a scnet command"]
        return _parse(args.training_script, args.training_script_args)
    if program in {"python", "python3"}:
        return _check_python(words)
    scripts = [w for w in words[1:] if w.startswith("scripts/")]
    if program in NOT_INSTALLED_HERE or program == "bash":
        return [f"no script {s}" for s in scripts if not (REPO_ROOT / s).is_file()] or (
            [] if scripts else [f"{program} without a script of this repository"]
        )
    if program in BUILTINS or (program in EXTERNAL and shutil.which(program)):
        return []
    return [f"unknown program {program}"]


COMMANDS = _all_commands()


@pytest.mark.parametrize("where,words", COMMANDS, ids=[where[:90] for where, _ in COMMANDS])
def test_every_documented_command_parses(where, words):
    assert not _check(words), f"{where}: {'; '.join(_check(words))}"


def test_the_pages_have_commands_to_check():
    """The extraction itself: a handful of commands per page, among them the four CLIs a newcomer meets first."""
    programs = {words[0] for _, words in COMMANDS}
    assert {"scnet-train", "scnet-eval", "scnet-predict", "torchrun"} <= programs
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_python_blocks_compile(page):
    for block in _blocks(page, {"python"}):
        compile(block, str(page), "exec")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(page):
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to a missing {target}"
        if anchor:
            assert anchor in _anchors(file), f"{page.name}: {target}: no heading with that anchor"


def test_configs_page_is_the_schema():
    page = (REPO_ROOT / "docs" / "configs.md").read_text()
    assert with_reference(page) == page, (
        "docs/configs.md is stale: python -m scnet.config.reference --write docs/configs.md"
    )


def test_readme_zoo_table_is_scnet_zoos():
    from scnet.cli import zoo
    from scnet.models import BASELINES

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert zoo.main(["--format", "markdown", "--models", ",".join(BASELINES)]) == 0
    printed = {line for line in out.getvalue().splitlines() if line.startswith("| ")}
    readme = (REPO_ROOT / "README.md").read_text()
    table = {line for line in readme.split("## Model zoo")[1].split("##")[0].splitlines() if line.startswith("| ")}
    assert table == printed


def test_readme_is_short():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 150
