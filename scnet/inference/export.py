"""A loaded checkpoint written out for deployment, then read back and checked against eager PyTorch.

Four formats, each with a writer and a reader that knows nothing but the file:

- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``), the batch
  dimension dynamic, the image size fixed; read back by onnxruntime when installed, else by ``onnx``'s
  reference evaluator (slower, pure numpy).
- ``torchscript``: ``torch.jit.script`` (the SC models and the timm baselines script), ``torch.jit.save``.
- ``safetensors``: the state_dict; the architecture, class count, SCConv options and class names go in
  the file's metadata, since the options change the function without changing the tensors; read back
  by :func:`load_checkpoint`, as scnet-eval, -predict and -cam read it.
- ``timm``: a folder with ``config.json`` and ``model.safetensors`` that
  ``timm.create_model("local-dir:PATH", pretrained=True)`` builds after ``import scnet``; the SCConv
  options travel as ``model_args``, which timm passes to the model's builder.

Every export ends with :func:`check`: a seeded random batch through the file as read back and through
the eager model; the largest absolute difference must stay within ``atol + rtol * max|eager|``. The scale
term is there because a deep network's logits (and its rounding) grow with its weights: float32 kernels
that add in another order differ by about 1e-7 of the activations' size, whatever that size is.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, load_checkpoint

FORMATS = ("onnx", "torchscript", "safetensors", "timm")
# (atol, rtol) per format. safetensors and timm rebuild the same eager model: they match to the bit.
# TorchScript runs PyTorch's own kernels (a scripted graph may fuse or reorder a few). ONNX Runtime has its
# own convolutions and folds each BN into its conv: on a randomly weighted SCNet-50 (logits ~2e3) it is 9e-5
# of the logits' scale from the float64 result, where eager float32 is itself 4e-5 away. 1e-3 leaves room
# for that noise and still catches a wrong function (a lost SCConv option is off by a large fraction).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "onnx": (1e-4, 1e-3),
    "torchscript": (1e-5, 1e-5),
    "safetensors": (1e-6, 1e-6),
    "timm": (1e-6, 1e-6),
}
EXPORT_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the export saw: a dynamic batch
ONNX_INSTALL_HINT = "ONNX export needs onnx and onnxscript: pip install 'scnet-pytorch[export]'"
TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"  # the names timm's local-dir reader looks for
# pretrained_cfg keys that describe a registered model's published weights (where they come from, their
# licence, labels and test-time settings): not this export's, whose own settings replace them.
_SOURCE_KEYS = (
    "url",
    "hf_hub_id",
    "hf_hub_filename",
    "file",
    "state_dict",
    "source",
    "tag",
    "architecture",
    "origin_url",
    "license",
    "notes",
    "label_names",
    "label_descriptions",
    "test_input_size",
    "test_crop_pct",
    "test_pool_size",
)


class MissingExportDependency(ImportError):
    """A package the format needs is not installed; the message says how to install it."""


class ExportCheckError(RuntimeError):
    """The file was written but what it computes differs from eager PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how well it matched."""

    format: str
    path: Path  # the file, or for ``timm`` the folder
    files: list[Path]  # every file written
    export_seconds: float
    check_seconds: float
    runtime: str  # what ran the file when checked (e.g. "onnxruntime 1.20.0")
    batch: int
    image_size: int
    max_abs_diff: float
    max_abs_eager: float
    atol: float
    rtol: float

    @property
    def tolerance(self) -> float:
        """The largest difference accepted: ``atol + rtol * max|eager|``."""
        return self.atol + self.rtol * self.max_abs_eager

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


# ----------------------------------------------------------------------------------------------- helpers


def _random_batch(batch: int, image_size: int, seed: int) -> torch.Tensor:
    """Normalised-image-like input: what the model sees after mean/std normalisation is roughly N(0, 1)."""
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def _metadata(loaded: LoadedCheckpoint) -> dict[str, str]:
    """The safetensors metadata that rebuilds ``loaded``'s function (safetensors takes str -> str only)."""
    meta = {
        "format": "pt",
        "architecture": loaded.name,
        "num_classes": str(loaded.num_classes),
        "model_args": json.dumps(loaded.options, sort_keys=True),
        "image_size": str(loaded.image_size),
        "crop_pct": str(loaded.crop_pct),
        "interpolation": loaded.interpolation,
    }
    if loaded.classes is not None:
        meta["classes"] = json.dumps(loaded.classes)
    return meta


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous tensors (and would refuse shared ones; these models share none).
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _torchscript_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a torch.jit function without its deprecation warnings: this format is TorchScript on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        # Raised about torch.fx.GraphModule's own __init__ when a module holding one is scripted.
        warnings.filterwarnings("ignore", "The TorchScript type system", UserWarning)
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- writers
# Each writes ``out`` and returns the files it wrote.


