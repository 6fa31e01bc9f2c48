"""WebDataset-style tar shards: writing them from an ImageFolder tree, and reading them as a dataset.

Layout (the WebDataset convention: a sample is the run of consecutive members sharing a key)::

    out/<split>/<split>-000000.tar      <key>.jpeg  (the original file's bytes)
                                        <key>.cls   (class index, ASCII decimal)
                                        ...
    out/<split>/index.json              classes, num_samples, shards [{name, num_samples}], format_version

Large sequential reads are what network and spinning disks serve fast, where ImageNet's 1.3M small
files are not. Each shard is written to a temp name and renamed, so a shard under its final name is
complete; a re-run keeps the shards whose members are already the planned ones.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sys
import tarfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from ..runtime.distributed import rank_and_world
from ..runtime.files import idle_for, write_atomic
from .decode import BadImageError
from .folders import BadImages, check_bad_images, class_folder_names, read_class_list, scan_image_folder
from .sample import Decode, prepare_sample
from .transforms import SampleTransform

FORMAT_VERSION = 1
INDEX = "index.json"
# Member extensions that hold the image (any of them; decode_rgb sniffs the real format).
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif"})
# A temp file not written to for this long was left by a run that died (a live writer touches it constantly).
STALE_TEMP_S = 600.0
# Workers a mid-epoch resume position (``ShardDataset.set_epoch(epoch, skip)``) can describe.
MAX_WORKERS = 256
_TEMP = re.compile(r"^\..+\.\d+\.tmp$")
_READ_BUFFER = 1 << 20


class ShardError(RuntimeError):
    """A shard that cannot be read as its index describes it; the message names the shard (and key).

    One message argument only, so that a DataLoader worker can re-raise it in the main process.
    """


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Source:
    key: str
    ext: str
    path: str
    label: int

    @property
    def members(self) -> tuple[str, str]:
        return f"{self.key}.{self.ext}", f"{self.key}.cls"


def _sanitise(text: str) -> str:
    # A key must hold no dot (the key ends at the first one) and no slash (no folders in the tar).
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _plan_split(split_dir: Path, classes: list[str] | None, source: str) -> tuple[list[str], list[_Source]]:
    """Classes and the samples of an ImageFolder split, in sorted order, with unique, stable keys.

    ``classes`` (from ``source``) is the dataset's class list, the same for every split; None: the
    split's own sorted folders.
    """
    # ValueError naming the folder if missing or empty, or a class folder outside the list.
    classes, samples = scan_image_folder(split_dir, classes, source)
    sources, seen = [], set()
    for path, label in samples:
        p = Path(path)
        key = f"{_sanitise(classes[label])}__{_sanitise(p.stem)}"
        if key in seen:  # e.g. "a.jpg" beside "a.png", or "a b" beside "a_b": number the later ones
            n = 1
            while f"{key}_{n}" in seen:
                n += 1
            key = f"{key}_{n}"
        seen.add(key)
        sources.append(_Source(key, p.suffix[1:].lower(), path, label))
    return classes, sources


def shard_name(split: str, number: int) -> str:
    """``train-000012.tar``."""
    return f"{split}-{number:06d}.tar"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # the same tree gives the same shard bytes
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, sources: Sequence[_Source], bar: tqdm) -> None:
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for s in sources:
                with open(s.path, "rb") as src:
                    data = src.read()
                image_name, cls_name = s.members
                _add_member(tar, image_name, data)
                _add_member(tar, cls_name, str(s.label).encode("ascii"))
                bar.update()

    write_atomic(path, write, fsync=True)


def _shard_is_complete(path: Path, sources: Sequence[_Source]) -> bool:
    """True when the tar at ``path`` holds exactly the planned members, in order, all within the file,
    with the planned labels.

    Names and labels only (headers and the few bytes of each .cls are read, image data is seeked over):
    stat-ing every source again would cost as much as a network file system charges for reading it. The
    labels are read because a key names its class, not its index: a shard written under another class
    list (e.g. a val split indexed on its own) has the right names and the wrong labels.
    """
    expected = [name for s in sources for name in s.members]
    labels = [str(s.label).encode("ascii") for s in sources]
    try:
        size = path.stat().st_size
        with tarfile.open(path, mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if [m.name for m in members] != expected or any(m.offset_data + m.size > size for m in members):
                return False
            return [tar.extractfile(m).read() for m in members[1::2]] == labels
    except (OSError, tarfile.TarError):
        return False


def _remove_stale(folder: Path, split: str, num_shards: int) -> None:
    """Delete temp files of runs that died, and shards past the end of this plan (from a larger one)."""
    now = time.time()
    own_shard = re.compile(rf"^{re.escape(split)}-(\d{{6}})\.tar$")
    for entry in os.scandir(folder):
        m = own_shard.match(entry.name)
        if m and int(m.group(1)) >= num_shards:
            os.unlink(entry.path)
        elif _TEMP.match(entry.name) and idle_for(Path(entry.path), now) > STALE_TEMP_S:
            Path(entry.path).unlink(missing_ok=True)


def _write_split(
    split_dir: Path,
    out: Path,
    split: str,
    shard_size: int,
    seed: int,
    progress: bool,
    class_list: tuple[list[str] | None, str] = (None, ""),
) -> dict[str, object]:
    classes, sources = _plan_split(split_dir, *class_list)
    if split == "train":
        random.Random(seed).shuffle(sources)  # so every shard, and every shuffle buffer, mixes classes
    chunks = [sources[i : i + shard_size] for i in range(0, len(sources), shard_size)]
    names = [shard_name(split, i) for i in range(len(chunks))]
    index = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "classes": classes,
        "num_samples": len(sources),
        "shards": [{"name": n, "num_samples": len(c)} for n, c in zip(names, chunks, strict=True)],
        "shard_size": shard_size,
        "seed": seed,
        "shuffled": split == "train",
    }
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i, (n, c) in enumerate(zip(names, chunks, strict=True)) if not _shard_is_complete(out / n, c)]
    if todo or _read_json(out / INDEX) != index:
        # The old index must not describe a half-rewritten split if this run dies.
        (out / INDEX).unlink(missing_ok=True)
    done = len(sources) - sum(len(chunks[i]) for i in todo)
    with tqdm(
        total=len(sources), initial=done, desc=f"{split} shards", unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for i in todo:
            _write_shard(out / names[i], chunks[i], bar)
    _remove_stale(out, split, len(chunks))
    if _read_json(out / INDEX) != index:
        write_atomic(out / INDEX, fsync=True, write=lambda f: f.write((json.dumps(index, indent=1) + "\n").encode()))
    return index


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _class_list(data: Path) -> tuple[list[str] | None, str]:
    """The class list every split is indexed by, and where it comes from: ``data/classes.txt`` when
    present, else the sorted class folders of ``data/train``; ``(None, "")`` when neither exists."""
    listed = read_class_list(data)
    if listed is not None:
        return listed, str(data / "classes.txt")
    if (data / "train").is_dir():
        return class_folder_names(data / "train"), f"the class folders of {data / 'train'}"
    return None, ""


def make_shards(
    data: Path,
    out: Path,
    shard_size: int = 5000,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict]:
    """Write ``data/<split>/<class>/<file>`` as tar shards ``out/<split>/<split>-NNNNNN.tar`` plus ``index.json``.

    Class index = position in ``data/classes.txt`` when present, else in the sorted class folders of
    ``data/train``, for every split: a val split that lacks a class keeps the training indices (and a
    val class folder outside that list is an error naming it). Without either, a split's own sorted
    folders. Train samples are shuffled across shards with ``seed``; other splits keep sorted order.
    Resumable: complete shards (same members, same labels) are kept. Returns ``{split: index}``; raises
    ValueError naming the path for a missing data folder, a split without class folders, or an empty
    class folder.
    """
    data, out = Path(data), Path(out)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    if not data.is_dir():
        raise ValueError(f"{data}: no such data folder")
    # Check every split before writing any, so a typo does not cost an hour of train shards first.
    for split in splits:
        if not (data / split).is_dir():
            raise ValueError(f"{data / split}: no such split folder")
    class_list = _class_list(data)
    return {
        split: _write_split(data / split, out / split, split, shard_size, seed, progress, class_list)
        for split in splits
    }


# ----------------------------------------------------------------------------------------------- reading


def read_index(split_dir: Path) -> dict:
    """The ``index.json`` of a shard folder, checked for the fields the reader needs."""
    path = Path(split_dir) / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no shard index (write shards with `scnet-data make-shards`)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {index.get('format_version')!r}, this reader knows {FORMAT_VERSION}")
    counts = [s["num_samples"] for s in index["shards"]]
    if sum(counts) != index["num_samples"]:
        raise ValueError(f"{path}: shard sizes add up to {sum(counts)}, not num_samples {index['num_samples']}")
    return index


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name; the rest is the extension."""
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _label_map(shard_classes: list[str], classes: list[str], index: Path, classes_from: str) -> list[int]:
    """For each class of a shard index, its position in ``classes``; a class not there is a ValueError."""
    position = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in shard_classes if name not in position]
    if unknown:
        raise ValueError(f"{index}: class {unknown[0]!r} is not in {classes_from} ({len(classes)} classes)")
    return [position[name] for name in shard_classes]


