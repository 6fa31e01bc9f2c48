"""No function in scnet/ is longer than a reader can hold: 100 lines at most, and the training run's top-level
page (``scnet/train/run.py``) reads on one screen. Counted from the source with ``ast`` (def line to last line,
docstring and comments included), so no comment can silence it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "scnet"
LONGEST = 100
RUN_PAGE = 60


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        (f"{path.name}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_is_longer_than_100_lines():
    too_long = [
        f"{where}: {lines} lines"
        for p in sorted(PACKAGE.rglob("*.py"))
        for where, lines in _functions(p)
        if lines > LONGEST
    ]
    assert not too_long, "functions over 100 lines:\n" + "\n".join(too_long)


def test_the_training_run_reads_on_one_screen():
    lengths = dict(_functions(PACKAGE / "train" / "run.py"))
    run = next(lines for where, lines in lengths.items() if where.endswith(" _run"))
    assert run <= RUN_PAGE, f"scnet/train/run.py:_run is {run} lines"


def test_the_count_covers_the_whole_body(tmp_path):
    """A 3-line body with a docstring and a comment counts 5 lines: the check cannot be beaten by comments."""
    source = tmp_path / "m.py"
    source.write_text('def f():\n    """Doc."""\n    # why\n    x = 1\n    return x\n')
    assert [lines for _, lines in _functions(source)] == [5]
