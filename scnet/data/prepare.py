"""ImageNet (ILSVRC2012) from the files people download -> ``out/train/<wnid>/`` and ``out/val/<wnid>/``.

Two sources are understood, detected from what ``src`` holds:

* the official release: ``ILSVRC2012_img_train.tar`` (a tar of per-class ``<wnid>.tar``),
  ``ILSVRC2012_img_val.tar`` (flat JPEGs) and ``ILSVRC2012_devkit_t12.tar.gz`` (``meta.mat`` and the
  validation ground truth);
* the Kaggle "ImageNet Object Localization Challenge" download: ``LOC_synset_mapping.txt``,
  ``LOC_val_solution.csv`` and ``ILSVRC/Data/CLS-LOC/{train/<wnid>,val}/``.

Images keep their bytes: tar members are copied out, Kaggle files are hard-linked (copied across
filesystems). Every file is written under a temporary hidden name and renamed, so a final name only ever
holds a whole file. A finished class (or the finished val split) leaves a marker under ``out/.prepare/``;
a re-run skips marked work, cleans up temporaries, and redoes only what is missing. The returned
:class:`PrepareReport` compares what was written with what the source holds (and, on the full release,
with the canonical counts) and says what is missing.
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from ..runtime.files import write_atomic

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META_MAT = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_MAPPING = "LOC_synset_mapping.txt"
KAGGLE_VAL_SOLUTION = "LOC_val_solution.csv"
KAGGLE_IMAGES = "ILSVRC/Data/CLS-LOC"

CANONICAL_CLASSES = 1000
CANONICAL_IMAGES = {"train": 1_281_167, "val": 50_000}
SPLITS = ("train", "val")
LAYOUTS = ("official", "kaggle")  # detection order: the official files win when both are there

STATE_DIR = ".prepare"  # markers of finished work, hidden so that folder readers skip it
PART_SUFFIX = ".part"  # temporaries are ".<name>.part": hidden and not an image extension
EXAMPLES = 5  # names shown per problem in the summary


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed.

    Also a ValueError so that the ``scnet-data`` CLI reports it in one line like any other bad setup.
    """


@dataclass
class SplitReport:
    """What one split's preparation found and wrote."""

    split: str
    source: str  # what ``expected`` counts, for the summary ("images in the class tars of ...")
    expected: int = 0  # images the source says this split has
    written: int = 0  # of those, present under out/ at the end
    new: int = 0  # written by this run (the rest were already there)
    missing_classes: list[str] = field(default_factory=list)  # classes with no images in the source
    missing_classes_where: str = ""
    missing_files: list[str] = field(default_factory=list)  # listed with a label, absent from the source
    missing_files_where: str = ""
    unwritten: list[str] = field(default_factory=list)  # in the source but not under out/ (should not happen)
    extra: list[str] = field(default_factory=list)  # under out/ but not from the source: an earlier run's leftovers
    skipped: list[str] = field(default_factory=list)  # source entries that belong to no class, left out
    skipped_why: str = ""
    canonical: int | None = None  # the full release's count, when the source claims to be the full release

    @property
    def complete(self) -> bool:
        """Nothing missing from the source, everything from it written, and the canonical count where it applies."""
        if self.missing_classes or self.missing_files or self.unwritten or self.extra:
            return False
        if self.written != self.expected:
            return False
        return self.canonical is None or self.written == self.canonical

    def lines(self, num_classes: int) -> list[str]:
        """The summary lines of this split; problems start with MISSING."""
        already = self.written - self.new
        state = "complete" if self.complete else "INCOMPLETE"
        lines = [
            f"{self.split}: {self.written:,} of {self.expected:,} {self.source} "
            f"({self.new:,} written now, {already:,} already there): {state}"
        ]
        if self.missing_classes:
            lines.append(
                f"  MISSING {len(self.missing_classes):,} of {num_classes:,} classes: {self.missing_classes_where}: "
                + _examples(self.missing_classes)
            )
        if self.missing_files:
            lines.append(
                f"  MISSING {_plural(len(self.missing_files), 'image')} {self.missing_files_where}: "
                + _examples(self.missing_files)
            )
        if self.unwritten:
            lines.append(
                f"  MISSING {_plural(len(self.unwritten), 'image')} not written to out/: " + _examples(self.unwritten)
            )
        if self.extra:
            lines.append(
                f"  EXTRA {_plural(len(self.extra), 'file')} under out/{self.split} that the source does not put there "
                "(left by an earlier run or another tool? delete them): " + _examples(self.extra)
            )
        if self.canonical is not None and self.written != self.canonical:
            gap = self.canonical - self.written
            than = f"{gap:,} more than are here" if gap > 0 else f"{-gap:,} fewer than are here"
            lines.append(f"  MISSING: the full ImageNet-1k {self.split} set has {self.canonical:,} images, {than}")
        if self.skipped:
            lines.append(f"  note: left out {self.skipped_why} ({len(self.skipped):,}): " + _examples(self.skipped))
        return lines


