"""Who waits: images per second of the whole input path, from the files to normalised float images on the device,
with JPEGs decoded in the loader workers (``decode=cpu``) or on the device (``decode=gpu``), at each worker count,
beside the plain torchvision ImageFolder + PIL; and, with a model, the share of a training step spent waiting for
the next batch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from scnet.data.device import DeviceLoader, DevicePreprocess
from scnet.data.device_decode import DeviceDecoder, device_decoder_works
from scnet.data.transforms import SampleTransform
from scnet.runtime.precision import AMP_DTYPES, autocast
from scnet.runtime.seeding import use_autotuned_kernels

DECODES: tuple[str, ...] = ("cpu", "gpu")
"""Where ``scnet-bench data`` decodes the JPEGs, as ``data.decode`` says it: the loader workers, or the device."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_decodes(device: torch.device) -> list[str]:
    """``cpu`` and ``gpu`` on a CUDA device whose torchvision decodes JPEG there, else ``cpu`` alone."""
    return list(DECODES) if device_decoder_works(device)[0] else ["cpu"]


def _decoded_by(decode: str, device: torch.device, workers: int) -> tuple[str, str | None]:
    """Who decodes, in a few words, and why a ``gpu`` row is not measured (None: it is)."""
    if decode == "cpu":
        return ("the loader workers" if workers else "the main process (no workers)") + ", on the CPU", None
    works, how = device_decoder_works(device)
    if device.type != "cuda":
        return f"torchvision's CPU decoder in the main process, standing in for nvjpeg (device {device})", None
    return (how, None) if works else ("nothing", how)


def _ours(root: Path, transform: SampleTransform, batch_size: int, workers: int, decode: str, pin: bool) -> DataLoader:
    from scnet.data.folders import ImageFolderDataset, scan_image_folder
    from scnet.data.loader import build_loader

    classes, samples = scan_image_folder(root)
    where = "device" if decode == "gpu" else "cpu"
    dataset = ImageFolderDataset(samples, classes, transform=transform, seed=0, decode=where)
    return build_loader(dataset, batch_size, workers, train=True, pin_memory=pin, persistent=False)


def _baseline(root: Path, batch_size: int, image_size: int, workers: int, pin: bool) -> DataLoader:
    # The usual reference: torchvision ImageFolder, PIL decoding, v1 transforms, float output.
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=tf)
    extra = dict(prefetch_factor=4) if workers > 0 else {}
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, pin_memory=pin, **extra
    )


def _images_per_second(
    loader: Iterable, to_device: Callable[[Any], torch.Tensor], batches: int, warmup: int, device: torch.device
) -> float:
    """Images per second over ``batches`` batches, each made normalised float images on ``device`` by
    ``to_device``, after ``warmup`` batches (worker start-up, page cache). The loader's workers are shut down
    before returning."""
    it = iter(loader)
    for _ in range(warmup):
        to_device(next(it))
    _sync(device)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        count += to_device(next(it)).shape[0]
    _sync(device)
    elapsed = time.perf_counter() - start
    del it  # shuts the workers down (the loaders here are not persistent)
    return count / elapsed


