"""``prepare-imagenet`` on miniature ImageNet downloads built here: the official tars + devkit, and Kaggle's layout.

Every expectation (which file goes where, with which bytes) is computed here from the tables below, not by
scnet, and checked file by file against the output tree.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scnet.cli.data import main as data_main
from scnet.data.prepare import prepare_imagenet

from ..utils import require_extra

# ILSVRC2012_ID -> (wnid, words). As in the real devkit (which starts with kit fox, English setter, Siberian
# husky), ID order is not sorted-wnid order, so mapping an ID by sorted position lands in the wrong class.
SYNSETS = {
    1: ("n02119789", "kit fox, Vulpes macrotis"),
    2: ("n02100735", "English setter"),
    3: ("n02110185", "Siberian husky"),
    4: ("n01440764", "tench, Tinca tinca"),
}
# A WordNet ancestor (num_children > 0) in meta.mat; its wnid sorts first, so counting it as a class shows.
PARENT = (1001, "n00015388", "animal, animate being, beast", [1, 2, 3])
SORTED_WNIDS = ["n01440764", "n02100735", "n02110185", "n02119789"]  # written out, not computed
VAL_IDS = [4, 1, 1, 3, 2, 4]  # the ground truth: ILSVRC2012_val_00000001.JPEG is a tench, ...
TRAIN_PER_CLASS = 3

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
CLS_LOC = Path("ILSVRC/Data/CLS-LOC")


def jpeg(seed: int) -> bytes:
    """A tiny JPEG whose bytes differ for each seed, so that a mix-up of two files shows."""
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            add_file(tar, name, data)
    return buf.getvalue()


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def train_images() -> dict[str, dict[str, bytes]]:
    """``{wnid: {file name: bytes}}`` of the train set."""
    images, seed = {}, 0
    for wnid, _ in SYNSETS.values():
        images[wnid] = {}
        for n in range(1, TRAIN_PER_CLASS + 1):
            images[wnid][f"{wnid}_{n}.JPEG"] = jpeg(seed)
            seed += 1
    return images


def val_images() -> dict[str, tuple[str, bytes]]:
    """``{val file name: (wnid the ground truth gives it, bytes)}``."""
    return {val_name(i): (SYNSETS[cid][0], jpeg(100 + i)) for i, cid in enumerate(VAL_IDS, 1)}


def meta_mat(synsets: dict[int, tuple[str, str]], parents: list[tuple[int, str, str, list[int]]]) -> bytes:
    """A meta.mat laid out as the devkit's: a struct array ``synsets`` with its eight fields."""
    require_extra("imagenet", "scipy")
    import scipy.io as scipy_io

    rows = [(cid, wnid, words, []) for cid, (wnid, words) in synsets.items()] + parents
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    table = np.zeros((len(rows), 1), dtype=[(f, object) for f in [*fields, "num_train_images"]])
    for i, (cid, wnid, words, children) in enumerate(rows):
        record = table[i, 0]
        record["ILSVRC2012_ID"] = np.uint16(cid)
        record["WNID"] = wnid
        record["words"] = words
        record["gloss"] = f"gloss of {wnid}"
        record["num_children"] = np.uint8(len(children))
        record["children"] = np.array(children, dtype=np.uint16).reshape(1, -1)
        record["wordnet_height"] = np.uint8(1 if children else 0)
        record["num_train_images"] = np.uint16(0 if children else TRAIN_PER_CLASS)
    buf = io.BytesIO()
    scipy_io.savemat(buf, {"synsets": table})
    return buf.getvalue()


def write_devkit(path: Path, meta: bytes | None, ids: list[int]) -> None:
    data = "ILSVRC2012_devkit_t12/data/"
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "ILSVRC2012_devkit_t12/COPYING", b"devkit\n")
        if meta is not None:
            add_file(tar, data + "meta.mat", meta)
        add_file(tar, data + "ILSVRC2012_validation_ground_truth.txt", "".join(f"{i}\n" for i in ids).encode())