@dataclass
class PrepareReport:
    """The outcome of :func:`prepare_imagenet`: per split, what was expected, written and missing."""

    layout: str  # "official" or "kaggle"
    src: Path
    out: Path
    classes: list[str]  # sorted wnids; class index = position
    class_names_written: bool
    splits: dict[str, SplitReport]
    linked: int = 0  # Kaggle layout: files hard-linked ...
    copied: int = 0  # ... and copied (other filesystem, or links not allowed)

    @property
    def complete(self) -> bool:
        """Every split complete (on the full release that includes the canonical image counts)."""
        return all(s.complete for s in self.splits.values())

    def summary(self) -> str:
        """A few lines for people: counts per split, then what is missing, with example names."""
        source = "official release files" if self.layout == "official" else "Kaggle layout"
        files = "classes.txt, class_names.txt" if self.class_names_written else "classes.txt"
        full = ", the full ImageNet-1k" if len(self.classes) == CANONICAL_CLASSES else ""
        lines = [
            f"ImageNet from the {source} in {self.src} -> {self.out}",
            f"classes: {len(self.classes):,}{full} ({files}; class index = position in sorted wnid order)",
        ]
        for split in self.splits.values():
            lines += split.lines(len(self.classes))
        if self.linked or self.copied:
            lines.append(f"files hard-linked: {self.linked:,}, copied: {self.copied:,}")
        if self.complete:
            lines.append("complete")
        else:
            lines.append("INCOMPLETE: see MISSING/EXTRA above; re-run after fixing them to fill in the rest")
        return "\n".join(lines)


def prepare_imagenet(src: Path, out: Path, splits: Sequence[str] = SPLITS, progress: bool = True) -> PrepareReport:
    """Lay out ImageNet from the release files in ``src`` as ``out/{train,val}/<wnid>/`` image folders.

    Also writes ``out/classes.txt`` (sorted wnids, one per line) and ``out/class_names.txt``
    (``wnid<TAB>words``, same order). Safe to re-run: finished work is skipped, interrupted work redone.
    Raises OSError/ValueError (naming the file) for a missing ``src``, an unrecognised folder, a corrupt
    archive or a devkit without ``meta.mat``; missing images are not errors but show in the report.
    """
    src, out = Path(src), Path(out)
    wanted = _check_splits(splits)
    layout = _detect_layout(src, wanted)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "official":
        return _prepare_official(src, out, wanted, progress)
    return _prepare_kaggle(src, out, wanted, progress)


# ---------------------------------------------------------------------------------------------- the two layouts


