"""Data roots by name: `demo` is the built-in set at data/demo (drawn only when asked for); a path must exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scnet.data.builtin import resolve_root
from scnet.data.demo import make_demo


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*.JPEG"))}


def test_a_path_is_never_invented(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        resolve_root(f"{tmp_path}/imagnet", draw=True)
    assert str(info.value) == f"data.root: {tmp_path}/imagnet: no such folder"
    with pytest.raises(ValueError, match=r"^--data: data/demo/: no such folder$"):
        resolve_root("data/demo/", key="--data")  # only the bare name is the built-in set
    assert list(tmp_path.iterdir()) == []  # nothing drawn, nothing made
    (tmp_path / "mine").mkdir()
    assert resolve_root("mine") == Path("mine")


def test_demo_not_drawn_without_draw(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        resolve_root("demo", key="--data")
    message = str(info.value)
    assert message.startswith("--data: demo: the built-in demo set is not at data/demo") and "\n" not in message
    assert "scnet-data demo --out data/demo" in message
    assert list(tmp_path.iterdir()) == []


def test_existing_demo_set_is_completed_with_its_own_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_demo(tmp_path / "data" / "demo", num_classes=3, train_per_class=2, val_per_class=1, progress=False)
    victim = sorted((folder / "val").rglob("*.JPEG"))[1]
    original = victim.read_bytes()
    victim.unlink()
    kept = _files(folder)
    assert resolve_root("demo", draw=True) == Path("data/demo")
    assert victim.read_bytes() == original  # redrawn, the same pixels
    assert {p: t for p, t in _files(folder).items() if p != victim} == kept  # nothing else rewritten
    assert len(_files(folder)) == 3 * 2 + 3 * 1  # not grown to the default 1,200
    assert resolve_root("demo") == Path("data/demo")


@pytest.mark.slow
def test_demo_drawn_at_data_demo_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("demo", draw=True) == Path("data/demo")
    manifest = json.loads((tmp_path / "data" / "demo" / "demo.json").read_text())
    assert (manifest["num_classes"], manifest["train_per_class"], manifest["val_per_class"]) == (10, 100, 20)
    assert len(list((tmp_path / "data/demo/train").rglob("*.JPEG"))) == 1000
    assert len(list((tmp_path / "data/demo/val").rglob("*.JPEG"))) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