class _Trainer:
    """A model trained on whatever batches it is given: forward under autocast, cross-entropy, backward, SGD."""

    def __init__(self, name: str, num_classes: int, device: torch.device, amp: str, channels_last: bool) -> None:
        import scnet

        self.device, self.amp = device, amp
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = scnet.create_model(name, num_classes=num_classes).to(device, memory_format=memory_format)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        # fp16's narrow range needs loss scaling on CUDA, as a real fp16 training run does; bf16 does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device.type == "cuda")
        self.num_classes = num_classes

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step on this batch."""
        if images.shape[0] == 0:
            return  # every sample of the batch was unreadable
        with autocast(self.device.type, self.amp):
            loss = F.cross_entropy(self.model(images), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def warm(self, batch_size: int, image_size: int, channels_last: bool) -> None:
        """One step on random input: lazy initialisation and cuDNN's autotuning stay out of the timed loops."""
        x = torch.randn(batch_size, 3, image_size, image_size, device=self.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.step(x, torch.randint(0, self.num_classes, (batch_size,), device=self.device))
        _sync(self.device)


def _train(
    loader: DataLoader, preprocess: DevicePreprocess, trainer: _Trainer, batches: int, warmup: int
) -> tuple[float, float]:
    """Training images per second over ``batches`` steps fed by ``loader`` through the trainer's own path
    (:class:`~scnet.data.device.DeviceLoader`: on CUDA the next batch's copy and decode are issued on a side
    stream), after ``warmup`` steps; and the share of that time spent waiting for the next batch (in ``next()``,
    the device-side decode included), as the trainer's ``data_wait`` counts it."""
    device = trainer.device
    it = iter(DeviceLoader(loader, device, preprocess))
    for _ in range(warmup):
        batch = next(it)
        trainer.step(batch.images, batch.labels)
    _sync(device)
    count, wait = 0, 0.0
    start = time.perf_counter()
    for _ in range(batches):
        asked = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - asked
        trainer.step(batch.images, batch.labels)
        count += batch.images.shape[0]
    _sync(device)
    elapsed = time.perf_counter() - start
    del it
    return count / elapsed, wait / elapsed


def _counts(
    workers: int, warmup: int | None, batches: int | None, available: int, batch_size: int, device: torch.device
) -> tuple[int, int]:
    """Warm-up and measured batches for ``workers``: as given, or by default one warm-up batch per worker (each
    worker makes whole batches, so the first ones arrive together) and three rounds of them measured, cut to what
    the folder holds. ValueError when the folder's ``available`` batches are too few."""
    spare = 1 if device.type == "cuda" else 0  # DeviceLoader reads one batch ahead there
    per = max(workers, 1)
    warm = per if warmup is None else warmup
    if warmup is None:
        warm = min(warm, max(available - spare - 1, 0))
    count = 3 * per if batches is None else batches
    if batches is None:
        count = min(count, available - spare - warm)
    if count < 1 or warm + count + spare > available:
        ahead = " + 1 read ahead" if spare else ""
        raise ValueError(
            f"the folder holds {available} full batch{'' if available == 1 else 'es'} of {batch_size}, fewer than "
            f"{warm} warm-up + {max(count, 1)} measured{ahead} at {workers} workers (give fewer --batches or "
            "--warmup, or a smaller --batch-size)"
        )
    return warm, count


def _check(
    decodes: Sequence[str],
    workers: Sequence[int],
    sizes: tuple[int, int, int | None, int | None],
    amp: str,
) -> None:
    """ValueError for a setting out of range (``sizes``: batch size, repeats, batches, warmup)."""
    batch_size, repeats, batches, warmup = sizes
    bad = [d for d in decodes if d not in DECODES]
    if bad:
        raise ValueError(f"decode must be among {', '.join(DECODES)}, got {', '.join(bad)}")
    if not workers or min(workers) < 0:
        raise ValueError(f"workers must be whole numbers >= 0, got {list(workers)}")
    if batch_size < 1 or repeats < 1 or (batches is not None and batches < 1) or (warmup is not None and warmup < 0):
        raise ValueError(
            f"need batch size, repeats and batches >= 1 and warmup >= 0, got {batch_size}, {repeats}, {batches} and "
            f"{warmup}"
        )
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")


def _device(requested: str | None) -> torch.device:
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")


def _torchvision_row(workers: int, device: torch.device, images_per_second: float) -> dict[str, Any]:
    row = {"loader": "torchvision", "decode": "cpu", "workers": workers, "device": str(device)}
    where = "the loader workers" if workers else "the main process (no workers)"
    row["decoded_by"] = f"PIL in {where}, float32 normalised there"
    row |= {"images_per_second": images_per_second, "images_per_second_per_worker": images_per_second / max(workers, 1)}
    row |= {"vs_torchvision": 1.0, "train_images_per_second": None, "wait_share": None}
    return row | {"stand_in": False, "skipped": None}


def _measure(
    root: Path,
    transform: SampleTransform,
    decodes: Sequence[str],
    workers: int,
    counts: tuple[int, int],
    settings: dict[str, Any],
    trainer: _Trainer | None,
) -> list[dict[str, Any]]:
    """The rows of one worker count: each decode path (images per second, and with a trainer its training img/s
    and wait share), then torchvision's."""
    device, batch_size, (warm, count) = torch.device(settings["device"]), settings["batch_size"], counts
    pin = device.type == "cuda"
    notes = {d: _decoded_by(d, device, workers) for d in decodes}
    measured = [d for d in decodes if notes[d][1] is None]
    preps = {
        d: DevicePreprocess(
            device,
            channels_last=settings["channels_last"],
            decoder=DeviceDecoder(transform, device) if d == "gpu" else None,
        )
        for d in measured
    }
    ours: dict[str, list[float]] = {d: [] for d in measured}
    base: list[float] = []
    for _ in range(settings["repeats"]):  # alternate, so drift in the machine's speed hits every loader
        # A fresh loader each time, dropped after: no loader's prefetched leftovers run during another's turn.
        for d in measured:
            loader = _ours(root, transform, batch_size, workers, d, pin)
            ours[d].append(_images_per_second(loader, lambda b, p=preps[d]: p.batch(b).images, count, warm, device))
        loader = _baseline(root, batch_size, settings["image_size"], workers, pin)
        base.append(_images_per_second(loader, lambda b: b[0].to(device, non_blocking=True), count, warm, device))
    bips = statistics.median(base)
    rows = []
    for d in decodes:
        row = {"loader": "scnet", "decode": d, "workers": workers, "device": str(device), "decoded_by": notes[d][0]}
        row |= dict.fromkeys(("images_per_second", "images_per_second_per_worker", "vs_torchvision"))
        row |= {"train_images_per_second": None, "wait_share": None}
        # stand_in: the CPU decoder in nvjpeg's place (no CUDA device)
        row |= {"stand_in": d == "gpu" and device.type != "cuda", "skipped": notes[d][1]}
        if d in measured:
            ips = statistics.median(ours[d])
            row |= {"images_per_second": ips, "images_per_second_per_worker": ips / max(workers, 1)}
            row["vs_torchvision"] = ips / bips
        if d in measured and trainer is not None:
            loader = _ours(root, transform, batch_size, workers, d, pin)
            row["train_images_per_second"], row["wait_share"] = _train(loader, preps[d], trainer, count, warm)
        rows.append(row | {"batches": count, "warmup": warm})
    rows.append(_torchvision_row(workers, device, bips) | {"batches": count, "warmup": warm})
    return rows


def bench_data(
    data: str | Path,
    *,
    decode: Sequence[str] | None = None,
    workers: int | Sequence[int] = 2,
    batches: int | None = None,
    batch_size: int = 32,
    image_size: int = 224,
    warmup: int | None = None,
    repeats: int = 3,
    model: str | None = None,
    amp: str = "none",
    channels_last: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Images per second of the whole input path (files to normalised float images on the device) for each decode
    path and worker count, beside torchvision's ImageFolder + PIL (its float images copied to the device too).

    Args:
        data: an ImageFolder root; its ``train/`` is used when present.
        decode: ``cpu`` (the loader workers decode and crop) and/or ``gpu`` (the workers read the bytes and draw
            the crop, the device decodes and cuts: ``data.decode=gpu``; on a CPU device the CPU decoder stands
            in). Default: both on a CUDA device whose torchvision decodes JPEG there, else ``cpu``.
        workers: loader worker processes, one count or several; the same for every loader.
        batches, warmup: measured batches per repeat, after ``warmup`` untimed ones. Default (None): three per
            worker and one per worker (at least 3 and 1), cut to what the folder holds.
        repeats: alternations of the loaders; the medians are reported.
        model: a zoo name: also train it (forward, backward, SGD step, ``num_classes`` = the folder's classes) on
            each decode path's batches and report its img/s and the share of that time spent waiting for data.
        amp, channels_last: the training loop's autocast dtype (none, bf16, fp16) and memory format.
        device: ``cpu`` or ``cuda`` (default: cuda when available).

    Returns:
        The JSON-ready rows, per worker count: one per decode path (``loader: scnet``), then torchvision's, each
        with ``images_per_second`` (None with ``skipped`` saying why, for ``gpu`` on a CUDA device whose
        torchvision cannot decode there), per worker, ``vs_torchvision`` (> 1: faster), ``decoded_by``,
        ``device``, ``stand_in`` (``gpu`` on a CPU device: the CPU decoder in nvjpeg's place),
        ``train_images_per_second`` and ``wait_share`` (None without ``model``), and the settings.

    Raises:
        ValueError: ``data`` is not a folder, it holds too few batches, or a setting is out of range.
    """
    from scnet.data.folders import scan_image_folder
    from scnet.data.transforms import train_transform

    root = Path(data)
    if (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise ValueError(f"{root}: no such data folder")
    counts = [workers] if isinstance(workers, int) else list(dict.fromkeys(workers))
    dev = _device(device)
    decodes = list(dict.fromkeys(decode)) if decode else default_decodes(dev)
    _check(decodes, counts, (batch_size, repeats, batches, warmup), amp)
    classes, samples = scan_image_folder(root)
    available = len(samples) // batch_size
    sizes = {w: _counts(w, warmup, batches, available, batch_size, dev) for w in counts}  # fails before any run
    settings = {"batch_size": batch_size, "image_size": image_size, "repeats": repeats, "data": str(root)}
    settings |= {"model": model, "amp": amp, "channels_last": channels_last, "device": str(dev)}
    settings["output"] = "float32 normalised on the device"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each loader gets the cores through its workers, not intra-op threads
    try:
        trainer = None
        if model is not None:
            use_autotuned_kernels(dev)  # cuDNN autotuning, as in training
            trainer = _Trainer(model, len(classes), dev, amp, channels_last)
            trainer.warm(batch_size, image_size, channels_last)
        transform = train_transform(image_size)
        rows = [row for w in counts for row in _measure(root, transform, decodes, w, sizes[w], settings, trainer)]
    finally:
        torch.set_num_threads(threads)
    return [row | settings for row in rows]


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`bench_data` as a small text table, under one line of settings."""
    if not rows:
        return ""
    first = rows[0]
    head = f"batch {first['batch_size']}, {first['image_size']} px, median of {first['repeats']}, on {first['device']}"
    if first["model"]:
        layout = "channels_last" if first["channels_last"] else "NCHW"
        head += f"; training {first['model']} (amp {first['amp']}, {layout})"
    header = ["loader", "decode", "workers", "batches", "img/s", "per worker", "vs torchvision"]
    header += ["train img/s", "wait", "decoded by"]
    table = [header]
    for r in rows:
        wait = "—" if r["wait_share"] is None else f"{r['wait_share']:.0%}"
        cells = [r["loader"], r["decode"], str(r["workers"]), f"{r['warmup']}+{r['batches']}"]
        cells += [_cell(r["images_per_second"]), _cell(r["images_per_second_per_worker"])]
        cells += [_cell(r["vs_torchvision"], 2), _cell(r["train_images_per_second"]), wait]
        cells.append(r["decoded_by"] if r["skipped"] is None else f"not measured: {r['skipped']}")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in table]
    note = "batches: warm-up + measured; wait: the share of the training loop's time spent waiting for a batch"
    return "\n".join([f"{first['data']}: {head}", *lines, note])