def _prepare_official(src: Path, out: Path, splits: tuple[str, ...], progress: bool) -> PrepareReport:
    """The official release: devkit for the classes and val labels, then the two image tars."""
    synsets, ground_truth = _read_devkit(src / DEVKIT, need_ground_truth="val" in splits)
    names = dict(synsets.values())
    classes, with_names = _write_class_files(out, names)
    report = PrepareReport("official", src, out, classes, class_names_written=with_names, splits={})
    if "train" in splits:
        report.splits["train"] = _official_train(src / TRAIN_TAR, out, classes, progress)
    if "val" in splits:
        labels = _val_labels_from_ids(ground_truth or [], synsets)
        report.splits["val"] = _official_val(src / VAL_TAR, out, labels, progress)
    _set_canonical(report)
    return report


def _prepare_kaggle(src: Path, out: Path, splits: tuple[str, ...], progress: bool) -> PrepareReport:
    """The Kaggle layout: the synset mapping for the classes, the val solution CSV for val labels."""
    names = _read_kaggle_mapping(src / KAGGLE_MAPPING)
    classes, with_names = _write_class_files(out, names)
    report = PrepareReport("kaggle", src, out, classes, class_names_written=with_names, splits={})
    placer = _Placer()
    if "train" in splits:
        report.splits["train"] = _kaggle_train(src / KAGGLE_IMAGES / "train", out, classes, placer, progress)
    if "val" in splits:
        labels = _read_kaggle_val_solution(src / KAGGLE_VAL_SOLUTION, set(classes))
        report.splits["val"] = _kaggle_val(src / KAGGLE_IMAGES / "val", out, labels, placer, progress)
    report.linked, report.copied = placer.linked, placer.copied
    _set_canonical(report)
    return report


def _check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """The requested splits, deduplicated, in order; anything but train/val is an error."""
    if isinstance(splits, str):  # a lone "val" would otherwise read as ("v", "a", "l")
        splits = (splits,)
    wanted = tuple(dict.fromkeys(splits))
    bad = [s for s in wanted if s not in SPLITS]
    if bad or not wanted:
        raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {', '.join(map(str, splits)) or 'none'}")
    return wanted


def _needed_files(layout: str, splits: tuple[str, ...]) -> list[str]:
    """What ``src`` must hold for ``layout`` and the requested splits."""
    if layout == "official":
        return [DEVKIT] + [{"train": TRAIN_TAR, "val": VAL_TAR}[s] for s in splits]
    need = [KAGGLE_MAPPING]
    if "train" in splits:
        need.append(f"{KAGGLE_IMAGES}/train")
    if "val" in splits:
        need += [KAGGLE_VAL_SOLUTION, f"{KAGGLE_IMAGES}/val"]
    return need


