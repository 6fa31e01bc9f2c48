"""`scnet-bench model` through its entry point, and the saved-activation count against sizes derived from shapes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from scnet.bench.model import bench_model, build_model, saved_activation_bytes
from scnet.cli.bench import main as bench_main

N, A, B, C = 3, 5, 7, 11  # batch, input, hidden and class counts: distinct, so a wrong term shows
F32, BF16, I64 = 4, 2, 8  # bytes per element


def _loss_bytes(n: int, c: int) -> int:
    # cross_entropy = nll_loss(log_softmax(logits)): the log-probabilities (saved by both), the int64 labels
    # and nll_loss's 0-dim total_weight.
    return F32 * n * c + I64 * n + F32


def _batch(n: int = N, a: int = A, c: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, a, generator=gen), torch.randint(0, c, (n,), generator=gen)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(A, B), nn.ReLU(), nn.Linear(B, C))


class _Square(nn.Module):
    """``h * h``: mul saves the same tensor twice (as self and as other)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * h


class _SquareFirstHalf(nn.Module):
    """``u * u`` for the first half ``u`` of the features: a view, whose storage is all of ``h``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = h[:, : h.shape[1] // 2]
        return u * u


class _ScaleByBuffer(nn.Module):
    """``h * scale`` with ``scale`` a buffer: mul saves the buffer (for h's gradient), not ``h``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale


def test_saved_bytes_mlp_counts_input_and_shared_relu_output_once():
    # Linear saves its input (x) and weight (a parameter: not counted); ReLU saves its output, which the
    # second Linear saves again as its input: one storage.
    x, y = _batch()
    expected = F32 * N * A + F32 * N * B + _loss_bytes(N, C)
    assert saved_activation_bytes(_mlp(), x, y) == expected


def test_saved_bytes_same_tensor_saved_twice_counts_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(A, B), _Square(), nn.Linear(B, C))
    x, y = _batch()
    # x; h (saved twice by mul); h * h (saved by the second Linear).
    expected = F32 * N * A + F32 * N * B + F32 * N * B + _loss_bytes(N, C)
    assert saved_activation_bytes(model, x, y) == expected


def test_saved_bytes_view_counts_its_whole_storage_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(A, 2 * B), _SquareFirstHalf(), nn.Linear(B, C))
    x, y = _batch()
    # x; u (saved twice) keeps all of h alive: N x 2B floats; u * u (N x B) saved by the second Linear.
    expected = F32 * N * A + F32 * N * 2 * B + F32 * N * B + _loss_bytes(N, C)
    assert saved_activation_bytes(model, x, y) == expected


def test_saved_bytes_excludes_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(A, B), _ScaleByBuffer(B), nn.Linear(B, C))
    x, y = _batch()
    # x; the scaled activations (saved by the second Linear); the buffer is the model's, not counted.
    expected = F32 * N * A + F32 * N * B + _loss_bytes(N, C)
    assert saved_activation_bytes(model, x, y) == expected


def test_saved_bytes_autocast_excludes_low_precision_weight_copies():
    # Under bf16 autocast the Linears save bf16 copies of x and of the hidden activations, and bf16 copies
    # of their weights (not counted: they do not grow with the batch); the loss runs in float32.
    x, y = _batch()
    expected = BF16 * N * A + BF16 * N * B + _loss_bytes(N, C)
    assert saved_activation_bytes(_mlp(), x, y, torch.bfloat16) == expected


def test_saved_bytes_scale_with_the_batch():
    model = _mlp()
    per_sample = F32 * A + F32 * B + F32 * C + I64  # the 0-dim total_weight is the one fixed term
    for n in (2, 6):
        x, y = _batch(n)
        assert saved_activation_bytes(model, x, y) == n * per_sample + F32


def test_saved_bytes_seen_through_torch_compile():
    # AOTAutograd runs the compiled graph inside an autograd.Function whose save_for_backward goes through
    # the same hooks; for this graph it keeps what eager does.
    torch._dynamo.reset()
    compiled = torch.compile(_mlp(), backend="aot_eager")
    x, y = _batch()
    assert saved_activation_bytes(compiled, x, y) == F32 * N * A + F32 * N * B + _loss_bytes(N, C)