def _write_torchscript(loaded: LoadedCheckpoint, out: Path, example: torch.Tensor) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    _torchscript_quietly(torch.jit.save, _torchscript_quietly(torch.jit.script, loaded.model), str(out))
    return [out]


def _write_safetensors(loaded: LoadedCheckpoint, out: Path, example: torch.Tensor) -> list[Path]:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict(loaded.model), str(out), metadata=_metadata(loaded))
    return [out]


def timm_config(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """``config.json`` for timm's ``local-dir:`` reader: the architecture, the head, the SCConv options as
    ``model_args`` (timm passes them to the builder) and the evaluation settings as ``pretrained_cfg``."""
    pretrained_cfg = dict(getattr(loaded.model, "pretrained_cfg", None) or {})
    for key in _SOURCE_KEYS:
        pretrained_cfg.pop(key, None)
    registered = pretrained_cfg.get("input_size")
    if not registered or registered[-1] != loaded.image_size:
        pretrained_cfg.pop("pool_size", None)  # the last map's size at the registered input size only
    pretrained_cfg.update(
        num_classes=loaded.num_classes,
        input_size=[3, loaded.image_size, loaded.image_size],
        crop_pct=loaded.crop_pct,
        interpolation=loaded.interpolation,
        custom_load=False,
    )
    min_size = getattr(loaded.model, "min_input_size", None)
    if isinstance(min_size, int):  # the options' own minimum (the registered name states the release's)
        pretrained_cfg["min_input_size"] = [3, min_size, min_size]
    config: dict[str, Any] = {"architecture": loaded.name, "num_classes": loaded.num_classes}
    num_features = getattr(loaded.model, "num_features", None)
    if isinstance(num_features, int):
        config["num_features"] = num_features
    if loaded.classes is not None:
        config["label_names"] = list(loaded.classes)
    if loaded.options:
        config["model_args"] = dict(loaded.options)
    config["pretrained_cfg"] = json.loads(json.dumps(pretrained_cfg))  # tuples -> lists, as JSON has them
    return config


def _write_timm(loaded: LoadedCheckpoint, out: Path, example: torch.Tensor) -> list[Path]:
    from safetensors.torch import save_file

    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the timm format writes a folder (config.json, model.safetensors)")
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict(loaded.model), str(out / TIMM_WEIGHTS), metadata={"format": "pt"})
    (out / TIMM_CONFIG).write_text(json.dumps(timm_config(loaded), indent=2) + "\n")
    return [out / TIMM_CONFIG, out / TIMM_WEIGHTS]