def _detect_layout(src: Path, splits: tuple[str, ...]) -> str:
    """``"official"`` or ``"kaggle"``, whichever ``src`` holds in full; else an error saying what is missing."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    missing = {layout: [n for n in _needed_files(layout, splits) if not (src / n).exists()] for layout in LAYOUTS}
    for layout in LAYOUTS:
        if not missing[layout]:
            return layout
    # Partly there: name what is missing from the layout that was started on.
    for layout in LAYOUTS:
        if len(missing[layout]) < len(_needed_files(layout, splits)):
            what = "official release" if layout == "official" else "Kaggle layout"
            raise ValueError(
                f"{src}: the {what} lacks {', '.join(missing[layout])} "
                f"(needed for splits {', '.join(splits)}; prepare fewer splits to go without)"
            )
    raise ValueError(
        f"{src} holds no ImageNet: looked for the official release ({', '.join(_needed_files('official', SPLITS))}) "
        f"and the Kaggle layout ({', '.join(_needed_files('kaggle', SPLITS))})"
    )


def _set_canonical(report: PrepareReport) -> None:
    """On the full release (1,000 classes), hold each split to the canonical image count too."""
    if len(report.classes) == CANONICAL_CLASSES:
        for split in report.splits.values():
            split.canonical = CANONICAL_IMAGES[split.split]


# ------------------------------------------------------------------------------------------ classes and labels


def _read_devkit(path: Path, need_ground_truth: bool) -> tuple[dict[int, tuple[str, str]], list[int] | None]:
    """``({ILSVRC2012_ID: (wnid, words)} of the leaf classes, val ground-truth IDs in val-file order)``."""
    with _archive_errors(str(path)), tarfile.open(path, "r:gz") as tar:
        meta = _read_member(tar, path, META_MAT)
        truth = _read_member(tar, path, GROUND_TRUTH) if need_ground_truth else None
    synsets = _leaf_synsets(meta, f"{path.name}/{META_MAT}")
    if truth is None:
        return synsets, None
    ids = []
    for number, line in enumerate(truth.decode().splitlines(), 1):
        if line.strip():
            try:
                ids.append(int(line))
            except ValueError:
                raise ValueError(f"{path.name}/{GROUND_TRUTH}: line {number} is not a class ID: {line!r}") from None
    return synsets, ids


def _read_member(tar: tarfile.TarFile, path: Path, name: str) -> bytes:
    """The bytes of ``name`` in the devkit (matched on its ``data/...`` tail, whatever the top folder)."""
    tail = name.split("/", 1)[1]
    for member in tar:
        if member.isfile() and (member.name == name or member.name.endswith("/" + tail)):
            handle = tar.extractfile(member)
            assert handle is not None  # regular files always have contents
            return handle.read()
    raise ValueError(f"{path}: no {name} inside; is this the ILSVRC2012 devkit (task 1 & 2)?")


def _leaf_synsets(meta: bytes, label: str) -> dict[int, tuple[str, str]]:
    """``{ILSVRC2012_ID: (wnid, words)}`` of the synsets without children (the 1,000 classes) in meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise MissingDependencyError(
            f"reading {label} needs scipy: pip install 'scnet-pytorch[imagenet]'", name="scipy"
        ) from e
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    except KeyError:
        raise ValueError(f"{label}: no 'synsets' struct") from None
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a damaged file
        raise ValueError(f"{label}: not a readable MATLAB file ({e})") from e
    fields = ("ILSVRC2012_ID", "WNID", "words", "num_children")
    if synsets.dtype.names is None or not set(fields) <= set(synsets.dtype.names):
        raise ValueError(f"{label}: 'synsets' lacks the fields {', '.join(fields)}")
    leaves: dict[int, tuple[str, str]] = {}
    for synset in synsets.reshape(-1):  # squeeze_me makes a single synset 0-d
        if int(synset["num_children"]) != 0:
            continue  # a WordNet ancestor, not a class
        class_id, wnid = int(synset["ILSVRC2012_ID"]), str(synset["WNID"]).strip()
        if class_id in leaves:
            raise ValueError(f"{label}: ILSVRC2012_ID {class_id} appears twice")
        leaves[class_id] = (wnid, " ".join(str(synset["words"]).split()))
    if not leaves:
        raise ValueError(f"{label}: no leaf synsets (num_children == 0)")
    return leaves


def _val_labels_from_ids(ids: list[int], synsets: dict[int, tuple[str, str]]) -> dict[str, str]:
    """``{val file name: wnid}``. IDs go through meta.mat's WNID field: their order is not sorted-wnid order."""
    labels = {}
    for number, class_id in enumerate(ids, 1):
        if class_id not in synsets:
            raise ValueError(f"{DEVKIT}: ground truth line {number} has ID {class_id}, not a class of meta.mat")
        labels[f"ILSVRC2012_val_{number:08d}.JPEG"] = synsets[class_id][0]
    return labels


def _read_kaggle_mapping(path: Path) -> dict[str, str]:
    """``{wnid: words}`` from lines such as ``n01440764 tench, Tinca tinca``."""
    names = {}
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            names[wnid] = " ".join(words.split())
    if not names:
        raise ValueError(f"{path}: no classes in it")
    return names