def make_official(src: Path, drop_class: str | None = None, drop_val: str | None = None) -> dict[str, bytes]:
    """The three release files in ``src`` (less one class tar / val image if asked).

    Returns ``{path under out/: bytes}`` of what a correct preparation writes.
    """
    src.mkdir(parents=True, exist_ok=True)
    expected = {}
    with tarfile.open(src / TRAIN_TAR, "w") as outer:
        for wnid, files in train_images().items():
            if wnid != drop_class:
                add_file(outer, f"{wnid}.tar", tar_bytes(files))
                expected.update({f"train/{wnid}/{name}": data for name, data in files.items()})
    with tarfile.open(src / VAL_TAR, "w") as tar:
        for name, (wnid, data) in val_images().items():
            if name != drop_val:
                add_file(tar, name, data)
                expected[f"val/{wnid}/{name}"] = data
    write_devkit(src / DEVKIT, meta_mat(SYNSETS, [PARENT]), VAL_IDS)
    return expected


def make_kaggle(src: Path) -> dict[str, Path]:
    """Kaggle's layout in ``src``; returns ``{path under out/: source file}`` of what a preparation places."""
    expected = {}
    # The mapping in ID order (not sorted) with Kaggle's "wnid words" lines.
    (src / "LOC_synset_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    (src / "LOC_synset_mapping.txt").write_text("".join(f"{w} {words}\n" for w, words in SYNSETS.values()))
    for wnid, files in train_images().items():
        (src / CLS_LOC / "train" / wnid).mkdir(parents=True)
        for name, data in files.items():
            (src / CLS_LOC / "train" / wnid / name).write_bytes(data)
            expected[f"train/{wnid}/{name}"] = src / CLS_LOC / "train" / wnid / name
    (src / CLS_LOC / "val").mkdir(parents=True)
    rows = []
    for name, (wnid, data) in val_images().items():
        (src / CLS_LOC / "val" / name).write_bytes(data)
        expected[f"val/{wnid}/{name}"] = src / CLS_LOC / "val" / name
        rows.append(f"{name.removesuffix('.JPEG')},{wnid} 17 0 499 344 {wnid} 1 2 30 40 \n")
    rows.reverse()  # the CSV is not in file order either
    (src / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    return expected


def tree(out: Path) -> dict[str, bytes]:
    """Every file under out/train and out/val, hidden ones included: ``{relative path: bytes}``."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for split in ("train", "val")
        for p in sorted((out / split).rglob("*"))
        if p.is_file()
    }


def stats(out: Path) -> dict[str, tuple[int, int, int]]:
    """``{path: (inode, mtime, ctime)}`` of every file under ``out``, markers and class lists included."""
    return {
        p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns)
        for p in out.rglob("*")
        if p.is_file()
    }


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    """``scnet-data prepare-imagenet ARGS`` through its entry point in this process: (status, stdout, stderr)."""
    code = data_main(["prepare-imagenet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def check_class_files(out: Path) -> None:
    assert (out / "classes.txt").read_text() == "".join(f"{w}\n" for w in SORTED_WNIDS)
    words = {w: text for w, text in SYNSETS.values()}
    assert (out / "class_names.txt").read_text() == "".join(f"{w}\t{words[w]}\n" for w in SORTED_WNIDS)


def test_official_release_cli(tmp_path, capsys):
    expected = make_official(tmp_path / "src")
    code, stdout, stderr = run_cli(capsys, "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert code == 0, stdout + stderr
    out = tmp_path / "out"
    assert tree(out) == expected  # every file, bytes identical, nothing else (no temporaries)
    # The ground truth + meta.mat place val 2 and 3 (ID 1) under the kit fox, not under sorted class 0.
    assert (out / "val/n02119789" / val_name(2)).read_bytes() == val_images()[val_name(2)][1]
    assert not (out / "val/n01440764" / val_name(2)).exists()
    check_class_files(out)
    assert stdout.splitlines()[-1] == "complete"
    assert "train: 12 of 12" in stdout and "val: 6 of 6" in stdout
    assert "100%" in stderr  # the progress bars go to stderr


def test_official_release_resume(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = make_official(src)
    first = prepare_imagenet(src, out, progress=False)
    assert first.complete, first.summary()
    assert (first.splits["train"].new, first.splits["val"].new) == (12, 6)
    assert tree(out) == expected
    check_class_files(out)
    before = stats(out)

    # An interrupted run: a class not started (no files, no marker), a class cut short (marker gone, one file
    # short after a crash), stray temporaries of interrupted writes, a file lost from a marked class (and the
    # val split), a val image not yet written.
    fox, setter, husky = "n02119789", "n02100735", "n02110185"
    shutil.rmtree(out / "train" / fox)
    for wnid in (fox, setter):
        markers = [p for p in (out / ".prepare").rglob("*") if wnid in p.name]
        assert len(markers) == 1, markers
        markers[0].unlink()
    short = out / "train" / setter / f"{setter}_2.JPEG"
    short.write_bytes(short.read_bytes()[:20])
    (out / "train" / husky / f".{husky}_1.JPEG.part").write_bytes(b"half a file")
    (out / "train" / husky / f"{husky}_3.JPEG").unlink()
    (out / "val" / fox / f".{val_name(2)}.part").write_bytes(b"half a file")
    (out / "val" / fox / val_name(3)).unlink()

    second = prepare_imagenet(src, out, progress=False)
    assert second.complete, second.summary()
    assert (second.splits["train"].new, second.splits["val"].new) == (TRAIN_PER_CLASS + 2, 1)
    assert tree(out) == expected  # whole again, temporaries gone
    redone = {f"train/{fox}/{fox}_{n}.JPEG" for n in range(1, 4)}
    redone |= {f"train/{setter}/{setter}_2.JPEG", f"train/{husky}/{husky}_3.JPEG"}
    redone |= {f"val/{fox}/{val_name(3)}"}
    after = stats(out)
    untouched = [p for p in expected if p not in redone]
    assert untouched and all(after[p][:2] == before[p][:2] for p in untouched)

    # A finished preparation: nothing rewritten, not even a marker or classes.txt.
    third = prepare_imagenet(src, out, progress=False)
    assert third.complete and (third.splits["train"].new, third.splits["val"].new) == (0, 0)
    assert stats(out) == after

    # Leftovers of an earlier, wrong preparation (val 2 under sorted class 0) make the output wrong: flagged.
    # A hidden file is nobody's image and does not count.
    shutil.copy(out / "val" / fox / val_name(2), out / "val" / "n01440764" / val_name(2))
    (out / "train" / "n01440764" / ".DS_Store").write_bytes(b"")
    report = prepare_imagenet(src, out, progress=False)
    assert not report.complete
    assert report.splits["val"].extra == [f"n01440764/{val_name(2)}"] and report.splits["train"].extra == []
    assert "EXTRA 1 file under out/val that the source does not put there" in report.summary()


def test_missing_pieces_cli(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = make_official(src, drop_class="n02100735", drop_val=val_name(4))
    code, stdout, stderr = run_cli(capsys, "--src", src, "--out", out, "--quiet")
    assert code == 1, stdout + stderr
    assert stderr == ""  # --quiet: no progress bar
    assert "n02100735" in stdout and val_name(4) in stdout
    assert "INCOMPLETE" in stdout
    assert tree(out) == expected  # the rest is prepared all the same

    # Re-run (the val marker now records the gap): the same report, from the function.
    report = prepare_imagenet(src, out, progress=False)
    assert not report.complete
    train, val = report.splits["train"], report.splits["val"]
    assert train.missing_classes == ["n02100735"] and (train.written, train.expected) == (9, 9)
    assert val.missing_files == [val_name(4)] and (val.written, val.expected) == (5, 6)
    assert "n02100735" in report.summary() and val_name(4) in report.summary()


def test_full_release_held_to_canonical_counts(tmp_path):
    # A meta.mat with 1,000 classes (in a shuffled ID order) makes it the full release; two class tars are not.
    rng = np.random.default_rng(0)
    wnids = [f"n{10_000_000 + 7 * i:08d}" for i in range(1000)]
    synsets = {cid: (wnids[j], f"class {j}") for cid, j in enumerate(rng.permutation(1000).tolist(), 1)}
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    with tarfile.open(src / TRAIN_TAR, "w") as outer:
        for j in (0, 1):
            add_file(outer, f"{wnids[j]}.tar", tar_bytes({f"{wnids[j]}_1.JPEG": jpeg(j)}))
    with tarfile.open(src / VAL_TAR, "w") as tar:
        add_file(tar, val_name(1), jpeg(10))
    write_devkit(src / DEVKIT, meta_mat(synsets, []), [5])
    report = prepare_imagenet(src, out, progress=False)
    assert not report.complete
    assert len(report.splits["train"].missing_classes) == 998
    text = report.summary()
    assert "998 of 1,000 classes" in text and "1,281,167" in text and "50,000" in text
    assert (out / "classes.txt").read_text().split() == sorted(wnids)
    assert (out / "val" / synsets[5][0] / val_name(1)).read_bytes() == jpeg(10)


def test_val_only(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = make_official(src)
    (src / TRAIN_TAR).unlink()  # not needed for val
    report = prepare_imagenet(src, out, splits=["val"], progress=False)
    assert report.complete and list(report.splits) == ["val"]
    assert not (out / "train").exists()
    assert tree(out) == {p: b for p, b in expected.items() if p.startswith("val/")}


def test_kaggle_layout(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = make_kaggle(src)
    (src / CLS_LOC / "val" / "stray.JPEG").write_bytes(jpeg(999))  # not in the CSV: noted, left out
    report = prepare_imagenet(src, out, progress=False)
    assert report.complete, report.summary()
    assert report.layout == "kaggle" and "stray.JPEG" in report.summary()
    assert tree(out) == {p: f.read_bytes() for p, f in expected.items()}
    assert all(os.path.samefile(out / p, f) for p, f in expected.items())  # hard links: same filesystem
    assert report.linked == len(expected) and report.copied == 0
    check_class_files(out)

    before = stats(out)  # ctime too: re-linking a file would change it
    again = prepare_imagenet(src, out, progress=False)
    assert again.complete and (again.splits["train"].new, again.splits["val"].new) == (0, 0)
    assert stats(out) == before

    # Missing pieces: a class folder and a listed val image gone from the download.
    shutil.rmtree(src / CLS_LOC / "train" / "n02110185")
    (src / CLS_LOC / "val" / val_name(5)).unlink()
    report = prepare_imagenet(src, tmp_path / "out2", progress=False)
    assert not report.complete
    assert report.splits["train"].missing_classes == ["n02110185"]
    assert report.splits["val"].missing_files == [val_name(5)]
    assert "n02110185" in report.summary() and val_name(5) in report.summary()


def test_kaggle_copies_across_filesystems(tmp_path):
    # /dev/shm is a tmpfs on Linux: hard links from tmp_path into it fail with EXDEV, so files are copied.
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no writable second filesystem at /dev/shm")
    expected = make_kaggle(tmp_path / "src")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        out = Path(other) / "out"
        report = prepare_imagenet(tmp_path / "src", out, progress=False)
        assert report.complete and (report.linked, report.copied) == (0, len(expected)), report.summary()
        assert tree(out) == {p: f.read_bytes() for p, f in expected.items()}
        assert not any(os.path.samefile(out / p, f) for p, f in expected.items())


def corrupt_train_tar(src: Path) -> None:
    (src / TRAIN_TAR).write_bytes(b"this is not a tar file, just text" * 40)


def truncate_train_tar(src: Path) -> None:
    data = (src / TRAIN_TAR).read_bytes()
    (src / TRAIN_TAR).write_bytes(data[: len(data) // 2])


def devkit_without_meta(src: Path) -> None:
    write_devkit(src / DEVKIT, None, VAL_IDS)


def only_the_devkit(src: Path) -> None:
    (src / TRAIN_TAR).unlink()
    (src / VAL_TAR).unlink()


@pytest.mark.parametrize(
    "damage, words",
    [
        (corrupt_train_tar, [TRAIN_TAR]),
        (truncate_train_tar, [TRAIN_TAR]),
        (devkit_without_meta, [DEVKIT, "meta.mat"]),
        (only_the_devkit, [TRAIN_TAR, VAL_TAR]),
    ],
)
def test_bad_release_is_one_line(tmp_path, capsys, damage, words):
    make_official(tmp_path / "src")
    damage(tmp_path / "src")
    assert data_main(["prepare-imagenet", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scnet-data prepare-imagenet: error: "), err
    assert all(w in err for w in words), err


def test_empty_or_absent_src_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert data_main(["prepare-imagenet", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert all(w in err for w in (TRAIN_TAR, VAL_TAR, DEVKIT, "LOC_synset_mapping.txt", "LOC_val_solution.csv"))
    assert data_main(["prepare-imagenet", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err, err


def test_without_scipy_says_what_to_install(tmp_path, capsys, monkeypatch):
    make_official(tmp_path / "src")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed: its import fails
    assert data_main(["prepare-imagenet", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'scnet-pytorch[imagenet]'" in err, err