def require_format(fmt: str) -> None:
    """Fail early when ``fmt`` needs a package that is not installed (only ``onnx`` needs any).

    Raises:
        ValueError: an unknown format.
        MissingExportDependency: onnx or onnxscript missing; the message says how to install them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "onnx":
        return
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExportDependency(f"{ONNX_INSTALL_HINT} (missing: {', '.join(missing)})")


def _write_onnx(loaded: LoadedCheckpoint, out: Path, example: torch.Tensor) -> list[Path]:
    import contextlib
    import io
    import logging

    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports each step on stdout and logs through onnxscript; the CLI prints its own summary.
    quiet_loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "onnx_ir")]
    levels = [lg.level for lg in quiet_loggers]
    try:
        for lg in quiet_loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                loaded.model,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(out))
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)
    # Models over 2 GB keep their weights beside the graph; list what was written.
    return [out, *sorted(p for p in out.parent.glob(f"{out.name}.data*") if p.is_file())]


# ----------------------------------------------------------------------------------------------- readers
# Each reads only what was written and returns (a function of a batch, what runs it).

Runner = Callable[[torch.Tensor], torch.Tensor]


def load_torchscript(path: Path) -> tuple[Runner, str]:
    """The saved TorchScript module, on the CPU."""
    module = _torchscript_quietly(torch.jit.load, str(path), map_location="cpu").eval()
    return module, f"torch.jit {torch.__version__}"


def load_safetensors(path: Path) -> tuple[Runner, str]:
    """The model the file's metadata names, as every consumer builds it (:func:`load_checkpoint`)."""
    loaded = load_checkpoint(path)  # a file without scnet metadata: a ValueError asking for the architecture
    return loaded.model, f"scnet load_checkpoint (metadata: {loaded.name})"


def load_timm(path: Path) -> tuple[Runner, str]:
    """``timm.create_model("local-dir:PATH", pretrained=True)``: timm's own reader of the folder."""
    import timm  # the SC names are registered: this module imports scnet.models (through .checkpoint)

    model = timm.create_model(f"local-dir:{path}", pretrained=True)
    return model.eval(), f"timm {timm.__version__} local-dir"


def load_onnx(path: Path) -> tuple[Runner, str]:
    """onnxruntime's CPU session when installed, else onnx's reference evaluator."""
    import numpy as np

    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        return run, f"onnxruntime {ort.__version__}"
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    name = evaluator.input_names[0]

    def run_reference(x: torch.Tensor) -> torch.Tensor:
        # Its sigmoid evaluates both branches of a stable formula, and numpy warns about the unused one.
        with np.errstate(all="ignore"):
            return torch.from_numpy(np.asarray(evaluator.run(None, {name: x.numpy()})[0]))

    return run_reference, f"onnx {onnx.__version__} reference evaluator (install onnxruntime for a faster check)"


_WRITERS = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "safetensors": _write_safetensors,
    "timm": _write_timm,
}
_READERS = {"onnx": load_onnx, "torchscript": load_torchscript, "safetensors": load_safetensors, "timm": load_timm}


# ----------------------------------------------------------------------------------------------- entry


def _check_structure(loaded: LoadedCheckpoint, run: Runner, path: Path) -> None:
    """A model rebuilt from the file (safetensors, timm) must be the eager one, module for module: the repr
    names every SCConv option (pooling_r, pool_ceil_mode, calib_identity, upsample, the pool's type), some
    of which need not change the outputs at the size checked (ceil mode on a map divisible by r)."""
    if not isinstance(run, nn.Module) or isinstance(run, torch.jit.ScriptModule):
        return
    want, got = repr(loaded.model).splitlines(), repr(run).splitlines()
    if want != got:
        line = next((g for w, g in zip(want, got, strict=False) if w != g), "(a different number of modules)")
        raise ExportCheckError(f"{path} builds another model than the checkpoint's, e.g. {line.strip()}")


