"""`scnet-export` on real checkpoint files: each format written, then read back here by its own reader
(safetensors, timm's local-dir, torch.jit, onnxruntime) and compared with a model built independently."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from timm.data import resolve_data_config

import scnet
from scnet.cli.export import main
from scnet.inference.checkpoint import load_checkpoint
from scnet.inference.export import ExportCheckError, check, float32_rounding, mismatch_hint

from ..utils import REPO_ROOT, randomize_, require_extra

SIZE = 100  # just above scnet50's 97 px minimum: the export is the same code at any size
CLASSES = ["cat", "dog", "fox", "owl", "yak"]
# Options away from the release's: they change the function, not the state_dict, so they must travel.
OPTIONS = {"pooling_r": 2, "upsample": "bilinear"}
CONFIG = {
    "model": {"name": "scnet50", "num_classes": len(CLASSES), **OPTIONS},
    "data": {"image_size": SIZE, "crop_pct": 1.0, "interpolation": "bilinear"},
}


def _scnet(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(scnet.create_model("scnet50", num_classes=len(CLASSES), **options), seed=1).eval()


@pytest.fixture(scope="module")
def files(module_tmp):
    """A training checkpoint with non-default SCConv options, a bare resnet50 state_dict, a NaN one."""
    model = _scnet(**OPTIONS)
    paths = {"training": module_tmp / "last.pth", "resnet": module_tmp / "resnet50.pth", "nan": module_tmp / "nan.pth"}
    torch.save({"model": model.state_dict(), "config": CONFIG, "classes": CLASSES, "epoch": 1}, paths["training"])
    torch.manual_seed(0)
    torch.save(randomize_(timm.create_model("resnet50", num_classes=3), seed=2).state_dict(), paths["resnet"])
    broken = dict(model.state_dict())
    broken["fc.bias"] = torch.full_like(broken["fc.bias"], float("nan"))
    torch.save({"model": broken, "config": CONFIG}, paths["nan"])
    return paths


@pytest.fixture(scope="module")
def reference(files):
    """The checkpoint's function built here, from the test's own config (not from anything exported), and
    a batch of another size than the exporter uses."""
    model = scnet.create_model("scnet50", num_classes=len(CLASSES), **OPTIONS).eval()
    model.load_state_dict(torch.load(files["training"], weights_only=True)["model"])
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = model(x)
        release = _scnet()  # the same weights with the release's options: another function
        release.load_state_dict(model.state_dict())
        other = release(x)
    # Without this, a test could pass with the options dropped.
    assert (other - want).abs().max() > 1e-2 * want.abs().max()
    return x, want


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    # Relative to the logits' scale: a random 50-layer net's logits reach ~1e3 (see inference/export.py).
    torch.testing.assert_close(got, want, rtol=0, atol=rtol * float(want.abs().max()))


def _reported_diff(out: str) -> float:
    """The max difference the check printed (``max |exported - eager| = X``)."""
    return float(out.split("max |exported - eager| = ")[1].split()[0])


# ----------------------------------------------------------------------------------------------- formats


def test_safetensors(files, reference, tmp_path, capsys):
    out_file, record = tmp_path / "scnet50.safetensors", tmp_path / "json" / "export.json"
    argv = ("--checkpoint", files["training"], "--format", "safetensors", "--out", out_file, "--json", record)
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert _reported_diff(out) == 0.0 and out.rstrip().endswith(": ok")
    # --json FILE: what was written and the check's numbers, as printed.
    written = json.loads(record.read_text())
    assert (written["model"], written["format"], written["path"]) == ("scnet50", "safetensors", str(out_file))
    assert written["files"] == [str(out_file)] and written["bytes"] == out_file.stat().st_size
    assert written["max_abs_diff"] == 0.0 and written["passed"] is True and written["image_size"] == SIZE
    # The tensors are the checkpoint's, bit for bit; the metadata says how to build their function.
    saved = torch.load(files["training"], weights_only=True)["model"]
    tensors = load_file(str(out_file))
    assert tensors.keys() == saved.keys()
    assert all(torch.equal(tensors[k], saved[k]) for k in saved)
    with safe_open(str(out_file), framework="pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "scnet50" and int(meta["num_classes"]) == len(CLASSES)
    assert json.loads(meta["model_args"]) == OPTIONS and json.loads(meta["classes"]) == CLASSES
    x, want = reference
    rebuilt = scnet.create_model(meta["architecture"], num_classes=len(CLASSES), **json.loads(meta["model_args"]))
    rebuilt.load_state_dict(tensors)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), want)

    # Our own readers (scnet-eval, -predict, -cam, -export) rebuild it from the metadata too, whatever the
    # file's name: the options, the classes and the evaluation transform come back.
    renamed = out_file.rename(tmp_path / "scnet50-exported.bin")
    loaded = load_checkpoint(renamed)
    assert (loaded.name, loaded.options, loaded.classes) == ("scnet50", OPTIONS, CLASSES)
    assert (loaded.image_size, loaded.crop_pct, loaded.interpolation) == (SIZE, 1.0, "bilinear")
    with torch.no_grad():
        assert torch.equal(loaded.model(x), want)


def test_timm_local_dir_keeps_the_options(files, reference, tmp_path, capsys):
    folder = tmp_path / "scnet50-timm"
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--format", "timm", "--out", folder)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x, want = reference
    with torch.no_grad():
        assert torch.equal(model(x), want)  # the same eager model, rebuilt by timm: no rounding difference
    assert model.min_input_size == 33  # (r - 1) * 32 + 1 for r = 2: the options reached the builder
    data = resolve_data_config({}, model=model)
    # JSON has no tuples: timm reads lists from any config.json (the Hub's too).
    assert tuple(data["input_size"]) == (3, SIZE, SIZE) and data["crop_pct"] == 1.0
    assert model.pretrained_cfg["label_names"] == CLASSES
    # A folder whose options are lost (edited, or read by a timm that ignores model_args) is caught even
    # where the outputs happen to agree: the rebuilt model is compared module for module too.
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"] == OPTIONS
    del config["model_args"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportCheckError, match="another model.*pooling_r=4"):
        check(load_checkpoint(files["training"]), "timm", folder, SIZE, atol=1.0, rtol=1.0)


def test_timm_local_dir_of_a_released_layout_baseline(files, tmp_path, capsys):
    """A bare state_dict (--model), a timm baseline: the folder builds resnet50 with its 3-class head."""
    folder = tmp_path / "resnet50-timm"
    args = ("--checkpoint", files["resnet"], "--model", "resnet50", "--format", "timm", "--out", folder)
    code, out, err = _run(capsys, *args, "--image-size", SIZE)
    assert code == 0, err
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    want = timm.create_model("resnet50", num_classes=3).eval()
    want.load_state_dict(torch.load(files["resnet"], weights_only=True))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        assert torch.equal(model(x), want(x))
    assert json.loads((folder / "config.json").read_text())["architecture"] == "resnet50"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript(files, reference, tmp_path, capsys):
    out_file = tmp_path / "scnet50.pt"
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--format", "torchscript", "--out", out_file)
    assert code == 0, err
    assert out.rstrip().endswith(": ok")
    module = torch.jit.load(str(out_file))
    assert isinstance(module, torch.jit.ScriptModule)
    x, want = reference
    with torch.no_grad():
        _close(module(x), want, rtol=1e-5)
        with pytest.raises(Exception, match="too small"):  # the size check is scripted too (r=2: 33 px)
            module(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
def test_onnx(files, reference, tmp_path, capsys):
    require_extra("export", "onnx", "onnxscript", "onnxruntime")
    import onnxruntime as ort

    out_file = tmp_path / "scnet50.onnx"
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--format", "onnx", "--out", out_file)
    assert code == 0, err
    assert "onnxruntime" in out and out.rstrip().endswith(": ok")
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.shape[1:] == [3, SIZE, SIZE] and not isinstance(inp.shape[0], int)
    x, want = reference  # batch 4: neither the export's nor the check's batch size
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    _close(got, want, rtol=1e-3)
    # The tolerance decides: ONNX Runtime's kernels round otherwise, so zero tolerance fails, the default holds.
    loaded = load_checkpoint(files["training"])
    diff, scale, runtime, _ = check(loaded, "onnx", out_file, SIZE, atol=0.0, rtol=0.0)
    assert 0 < diff <= 1e-3 * scale and runtime.startswith("onnxruntime")
    # A failed check says whether the weights or the export made the difference: these random weights make
    # eager float32 itself stray from float64 by about as much as onnxruntime does.
    own = float32_rounding(loaded, SIZE)
    assert diff / 100 < own < diff * 100
    hint = mismatch_hint(loaded, SIZE, diff, scale)
    assert "amplify rounding" in hint and f"{own:.3g}" in hint
    assert "the difference is the export's" in mismatch_hint(loaded, SIZE, 1000 * own, scale)


# ----------------------------------------------------------------------------------------------- failures


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scnet-export: error: "), err
    for needle in needles:
        assert needle in lines[0], err


def test_nonfinite_outputs_fail_the_check(files, tmp_path, capsys):
    out_file = tmp_path / "nan.safetensors"
    code, out, err = _run(capsys, "--checkpoint", files["nan"], "--format", "safetensors", "--out", out_file)
    assert code == 1
    _one_line_error(err, "not finite", str(files["nan"]))


def test_bad_input(files, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    code, _, err = _run(capsys, "--checkpoint", missing, "--format", "safetensors", "--out", tmp_path / "x")
    assert code == 2
    _one_line_error(err, str(missing))
    code, _, err = _run(capsys, "--checkpoint", files["resnet"], "--format", "safetensors", "--out", tmp_path / "x")
    assert code == 2
    _one_line_error(err, "--model")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = _run(capsys, "--checkpoint", files["training"], "--format", "timm", "--out", blocker)
    assert code == 2
    _one_line_error(err, str(blocker), "folder")
    code, _, err = _run(
        capsys,
        "--checkpoint",
        files["training"],
        "--format",
        "torchscript",
        "--out",
        tmp_path / "x",
        "--image-size",
        20,
    )
    assert code == 2
    _one_line_error(err, "20", "33")  # this checkpoint's options set its minimum (33 px), not the release's 97
    code, _, err = _run(capsys, "--checkpoint", files["training"], "--format", "timm", "--out", "x", "--atol", "-1")
    assert code == 2
    _one_line_error(err, "--atol")


@pytest.mark.slow
def test_missing_onnx_packages_say_how_to_install(files, tmp_path):
    """A real process in which onnxscript cannot be imported (None in sys.modules is Python's own way)."""
    code = (
        "import sys; sys.modules['onnxscript'] = None; from scnet.cli.export import main; "
        f"sys.exit(main(['--checkpoint', {str(files['training'])!r}, '--format', 'onnx', "
        f"'--out', {str(tmp_path / 'm.onnx')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    _one_line_error(proc.stderr, "pip install 'scnet-pytorch[export]'", "onnxscript")
    assert not (tmp_path / "m.onnx").exists()