def _read_kaggle_val_solution(path: Path, classes: set[str]) -> dict[str, str]:
    """``{val file name: wnid}``: the first word of PredictionString is the image's class."""
    labels = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or ()):
            raise ValueError(f"{path}: expected the columns ImageId,PredictionString")
        for row in rows:
            words = (row["PredictionString"] or "").split()
            if not words or words[0] not in classes:
                raise ValueError(f"{path}: line {rows.line_num}: no class of {KAGGLE_MAPPING} in {row!r}")
            labels[f"{row['ImageId']}.JPEG"] = words[0]
    return labels


def _write_class_files(out: Path, names: dict[str, str]) -> tuple[list[str], bool]:
    """Write classes.txt, and class_names.txt if there are names; ``(sorted wnids, whether names were written)``.

    Sorted wnid order is the class index convention of published checkpoints.
    """
    classes = sorted(names)
    _write_text_if_changed(out / "classes.txt", "".join(f"{w}\n" for w in classes))
    with_names = any(names.values())
    if with_names:
        _write_text_if_changed(out / "class_names.txt", "".join(f"{w}\t{names[w]}\n" for w in classes))
    return classes, with_names


# -------------------------------------------------------------------------------------------- official release


def _official_train(tar_path: Path, out: Path, classes: list[str], progress: bool) -> SplitReport:
    """Extract each ``<wnid>.tar`` inside the train tar into ``out/train/<wnid>/``, skipping marked classes."""
    report = SplitReport(
        "train",
        source=f"images in the class tars of {TRAIN_TAR}",
        missing_classes_where=f"no images for them in {TRAIN_TAR}",
        skipped_why=f"members of {TRAIN_TAR} that are not <wnid>.tar of a class in meta.mat",
    )
    known = set(classes)
    with _archive_errors(str(tar_path)), tarfile.open(tar_path, "r:") as outer:
        by_class: dict[str, tarfile.TarInfo] = {}
        for member in outer.getmembers():
            name = PurePosixPath(member.name).name
            if member.isfile() and name.endswith(".tar") and name[: -len(".tar")] in known:
                by_class[name[: -len(".tar")]] = member
            elif member.isfile():
                report.skipped.append(name)
        total = sum(m.size for m in by_class.values())
        with _progress_bar(progress, total, "train", unit="B") as bar:
            # In archive order, so that a disk reads the 140 GB tar front to back.
            for wnid, member in sorted(by_class.items(), key=lambda item: item[1].offset):
                bar.set_postfix_str(wnid, refresh=False)
                names, unwritten, new = _official_train_class(outer, member, tar_path, out, wnid, bar)
                report.expected += len(names)
                report.written += len(names) - len(unwritten)
                report.new += new
                report.unwritten += [f"{wnid}/{n}" for n in unwritten]
                report.extra += _extra_files(out / "train" / wnid, names)
                if not names:
                    report.missing_classes.append(wnid)
    report.missing_classes = sorted(report.missing_classes + [w for w in classes if w not in by_class])
    report.extra += _extra_folders(out / "train", by_class)
    return report


def _official_train_class(
    outer: tarfile.TarFile, member: tarfile.TarInfo, tar_path: Path, out: Path, wnid: str, bar: tqdm
) -> tuple[list[str], list[str], int]:
    """One class: ``(image names in its tar, those of them not under out/ now, how many this run wrote)``."""
    folder = out / "train" / wnid
    marker = out / STATE_DIR / "train" / f"{wnid}.json"
    existing = _finished_files(folder)
    done = _read_marker(marker) or {}
    files = done.get("files")
    # The marker lists the class's files, so a finished class costs a directory listing, not a pass over its tar.
    if done.get("size") == member.size and isinstance(files, list) and set(files) <= existing:
        bar.update(member.size)
        return files, [], 0
    label = f"{tar_path} (member {member.name})"
    names, new, seen = [], 0, 0
    with _archive_errors(label):
        inner_file = outer.extractfile(member)
        assert inner_file is not None  # a regular file
        with tarfile.open(fileobj=inner_file, mode="r:") as inner:
            for image in inner:
                name = _safe_name(image)
                if name is None:
                    continue
                names.append(name)
                dest = folder / name
                if _needs_writing(dest, existing, image.size):
                    folder.mkdir(parents=True, exist_ok=True)
                    source = inner.extractfile(image)
                    assert source is not None
                    _write_atomic(dest, source, image.size)
                    new += 1
                bar.update(image.size)
                seen += image.size
    bar.update(max(member.size - seen, 0))  # the tar headers and padding
    finished = _finished_files(folder)
    unwritten = [n for n in names if n not in finished]
    if names and not unwritten:
        _write_marker(marker, {"source": member.name, "size": member.size, "files": names})
    return names, unwritten, new