def test_saved_bytes_leaves_the_model_untouched():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    saved_activation_bytes(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the command, through its entry point (SCNet-50 at 112 px, batch 2: about 0.3 s a training step here) ---

KEYS = {
    "model",
    "baseline",
    "mode",
    "images_per_second",
    "baseline_images_per_second",
    "ratio",
    "ratio_withheld",
    "step_seconds",
    "baseline_step_seconds",
    "step_seconds_min",
    "step_seconds_max",
    "baseline_step_seconds_min",
    "baseline_step_seconds_max",
    "noisy",
    "saved_bytes_per_image",
    "baseline_saved_bytes_per_image",
    "saved_ratio",
    "saved_bytes_measured",
    "peak_memory_bytes",
    "baseline_peak_memory_bytes",
    "device",
    "batch_size",
    "image_size",
    "amp",
    "channels_last",
    "compile",
    "compile_backend",
    "steps",
    "warmup",
    "cudnn_benchmark",
    "kernel_table",
    "kernel_steps",
    "kernel_ms_per_step",
    "baseline_kernel_ms_per_step",
    "kernel_launches_per_step",
    "baseline_kernel_launches_per_step",
    "torch",
    "date",
}


def _bench(tmp_path, capsys, *args: str) -> dict:
    out = tmp_path / "bench.json"
    argv = ["model", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--threads", "1", "--device", "cpu"]
    code = bench_main([*argv, *args, "--json", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result == json.loads(stdout)
    assert KEYS <= set(result)
    assert "timing 2 steps" in stderr  # progress on stderr, JSON alone on stdout
    assert result["images_per_second"] > 0 and result["baseline_images_per_second"] > 0
    assert result["step_seconds"] > 0 and result["baseline_step_seconds"] > 0
    # Two timed steps: speeds, no ratio, and the line says why instead of printing one.
    assert result["ratio"] is None and "2 timed steps per model are too few" in result["ratio_withheld"]
    assert "no ratio: 2 timed steps" in stderr and "ratio 0" not in stderr and "ratio 1" not in stderr
    assert result["peak_memory_bytes"] is None and result["baseline_peak_memory_bytes"] is None  # CPU
    assert result["device"] == "cpu (1 thread)"
    assert (result["steps"], result["warmup"], result["batch_size"]) == (2, 1, 2)
    assert result["cudnn_benchmark"] is False  # CUDA's setting: never on CPU
    return result


def _saved_per_image(name: str, image_size: int, batch: int = 2) -> float:
    """What one training forward of ``name`` (suffix included) saves for backward per image, counted here on a
    model built here, at the command's batch size: the command must report it for the model, size and batch it
    was given."""
    model = build_model(name).train()
    x, y = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 1000, (batch,))
    return saved_activation_bytes(model, x, y) / batch


def test_bench_model_train_json(tmp_path, capsys):
    result = _bench(tmp_path, capsys, "--model", "scnet50", "--vs", "resnet50", "--image-size", "112")
    assert (result["model"], result["baseline"], result["mode"]) == ("scnet50", "resnet50", "train")
    assert (result["image_size"], result["amp"], result["channels_last"]) == (112, "none", False)
    assert (result["compile"], result["compile_backend"], result["saved_bytes_measured"]) == (False, None, "eager")
    scnet50, resnet50 = _saved_per_image("scnet50", 112), _saved_per_image("resnet50", 112)
    assert (result["saved_bytes_per_image"], result["baseline_saved_bytes_per_image"]) == (scnet50, resnet50)
    assert result["saved_ratio"] == pytest.approx(scnet50 / resnet50, rel=1e-12)
    # At least the 112 px input of every image is kept by the stem's conv: 3 x 112 x 112 float32.
    assert resnet50 > 3 * 112 * 112 * F32


def test_bench_model_infer_channels_last_layerwise(tmp_path, capsys):
    # --vs left out: a layerwise SC model is compared with its SC name's baseline.
    args = ["--model", "scnet50:layerwise", "--infer", "--channels-last", "--image-size", "112"]
    result = _bench(tmp_path, capsys, *args)
    assert (result["model"], result["baseline"], result["mode"]) == ("scnet50:layerwise", "resnet50", "infer")
    assert result["channels_last"] is True
    # The suffix really runs the layers one by one: they keep more for backward than the lean block would.
    layerwise = _saved_per_image("scnet50:layerwise", 112)
    assert result["saved_bytes_per_image"] == layerwise > _saved_per_image("scnet50", 112)


def test_bench_model_compiled(tmp_path, capsys):
    # Dynamo's "eager" backend: the compile path end to end without a C++ toolchain's minutes. The same
    # model on both sides, so both sides save the same.
    args = ["--model", "resnet50", "--vs", "resnet50", "--image-size", "64", "--compile", "--compile-backend", "eager"]
    torch._dynamo.reset()  # graphs compiled by earlier tests of this process
    result = _bench(tmp_path, capsys, *args)
    assert (result["compile"], result["compile_backend"]) == (True, "eager")
    assert result["saved_bytes_measured"] == "compiled"
    # The eager backend keeps what eager PyTorch saves.
    assert (
        result["saved_bytes_per_image"] == result["baseline_saved_bytes_per_image"] == _saved_per_image("resnet50", 64)
    )


def test_bench_model_ratio_from_enough_steps_with_each_sides_spread():
    """Five timed steps: the ratio of the median speeds, each side's min <= median <= max step time, the
    warm-up steps untimed (their times are not among the recorded ones), the spread in the log line."""
    lines: list[str] = []
    result = bench_model(
        "resnet50", "resnet50", batch_size=2, image_size=64, steps=5, warmup=1, device="cpu", log=lines.append
    )
    assert result["ratio_withheld"] is None
    assert result["ratio"] == result["images_per_second"] / result["baseline_images_per_second"]
    for prefix in ("", "baseline_"):
        low, mid, high = (result[f"{prefix}step_seconds{k}"] for k in ("_min", "", "_max"))
        assert 0 < low <= mid <= high
        assert result[f"{prefix}images_per_second"] == 2 / mid
    assert result["noisy"] == any(
        result[f"{p}step_seconds_max"] > 1.5 * result[f"{p}step_seconds_min"] for p in ("", "baseline_")
    )
    last = lines[-1]
    assert f"ratio {result['ratio']:.3f}" in last
    assert f"({2 / result['step_seconds_max']:.1f}-{2 / result['step_seconds_min']:.1f})" in last


def test_bench_model_unknown_name_is_one_line(capsys):
    assert bench_main(["model", "--model", "scnet5O", "--vs", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "'scnet5O'" in err and "scnet50" in err


@pytest.mark.parametrize(
    ("model", "vs", "message"),
    [
        ("scnet50", "resnet5", "unknown model 'resnet5'"),
        ("scnet50:fused", None, "unknown suffix ':fused' (known: ':layerwise', ':lean')"),
        ("scnet50", "resnet50:layerwise", "SC models only"),
        ("resnet50:lean", None, "SC models only"),
        ("resnet50", None, "no default baseline"),
    ],
)
def test_bench_model_bad_names_fail_before_building(model, vs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench_model(model, vs, device="cpu", log=lambda _: pytest.fail("built something"))


def test_bench_model_compile_needs_a_warmup_step():
    with pytest.raises(ValueError, match="warmup"):
        bench_model("scnet50", compile=True, warmup=0, device="cpu", log=lambda _: pytest.fail("built something"))


def test_bench_model_kernel_table_needs_its_folder(tmp_path):
    with pytest.raises(ValueError, match="existing folder"):
        bench_model(
            "scnet50", kernel_table=str(tmp_path / "no" / "k.md"), device="cpu", log=lambda _: pytest.fail("built")
        )


@pytest.mark.parametrize(
    ("name", "fused", "triton"),
    [("scnet50", True, True), ("scnet50:lean", True, False), ("scnet50:layerwise", False, True)],
)
def test_build_model_suffix_picks_the_kernels(name, fused, triton):
    """A plain name is the shipped model (Triton kernels on CUDA); ``:lean`` is ``set_fused(True, triton=False)``
    and ``:layerwise`` ``set_fused(False)``, on every SC block and SCConv."""
    blocks = [m for m in build_model(name).modules() if hasattr(m, "fused")]
    assert len(blocks) == 2 * 16  # scnet50: 16 blocks, each with its SCConv
    assert {(m.fused, m.triton) for m in blocks} == {(fused, triton)}


# What a kernel table's rows are: rank, `name`, calls/step, ms/step, % (and the "all other" row, rank empty).
KERNEL_ROW = re.compile(r"\| (\d*) \| (.+?) \| ([\d,.]+) \| ([\d.]+) \| ([\d.]+) \|")


@pytest.mark.slow
def test_bench_model_kernel_table(tmp_path, capsys):
    """--kernel-table: a table per side, longest op first, shares of the step that add up, a convolution among the
    ops; the JSON names the file and carries each side's totals, which the table's head repeats."""
    table = tmp_path / "bench.kernels.md"
    args = ["--model", "scnet50:lean", "--image-size", "112", "--kernel-table", str(table), "--kernel-steps", "1"]
    result = _bench(tmp_path, capsys, *args)
    assert (result["model"], result["baseline"]) == ("scnet50:lean", "resnet50")
    assert (result["kernel_table"], result["kernel_steps"]) == (str(table), 1)
    # On CPU ``:lean`` is the shipped block (Triton is CUDA's); it keeps less for backward than the plain layers.
    lean = _saved_per_image("scnet50:lean", 112)
    assert result["saved_bytes_per_image"] == lean < _saved_per_image("scnet50:layerwise", 112)

    text = table.read_text()
    head, *sections = text.split("\n## ")
    assert "1 profiled step of each model" in head and "cudnn.benchmark off" in head
    for prefix in ("", "baseline_"):
        ms, launches = result[f"{prefix}kernel_ms_per_step"], result[f"{prefix}kernel_launches_per_step"]
        assert ms > 0 and launches >= 100
    assert f"| op time, ms per step | {result['kernel_ms_per_step']:.2f} | " in head
    assert [s.split(":")[0] for s in sections] == ["scnet50", "resnet50"]  # "scnet50:lean: the 25 longest ..."
    for section in sections:
        rows = KERNEL_ROW.findall(section)
        ranked = [r for r in rows if r[0]]
        assert [int(r[0]) for r in ranked] == list(range(1, 26))
        ms = [float(r[3]) for r in ranked]
        assert ms == sorted(ms, reverse=True)
        shares = [float(r[4]) for r in rows]
        assert all(0 <= s <= 100 for s in shares) and sum(shares) == pytest.approx(100, abs=0.1 * len(shares))
        assert any("convolution" in r[1] for r in ranked)