def _worker_quotas(total: int, num_workers: int) -> list[int]:
    """``total`` split as evenly as possible over workers, the same on every rank (so every rank makes
    the same number of per-worker batches, not just the same number of samples)."""
    return [total // num_workers + (1 if w < total % num_workers else 0) for w in range(num_workers)]


class ShardDataset(IterableDataset):
    """Samples ``(image, label, names)`` from the shards of one split (a folder with ``index.json``).

    ``image`` is ``transform(decode_rgb(bytes))`` (the uint8 3xHxW tensor without a transform), or with
    ``decode="device"`` the bytes left encoded, their crop drawn (:func:`~scnet.data.sample.prepare_sample`). A bad
    sample (named ``shard:key``) follows ``bad_images``: ``"replace"`` (training) leaves it out and names
    it in the next sample's ``names`` (the bad samples it stands in for, usually ``()``); ``"skip"``
    (evaluation) yields it as ``(None, label, (name,))``, a sample without image, so that its name
    reaches the batch even at the end of the stream; ``"raise"`` raises BadImageError naming it.

    ``classes`` (the training split's or a checkpoint's list, described by ``classes_from`` in errors)
    re-indexes the labels by class name; default: the index's own list.

    Every sample of an epoch goes to exactly one (rank, DataLoader worker) slot: whole shards when there
    are at least as many shards as slots, otherwise every num_slots-th sample. With ``shuffle``, the shard
    order is permuted per epoch (seed + epoch, the same on every rank) and samples pass through a
    ``buffer_size`` shuffle buffer seeded by (seed, epoch, rank, worker). ``equal_per_rank`` (training
    under DDP): every rank yields exactly ``num_samples // world_size`` samples, split over workers the
    same way on every rank, so ranks step equally often; a worker whose shards hold fewer samples than its
    share repeats some (only with unequal shards). Otherwise every sample is seen exactly once across ranks.

    With ``shuffle`` (training), the global CPU RNG is seeded before each sample's transform from (seed,
    epoch, rank, worker, the sample's raw position in the worker's stream): a sample's augmentation does
    not depend on what was decoded before it, so a mid-epoch resume (``set_epoch(epoch, skip)``, positions
    kept by :class:`ShardPosition`) yields exactly the batches the uninterrupted epoch would have.

    ``set_epoch`` reaches persistent workers too: the epoch and the resume position live in shared memory.
    Call it before the DataLoader's iterator is created. rank/world_size default to torch.distributed's at
    construction.
    """

    def __init__(
        self,
        split_dir: Path,
        transform: SampleTransform | None = None,
        shuffle: bool = False,
        buffer_size: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        bad_images: BadImages = "replace",
        equal_per_rank: bool = False,
        classes: Sequence[str] | None = None,
        classes_from: str = "the class list",
        decode: Decode = "cpu",
        draft: bool = False,
    ) -> None:
        super().__init__()
        check_bad_images(bad_images)
        self.split_dir = Path(split_dir)
        index = read_index(self.split_dir)
        self.shard_classes: list[str] = list(index["classes"])
        self.classes: list[str] = self.shard_classes if classes is None else list(classes)
        # Shard label -> label in self.classes (by name).
        self._label_map = _label_map(self.shard_classes, self.classes, self.split_dir / INDEX, classes_from)
        self.num_samples: int = int(index["num_samples"])
        self.shards: list[tuple[str, int]] = [(s["name"], int(s["num_samples"])) for s in index["shards"]]
        default_rank, default_world = rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if shuffle and buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        self.transform = transform
        self.decode, self.draft = decode, draft
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.seed = seed
        self.bad_images = bad_images
        self.equal_per_rank = equal_per_rank
        # Shared memory: DataLoader workers (persistent ones too) hold a copy of this object, not this object.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # The resume position: (raw items, samples yielded) per worker stream; _resume_at: how many streams it
        # describes (0: none, the start of the epoch) and the stream DataLoader worker 0 reads.
        self._skip = torch.zeros((MAX_WORKERS, 2), dtype=torch.int64).share_memory_()
        self._resume_at = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int, skip: Sequence[tuple[int, int]] | None = None, next_worker: int = 0) -> None:
        """Select the epoch's shard order and shuffle, and where each worker's stream starts in it.

        ``skip[w] = (raw, yielded)``: worker w (one entry per DataLoader worker, one for ``workers=0``) has
        already read ``raw`` items of this epoch's stream (after the shuffle buffer; bad ones included) that
        gave ``yielded`` samples; it goes on from item ``raw``, with the same shard order, shuffle buffer and
        augmentation seeds as the uninterrupted epoch, without decoding the skipped items. ``next_worker``:
        the worker whose batch came next; a DataLoader starts with its worker 0, so its worker i reads stream
        ``(next_worker + i) % workers``. Both come from :class:`ShardPosition`. A bad item that the skipped
        part read but no skipped sample replaced is not reported in ``replaced`` (never the case at a batch
        boundary, where ShardPosition counts). None: from the start.
        """
        streams = 0 if skip is None else len(skip)
        if skip is not None and not 1 <= streams <= MAX_WORKERS:
            raise ValueError(f"skip needs one (raw, yielded) pair per worker, 1 to {MAX_WORKERS}, not {streams}")
        if not 0 <= next_worker < max(streams, 1):
            raise ValueError(f"next_worker {next_worker} is not one of the {max(streams, 1)} worker(s) of skip")
        self._skip.zero_()
        for w, (raw, yielded) in enumerate(skip or ()):
            if not 0 <= yielded <= raw:
                raise ValueError(f"skip[{w}] = ({raw}, {yielded}): need 0 <= yielded <= raw")
            self._skip[w, 0], self._skip[w, 1] = raw, yielded
        self._resume_at[0], self._resume_at[1] = streams, next_worker
        self._epoch.fill_(epoch)

    def _stream(self, loader_worker: int, num_workers: int) -> tuple[int, int, int]:
        """The worker stream a DataLoader worker reads, and its (raw items, samples yielded) to skip."""
        streams, next_worker = self._resume_at.tolist()
        if streams == 0:
            return loader_worker, 0, 0
        if streams != num_workers:
            raise ShardError(
                f"{self.split_dir}: resume position is for {streams} DataLoader stream(s), read with {num_workers}"
            )
        worker = (next_worker + loader_worker) % num_workers
        raw, yielded = self._skip[worker].tolist()
        return worker, raw, yielded

    # -------------------------------------------------------------------------------- who reads what

    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)  # the same on every rank and worker
        return order

    def _assignment(self, epoch: int, slot: int, num_slots: int) -> list[tuple[int, Callable[[int], bool] | None]]:
        """The shards a slot reads, in order, each with a filter on its sample positions (None: all)."""
        order = self._shard_order(epoch)
        if len(order) >= num_slots:
            return [(s, None) for s in order[slot::num_slots]]
        plan, offset = [], 0
        for s in order:  # fewer shards than slots: every num_slots-th sample of the epoch's sequence
            plan.append((s, lambda i, first=offset: (first + i) % num_slots == slot))
            offset += self.shards[s][1]
        return plan

    def _slot_count(self, epoch: int, slot: int, num_slots: int) -> int:
        """How many samples a slot holds this epoch (from the index; bad samples included)."""
        order = self._shard_order(epoch)
        if len(order) >= num_slots:
            return sum(self.shards[s][1] for s in order[slot::num_slots])
        return len(range(slot, self.num_samples, num_slots))

    # -------------------------------------------------------------------------------- reading

    def _read_shard(self, shard: int, want: Callable[[int], bool] | None) -> Iterator[tuple[str, bytes, int]]:
        """``(name, image bytes, label)`` of the wanted samples of one shard, streamed (one pass, no seeks)."""
        shard_name, expected = self.shards[shard]
        path = self.split_dir / shard_name
        count, key, keep, parts = 0, None, False, {}
        try:
            with open(path, "rb", buffering=_READ_BUFFER) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _split_key(member.name)
                    if k != key:
                        if keep:
                            yield self._finish(shard_name, key, parts)
                        key, parts = k, {}
                        keep = want is None or want(count)
                        count += 1
                    if keep:
                        parts[ext] = tar.extractfile(member).read()
                if keep:
                    yield self._finish(shard_name, key, parts)
        except (OSError, tarfile.TarError) as e:
            where = f"{shard_name}:{key}" if key is not None else shard_name
            raise ShardError(f"{path}: cannot read shard at {where} ({type(e).__name__}: {e})") from e
        if count != expected:
            raise ShardError(f"{path}: holds {count} samples, its index says {expected} (re-run make-shards)")

    def _finish(self, shard_name: str, key: str, parts: dict[str, bytes]) -> tuple[str, bytes, int]:
        name = f"{shard_name}:{key}"
        images = [ext for ext in parts if ext in IMAGE_EXTS]
        if len(images) != 1 or "cls" not in parts:
            raise ShardError(f"{name}: a sample needs one image and one .cls member, found {sorted(parts)}")
        try:
            label = int(parts["cls"].decode("ascii").strip())
        except ValueError:
            raise ShardError(f"{name}: .cls member is not a class index: {parts['cls'][:20]!r}") from None
        if not 0 <= label < len(self.shard_classes):
            raise ShardError(f"{name}: class index {label} out of range for {len(self.shard_classes)} classes")
        return name, parts[images[0]], self._label_map[label]

    def _raw(self, epoch: int, slot: int, num_slots: int) -> Iterator[tuple[str, bytes, int]]:
        for shard, want in self._assignment(epoch, slot, num_slots):
            yield from self._read_shard(shard, want)

    @staticmethod
    def _buffered(items: Iterator, size: int, rng: random.Random) -> Iterator:
        """A shuffle buffer: each arriving item swaps out a random one of ``size`` held (encoded bytes,
        not decoded pixels, so a 1000-sample buffer costs ~110 MB per worker for ImageNet, not ~500)."""
        buf: list = []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            j = rng.randrange(size)
            yield buf[j]
            buf[j] = item
        rng.shuffle(buf)
        yield from buf

    def _decode(
        self, name: str, data: bytes, label: int, pending: list[str], seed: int | None
    ) -> tuple[torch.Tensor | None, int, tuple[str, ...]] | None:
        """Decode and transform one item (the CPU RNG seeded with ``seed`` first, unless None); a bad image is
        raised, returned without image (skip), or named in ``pending`` for the next sample (replace: None)."""
        try:
            image = prepare_sample(data, name, self.transform, seed, self.decode, self.draft)
        except BadImageError:
            if self.bad_images == "raise":
                raise
            if self.bad_images == "skip":
                return None, label, (name,)
            pending.append(name)
            return None
        except Exception as e:  # noqa: BLE001 - a worker must say which sample, not die anonymously
            raise ShardError(f"{name}: {type(e).__name__}: {e}") from e
        replaced = tuple(pending)
        pending.clear()
        return image, label, replaced

    def _pass_items(
        self, epoch: int, worker: int, slot: int, num_slots: int, repeat: int
    ) -> Iterator[tuple[str, bytes, int]]:
        """One pass over this slot's items, undecoded: read, (shuffle)."""
        items = self._raw(epoch, slot, num_slots)
        if self.shuffle:
            # A string seed is hashed with SHA-512: stable across runs and Python versions, unlike hash().
            rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}/{repeat}")
            items = self._buffered(items, self.buffer_size, rng)
        return items

    def _sample_seed(self, epoch: int, worker: int, position: int) -> int:
        """The augmentation seed of the item at raw ``position`` of a worker's stream (stable: crc32)."""
        return zlib.crc32(f"shard:{self.seed}:{epoch}:{self.rank}:{worker}:{position}".encode())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, tuple[str, ...]]]:
        info = get_worker_info()
        loader_worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker, skip, yielded = self._stream(loader_worker, num_workers)
        # Slot numbering worker-major: a rank's share of the samples does not depend on num_workers.
        slot, num_slots = worker * self.world_size + self.rank, num_workers * self.world_size
        epoch = self.epoch
        quota = None
        if self.equal_per_rank:
            quota = _worker_quotas(self.num_samples // self.world_size, num_workers)[worker]
        pending: list[str] = []
        position, repeat = 0, 0  # raw items of this epoch's stream read so far (across repeats), passes done
        while quota is None or yielded < quota:
            before, first = yielded, position
            for name, data, label in self._pass_items(epoch, worker, slot, num_slots, repeat):
                position += 1
                if position <= skip:  # read already (before a resume): not decoded
                    continue
                seed = self._sample_seed(epoch, worker, position - 1) if self.shuffle else None
                sample = self._decode(name, data, label, pending, seed)
                if sample is None:
                    continue
                yield sample
                yielded += 1
                if yielded == quota:
                    return
            if quota is None:
                break
            # A pass without a good sample (unless it was partly skipped: that part held them).
            if yielded == before and (first >= skip or position == first):
                raise ShardError(
                    f"{self.split_dir}: no readable sample for rank {self.rank}, worker {worker} "
                    f"(bad: {', '.join(pending) or 'none'})"
                )
            repeat += 1  # fewer samples here than this worker's share: go round again
        if pending:
            warnings.warn(f"bad samples skipped at the end of the epoch: {', '.join(pending)}", stacklevel=2)

    def rank_num_samples(self, num_workers: int = 0, epoch: int | None = None) -> int:
        """Samples this rank yields in an epoch (bad ones included) when read with ``num_workers`` workers."""
        if self.equal_per_rank:
            return self.num_samples // self.world_size
        epoch = self.epoch if epoch is None else epoch
        n = max(num_workers, 1)
        return sum(self._slot_count(epoch, w * self.world_size + self.rank, n * self.world_size) for w in range(n))

    def _worker_batches(self, num_workers: int, batch_size: int, epoch: int | None) -> list[int]:
        """Full batches of each worker's stream this epoch (one stream for ``num_workers=0``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        n = max(num_workers, 1)
        if self.equal_per_rank:
            counts = _worker_quotas(self.num_samples // self.world_size, n)
        else:
            epoch = self.epoch if epoch is None else epoch
            counts = [self._slot_count(epoch, w * self.world_size + self.rank, n * self.world_size) for w in range(n)]
        return [c // batch_size for c in counts]

    def batch_order(self, num_workers: int, batch_size: int, epoch: int | None = None) -> list[int]:
        """The worker of each batch this rank's DataLoader (``drop_last=True``) delivers in an epoch, in order.

        The DataLoader takes batches from its workers in turn, passing over a worker once it has none left.
        Exact with ``equal_per_rank`` (training); otherwise counted from the index, so bad samples that are
        replaced can leave a worker short of this.
        """
        batches = self._worker_batches(num_workers, batch_size, epoch)
        return [w for r in range(max(batches)) for w, n in enumerate(batches) if r < n]

    def rank_num_batches(self, num_workers: int, batch_size: int, epoch: int | None = None) -> int:
        """Batches this rank's DataLoader (``drop_last=True``) delivers in an epoch: ``len(batch_order(...))``."""
        return sum(self._worker_batches(num_workers, batch_size, epoch))


class ShardPosition:
    """How far each DataLoader worker's stream of a :class:`ShardDataset` epoch has been consumed, counted
    from the batches the trainer received, for an exact mid-epoch resume.

    ``order`` is :meth:`ShardDataset.batch_order` of the epoch (batch j came from worker ``order[j]``; exact
    with ``equal_per_rank``, as in training); ``state`` a :meth:`state_dict` from a checkpoint (None: the
    start of the epoch). Use::

        pos = ShardPosition(ds.batch_order(workers, batch_size, epoch), workers, state)
        ds.set_epoch(epoch, pos.skip, pos.next_worker)   # before iter(loader)
        for batch in loader:
            pos.update(len(batch.images), len(batch.replaced), len(batch.skipped))
        checkpoint["shard_position"] = pos.state_dict()   # plain ints and lists
    """

    def __init__(self, order: Sequence[int], num_workers: int, state: dict | None = None) -> None:
        self.order = list(order)
        streams = max(num_workers, 1)
        self.batches = 0  # batches received this epoch
        self._skip = [[0, 0] for _ in range(streams)]  # per worker: [raw items, samples yielded]
        if state is not None:
            skip = [[int(raw), int(yielded)] for raw, yielded in state["skip"]]
            batches = int(state["batches"])
            if len(skip) != streams or not 0 <= batches <= len(self.order):
                raise ValueError(
                    f"shard position of {batches} batches over {len(skip)} stream(s) does not fit this epoch "
                    f"({len(self.order)} batches over {streams} stream(s)): were the workers or the batch size changed?"
                )
            self.batches, self._skip = batches, skip

    def update(self, num_images: int, num_replaced: int, num_skipped: int = 0) -> None:
        """Count the next batch: its images, the bad files they replaced, the bad files it skipped."""
        if self.batches >= len(self.order):
            raise ValueError(f"batch {self.batches + 1} of an epoch of {len(self.order)}")
        counts = self._skip[self.order[self.batches]]
        counts[0] += num_images + num_replaced + num_skipped
        counts[1] += num_images + num_skipped
        self.batches += 1

    @property
    def next_worker(self) -> int:
        """The worker whose batch comes next: the ``next_worker`` of :meth:`ShardDataset.set_epoch`."""
        return self.order[self.batches] if self.batches < len(self.order) else 0

    @property
    def skip(self) -> list[tuple[int, int]]:
        """Per worker ``(raw items, samples yielded)`` so far: the ``skip`` of :meth:`ShardDataset.set_epoch`."""
        return [(raw, yielded) for raw, yielded in self._skip]

    def state_dict(self) -> dict:
        """``{"batches": int, "skip": [[raw, yielded], ...]}``: loadable with ``torch.load(weights_only=True)``."""
        return {"batches": self.batches, "skip": [list(c) for c in self._skip]}