def _official_val(tar_path: Path, out: Path, labels: dict[str, str], progress: bool) -> SplitReport:
    """Put each val image of the val tar under the class its ground-truth ID names."""
    report = SplitReport(
        "val",
        source="images listed in the ground truth",
        missing_files_where=f"listed in the ground truth but not in {VAL_TAR}",
        skipped_why=f"files in {VAL_TAR} that the ground truth does not list",
    )
    existing = {w: _finished_files(out / "val" / w) for w in set(labels.values())}
    marker = out / STATE_DIR / "val.json"
    done = _read_marker(marker) or {}
    size = tar_path.stat().st_size
    # Finished before (with whatever the tar lacked then): nothing to read from the 6 GB tar.
    if done.get("size") == size and isinstance(done.get("missing"), list) and isinstance(done.get("skipped"), list):
        missing = set(done["missing"])
        if all(name in existing[w] for name, w in labels.items() if name not in missing):
            report.skipped = done["skipped"]
            _count_val(report, out, labels, {n for n in labels if n not in missing})
            return report
    in_tar: set[str] = set()
    with _archive_errors(str(tar_path)), tarfile.open(tar_path, "r:") as tar:
        with _progress_bar(progress, len(labels), "val", unit="img") as bar:
            for image in tar:
                name = _safe_name(image)
                if name is None:
                    continue
                if name not in labels:
                    report.skipped.append(name)
                    continue
                in_tar.add(name)
                dest = out / "val" / labels[name] / name
                if _needs_writing(dest, existing[labels[name]], image.size):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(image)
                    assert source is not None
                    _write_atomic(dest, source, image.size)
                    report.new += 1
                bar.update()
    _count_val(report, out, labels, in_tar)
    if not report.unwritten:
        record = {"source": VAL_TAR, "size": size, "missing": report.missing_files, "skipped": report.skipped}
        _write_marker(marker, record)
    return report


def _count_val(report: SplitReport, out: Path, labels: dict[str, str], in_source: set[str]) -> None:
    """Fill in the val counts from what is under out/val now."""
    present = {w: _finished_files(out / "val" / w) for w in set(labels.values())}
    report.expected = len(labels)
    report.missing_files = [n for n in labels if n not in in_source]
    report.unwritten = [f"{w}/{n}" for n, w in labels.items() if n in in_source and n not in present[w]]
    report.written = sum(1 for n, w in labels.items() if n in present[w])
    by_class: dict[str, list[str]] = {w: [] for w in present}
    for name, wnid in labels.items():
        by_class[wnid].append(name)
    for wnid, names in sorted(by_class.items()):
        report.extra += _extra_files(out / "val" / wnid, names, present[wnid])
    report.extra += _extra_folders(out / "val", by_class)


# -------------------------------------------------------------------------------------------------- Kaggle layout