def check(
    loaded: LoadedCheckpoint, fmt: str, path: Path, image_size: int, atol: float, rtol: float, seed: int = 0
) -> tuple[float, float, str, float]:
    """Run ``path`` as read back and the eager model on one seeded random batch.

    Returns ``(max |exported - eager|, max |eager|, runtime, seconds)``.
    """
    start = time.perf_counter()
    run, runtime = _READERS[fmt](path)
    _check_structure(loaded, run, path)
    x = _random_batch(CHECK_BATCH, image_size, seed)
    with torch.no_grad():
        want = loaded.model(x.to(loaded.device)).float().cpu()
        got = run(x).float()
    if not torch.isfinite(want).all():
        raise ExportCheckError(
            f"{loaded.path}: its model's eager outputs are not finite (NaN or inf): nothing to check {path} against"
        )
    if got.shape != want.shape:
        raise ExportCheckError(f"{path}: outputs of shape {tuple(got.shape)}, eager PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    if diff != diff:  # NaN: never within a tolerance
        diff = float("inf")
    return diff, float(want.abs().max()), runtime, time.perf_counter() - start


def float32_rounding(loaded: LoadedCheckpoint, image_size: int, seed: int = 0) -> float:
    """``max |eager float32 - eager float64|`` on the check's batch: how far the weights let rounding grow.

    Trained weights keep it near 1e-6 of the outputs; random or untrained ones can amplify it a thousandfold,
    and then any other runtime's kernels (or PyTorch's own, oneDNN on or off) differ by as much.
    """
    x = _random_batch(CHECK_BATCH, image_size, seed).to(loaded.device)
    reference = copy.deepcopy(loaded.model).double()
    with torch.no_grad():
        return float((loaded.model(x).double() - reference(x.double())).abs().max())


def mismatch_hint(loaded: LoadedCheckpoint, image_size: int, diff: float, scale: float, seed: int = 0) -> str:
    """Half a sentence for a failed check: is the difference the export's, or the weights' rounding?"""
    own = float32_rounding(loaded, image_size, seed)
    if own * 10 < diff:
        return f"eager PyTorch's own float32 rounding is {own:.3g} (against float64), so the difference is the export's"
    return (
        f"eager PyTorch's own float32 result is {own:.3g} away from float64 on this batch: these weights amplify "
        f"rounding (untrained or random weights do), so a runtime's other kernels differ as much; "
        f"--rtol {_round_up(diff / max(scale, 1e-30)):.2g} would accept it"
    )


def _round_up(x: float) -> float:
    """``x`` rounded up to two significant digits (a suggested tolerance must accept what it was made from)."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 1) if x > 0 else 1.0
    return math.ceil(x / unit) * unit


def export(
    loaded: LoadedCheckpoint,
    fmt: str,
    out: str | Path,
    image_size: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> ExportResult:
    """Write ``loaded`` to ``out`` in ``fmt``, read it back and compare it with the eager model.

    Args:
        loaded: from :func:`scnet.inference.checkpoint.load_checkpoint` (its model on the CPU).
        fmt: one of :data:`FORMATS`.
        out: the file to write; for ``timm`` a folder.
        image_size: the input size exported (ONNX fixes it) and checked; default ``loaded.image_size``.
        atol, rtol: the check's tolerance, ``atol + rtol * max|eager|``; defaults per format
            (:data:`DEFAULT_TOLERANCES`).
        seed: of the random batch checked.

    Returns:
        The result; check :attr:`ExportResult.passed` (the file is kept either way).

    Raises:
        ValueError: unknown format, a bad size or tolerance, ``out`` of the wrong kind.
        MissingExportDependency: ``onnx`` without onnx/onnxscript installed.
        ExportCheckError: the file gives outputs of another shape.
    """
    require_format(fmt)
    default_atol, default_rtol = DEFAULT_TOLERANCES[fmt]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"tolerances must be at least 0, got atol={atol}, rtol={rtol}")
    size = loaded.image_size if image_size is None else image_size
    min_size = getattr(loaded.model, "min_input_size", 1)
    if size < max(min_size, 1):
        raise ValueError(f"image size {size} is below {loaded.name}'s minimum of {min_size} px")
    if loaded.device.type != "cpu":
        raise ValueError(f"export runs on the CPU; the model is on {loaded.device}")
    out = Path(out)
    start = time.perf_counter()
    files = _WRITERS[fmt](loaded, out, _random_batch(EXPORT_BATCH, size, seed + 1))
    export_seconds = time.perf_counter() - start
    diff, scale, runtime, check_seconds = check(loaded, fmt, out, size, atol, rtol, seed)
    return ExportResult(
        format=fmt,
        path=out,
        files=files,
        export_seconds=export_seconds,
        check_seconds=check_seconds,
        runtime=runtime,
        batch=CHECK_BATCH,
        image_size=size,
        max_abs_diff=diff,
        max_abs_eager=scale,
        atol=atol,
        rtol=rtol,
    )
