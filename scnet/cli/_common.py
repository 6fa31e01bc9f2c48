"""What every command does the same way: its vocabulary (--version, --json FILE, list options, plain-text help),
ending in one line on stderr, and choosing a device.

The vocabulary, the same in every command:
- ``--json FILE``: the command's results as one JSON file (machine-readable; what it prints stays for people);
- ``--out PATH``: what the command makes (a folder, an exported model, a figure), never a results file;
- a list option takes names comma- or space-separated, and may be repeated: ``--rows a,b``, ``--rows a b`` and
  ``--rows a --rows b`` are one list;
- ``--batch-size``: its help says whether it is global (split across processes), per process or per forward;
- ``--version``: ``PROG VERSION``, exit 0.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scnet import __version__


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``PROG VERSION`` (the package's ``__version__``) and exits 0."""
    parser.add_argument(
        "--version", action="version", version=f"{parser.prog} {__version__}", help="print the version and exit"
    )


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json FILE``: where the command writes ``what`` as JSON, the one spelling of a results file."""
    parser.add_argument("--json", metavar="FILE", help=f"also write {what} here as JSON")


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` (its folder made when missing); OSError when it cannot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


class ListOption(argparse.Action):
    """A list option: values comma- or space-separated, the option repeatable (each use adds to the list);
    ``allowed`` checks each value (argparse's own ``choices`` would see ``a,b`` as one value). ``commas=False``
    for file paths, which may hold a comma: space-separated and repeated only."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        allowed: Sequence[str] | None = None,
        commas: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("nargs", "+")
        if kwargs.get("help"):
            kwargs["help"] += "; a list: A,B or A B" if commas else "; a list: A B, or the option repeated"
        super().__init__(option_strings, dest, **kwargs)
        self.allowed, self.commas = allowed, commas

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = [v.strip() for value in values for v in (value.split(",") if self.commas else [value])]
        items = [v for v in items if v]
        if not items:
            parser.error(f"{option_string}: no value given")
        bad = [v for v in items if self.allowed is not None and v not in self.allowed]
        if bad:
            parser.error(f"{option_string}: invalid choice: {', '.join(bad)} (choose from {', '.join(self.allowed)})")
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, items if current is None or current is self.default else [*current, *items])


_LITERAL = re.compile(r"``(.+?)``", re.S)  # ``scnet-eval`` -> scnet-eval
_ROLE = re.compile(r":[a-z]+:`~?(.+?)`")  # :func:`export` -> export


def plain(doc: str | None) -> str:
    """A module docstring as a command's description: reST literals and roles as plain text."""
    return _ROLE.sub(r"\1", _LITERAL.sub(r"\1", doc or "")).strip()


def fail(prog: str, error: BaseException | str, status: int = 2, show: bool = True) -> int:
    """Print ``PROG: error: MESSAGE`` as one line (unless ``show`` is False, e.g. on ranks other than 0) and
    return ``status`` (2: bad input, the default)."""
    if show:
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
        print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def choose_device(requested: str | None) -> str:
    """``requested``, or CUDA when there is one, else CPU; ValueError for ``cuda`` without CUDA."""
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    return kind