def _kaggle_train(root: Path, out: Path, classes: list[str], placer: _Placer, progress: bool) -> SplitReport:
    """Link (or copy) ``train/<wnid>/*`` of the Kaggle tree into ``out/train/<wnid>/``."""
    report = SplitReport(
        "train",
        source=f"images in {KAGGLE_IMAGES}/train",
        missing_classes_where=f"no images for them in {KAGGLE_IMAGES}/train/<wnid>/",
        skipped_why=f"folders in {KAGGLE_IMAGES}/train that are not classes of {KAGGLE_MAPPING}",
    )
    known = set(classes)
    report.skipped = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name not in known)
    sources = {w: _source_images(root / w) for w in classes}
    report.extra += _extra_folders(out / "train", {w for w, names in sources.items() if names})
    with _progress_bar(progress, sum(map(len, sources.values())), "train", unit="img") as bar:
        for wnid in classes:
            names = sources[wnid]
            if not names:
                report.missing_classes.append(wnid)
                continue
            folder = out / "train" / wnid
            marker = out / STATE_DIR / "train" / f"{wnid}.json"
            existing = _finished_files(folder)
            trusted = _read_marker(marker) is not None  # finished before: names suffice, no stat of each file
            for name in names:
                source, dest = root / wnid / name, folder / name
                if name not in existing or (not trusted and _needs_writing(dest, existing, source.stat().st_size)):
                    folder.mkdir(parents=True, exist_ok=True)
                    placer.place(source, dest)
                    report.new += 1
                bar.update()
            finished = _finished_files(folder)
            unwritten = [n for n in names if n not in finished]
            report.expected += len(names)
            report.written += len(names) - len(unwritten)
            report.unwritten += [f"{wnid}/{n}" for n in unwritten]
            report.extra += _extra_files(folder, names)
            if not unwritten:
                _write_marker(marker, {"source": f"{KAGGLE_IMAGES}/train/{wnid}", "files": len(names)})
    return report


def _kaggle_val(root: Path, out: Path, labels: dict[str, str], placer: _Placer, progress: bool) -> SplitReport:
    """Link (or copy) the flat Kaggle val images into ``out/val/<wnid>/`` by LOC_val_solution.csv."""
    report = SplitReport(
        "val",
        source=f"images listed in {KAGGLE_VAL_SOLUTION}",
        missing_files_where=f"listed in {KAGGLE_VAL_SOLUTION} but not in {KAGGLE_IMAGES}/val",
        skipped_why=f"files in {KAGGLE_IMAGES}/val that {KAGGLE_VAL_SOLUTION} does not list",
    )
    in_source = set(_source_images(root))
    report.skipped = sorted(in_source - set(labels))
    existing = {w: _finished_files(out / "val" / w) for w in set(labels.values())}
    with _progress_bar(progress, len(labels), "val", unit="img") as bar:
        for name, wnid in labels.items():
            dest = out / "val" / wnid / name
            if name in in_source and _needs_writing(dest, existing[wnid], (root / name).stat().st_size):
                dest.parent.mkdir(parents=True, exist_ok=True)
                placer.place(root / name, dest)
                report.new += 1
            bar.update()
    _count_val(report, out, labels, in_source)
    return report


def _source_images(folder: Path) -> list[str]:
    """Sorted names of the files in a Kaggle image folder (none if it is absent)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


# os.link failures that copying gets around: another filesystem, not allowed (protected_hardlinks, read-only
# source owned by someone else), too many links to one file, a filesystem without hard links.
_NO_LINK_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class _Placer:
    """Hard-links source files into the output tree; copies once links fail (another filesystem, no permission)."""

    def __init__(self) -> None:
        self.linked = 0
        self.copied = 0
        self._links_work = True

    def place(self, source: Path, dest: Path) -> None:
        """``dest`` becomes a hard link to (or a copy of) ``source``, through a temporary name."""
        if self._links_work:
            tmp = _part_path(dest)
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError as e:
                if e.errno not in _NO_LINK_ERRNOS:
                    raise
                # EMLINK is this one file's problem (too many links); the others mean links will keep failing.
                self._links_work = e.errno == errno.EMLINK
            else:
                os.replace(tmp, dest)
                self.linked += 1
                return
        with open(source, "rb") as f:
            _write_atomic(dest, f, os.fstat(f.fileno()).st_size)
        self.copied += 1


# ---------------------------------------------------------------------------------------------- file mechanics


@contextmanager
def _archive_errors(label: str) -> Iterator[None]:
    """Turn the many ways a damaged archive fails into one ValueError that names it."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        reason = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library wrote
        raise ValueError(f"{label}: unreadable, corrupt or truncated archive ({reason})") from e


@contextmanager
def _progress_bar(enabled: bool, total: int, desc: str, unit: str) -> Iterator[tqdm]:
    """A tqdm bar on stderr (a disabled one still counts, so callers need not check)."""
    scale = unit == "B"  # "30.7kB"; counts of images stay whole numbers
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, dynamic_ncols=True, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


def _safe_name(member: tarfile.TarInfo) -> str | None:
    """The file name to write a tar member under, or None for what is not an image file.

    Only the base name is used, so a member path can never point outside the output folder; hidden names
    are left out because the temporaries of this module are hidden.
    """
    name = PurePosixPath(member.name).name
    if not member.isfile() or not name or name.startswith("."):
        return None
    return name


def _part_path(dest: Path) -> Path:
    """The temporary name ``dest`` is written under before the rename."""
    return dest.with_name(f".{dest.name}{PART_SUFFIX}")


def _write_atomic(dest: Path, data: BinaryIO, size: int | None = None) -> None:
    """Stream ``data`` into ``dest`` through its ``.part`` name, so that ``dest`` only ever holds a whole file."""

    def copy(f: BinaryIO) -> None:
        shutil.copyfileobj(data, f, 1 << 20)
        if size is not None and f.tell() != size:
            raise ValueError(f"{dest.name}: got {f.tell()} bytes of {size}; truncated source?")

    write_atomic(dest, copy, temp=_part_path(dest))


def _needs_writing(dest: Path, existing: set[str], size: int) -> bool:
    """Whether ``dest`` is absent (not in ``existing``, its folder's finished files) or not ``size`` bytes long.

    A final name only ever gets a whole file, but without an fsync a crash can still leave a short one;
    the size check catches that where no marker vouches for the folder.
    """
    return dest.name not in existing or dest.stat().st_size != size


def _extra_files(folder: Path, names: Sequence[str], finished: set[str] | None = None) -> list[str]:
    """``<folder name>/<file>`` of the finished files in ``folder`` that are not ``names``."""
    if finished is None:
        finished = _finished_files(folder)
    return [f"{folder.name}/{n}" for n in sorted(finished.difference(names))]


def _extra_folders(split_dir: Path, classes: Collection[str]) -> list[str]:
    """``<folder>/`` of the non-hidden folders in ``split_dir`` that hold no class the source has images for."""
    try:
        entries = list(os.scandir(split_dir))
    except FileNotFoundError:
        return []
    return sorted(f"{e.name}/" for e in entries if e.is_dir() and not e.name.startswith(".") and e.name not in classes)


def _finished_files(folder: Path) -> set[str]:
    """Names of the finished files in ``folder``; temporaries left by an interrupted run are deleted.

    Other hidden files (``.DS_Store``, ...) are neither images nor ours, so they do not count.
    """
    names = set()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return names
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
            Path(entry.path).unlink(missing_ok=True)
        elif entry.is_file() and not entry.name.startswith("."):
            names.add(entry.name)
    return names


def _read_marker(path: Path) -> dict | None:
    """A done-marker's contents, or None when absent or unreadable (then the work is redone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(path: Path, data: dict) -> None:
    """Record finished work, unless the same record is already there (a re-run changes nothing)."""
    _write_text_if_changed(path, json.dumps(data) + "\n")


def _write_text_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically, leaving the file untouched when it already holds exactly that."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, io.BytesIO(text.encode()))


def _plural(count: int, noun: str) -> str:
    """``"1 image"``, ``"1,300 images"``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _examples(names: Sequence[str]) -> str:
    """The first few names, and how many more."""
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f", ... ({len(names) - EXAMPLES:,} more)" if len(names) > EXAMPLES else "")
