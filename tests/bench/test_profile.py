"""The kernel table: what counts as a kernel, per-step figures, the longest first and the rest in one row, names
shortened; and one real profile on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd import DeviceType

from scnet.bench.profile import Kernel, KernelProfile, markdown_table, profile_kernels, short_kernel_name, summarize


def _event(key: str, count: int, us: float, device=DeviceType.CUDA, annotation: bool = False) -> SimpleNamespace:
    """One entry of ``key_averages()`` as the summary reads it; the time is both self times, so that a wrong
    choice of clock would still count it but a wrong device filter would not."""
    return SimpleNamespace(
        key=key,
        count=count,
        device_type=device,
        is_user_annotation=annotation,
        self_device_time_total=us,
        self_cpu_time_total=us,
    )


EVENTS = [
    _event("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float> >(int)", 60, 300),
    _event("sm90_xmma_fprop_implicit_gemm_bf16", 20, 900),
    _event("Memcpy DtoD (Device -> Device)", 2, 30),
    _event("aten::convolution", 20, 5000, device=DeviceType.CPU),  # the CPU side of a CUDA profile: not a kernel
    _event("gpu_user_annotation: step", 1, 1230, annotation=True),  # a range, not a kernel
]


def test_summarize_cuda_counts_device_kernels_per_step():
    p = summarize("scnet50", EVENTS, "cuda", steps=2)
    assert [k.name for k in p.kernels] == [
        "sm90_xmma_fprop_implicit_gemm_bf16",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float> >(int)",
        "Memcpy DtoD (Device -> Device)",
    ]
    assert p.ms_per_step == pytest.approx((900 + 300 + 30) / 1000 / 2)
    assert p.launches_per_step == (60 + 20 + 2) / 2


def test_summarize_cpu_counts_ops_without_annotations():
    events = [
        _event("aten::mm", 4, 100, DeviceType.CPU),
        _event("Optimizer.step#SGD.step", 1, 50, DeviceType.CPU, True),
    ]
    p = summarize("resnet50", events + EVENTS[:3], "cpu", steps=1)
    assert p.kernels == [Kernel("aten::mm", 4, 100.0)]


@pytest.mark.parametrize(
    ("name", "short"),
    [
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
            "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)",
            "vectorized_elementwise_kernel<4, CUDAFunctor_add<BFloat16>, array<char*, 3ul>>",
        ),
        (
            "void at::native::(anonymous namespace)::upsample_nearest2d_nhwc_out_frame<c10::BFloat16, "
            "&at::native::nearest_idx>(c10::BFloat16 const*, c10::BFloat16*, unsigned long)",
            "upsample_nearest2d_nhwc_out_frame<BFloat16, &nearest_idx>",
        ),
        (
            "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl<at::native::MulFunctor<float> "
            ">(at::TensorIteratorBase&, at::native::MulFunctor<float> const&)::{lambda(int)#1}>(int, {lambda(int)#1})",
            "elementwise_kernel<128, 4, gpu_kernel_impl<MulFunctor<float>>::{lambda#1}>",
        ),
        ("aten::convolution_backward", "aten::convolution_backward"),  # an op keeps its namespace
        ("scnet::calibrated_conv", "scnet::calibrated_conv"),
        ("triton_poi_fused_add_mul_sigmoid_0", "triton_poi_fused_add_mul_sigmoid_0"),
    ],
)
def test_short_kernel_name(name, short):
    assert short_kernel_name(name) == short


def test_short_kernel_name_cuts_long_names():
    assert short_kernel_name("k" * 200, width=10) == "k" * 9 + "…"


def test_markdown_table_top_rows_and_the_rest():
    kernels = [Kernel(f"k{i}", 3, 1000.0 * (5 - i)) for i in range(5)]  # 5, 4, 3, 2, 1 ms over 1 step
    profiles = [KernelProfile("a", "cuda", 1, kernels), KernelProfile("b|c", "cuda", 1, [Kernel("x|y", 1, 500.0)])]
    text = markdown_table(profiles, "Title", "a note", top=3)
    assert text.startswith("# Title\n\na note\n\n1 profiled step of each model (torch.profiler), self device time")
    assert "|  | a | b\\|c |" in text and "| kernel time, ms per step | 15.00 | 0.50 |" in text
    assert "| kernels launched per step | 15 | 1 |" in text
    assert "## a: the 3 longest of 5 kernels" in text
    assert "| 1 | `k0` | 3 | 5.00 | 33.3 |" in text and "| 3 | `k2` | 3 | 3.00 | 20.0 |" in text
    assert "|  | all other 2 | 6 | 3.00 | 20.0 |" in text and "`k3`" not in text
    assert "| 1 | `x\\|y` | 1 | 0.50 | 100.0 |" in text  # a bar in a name stays in its cell


def test_profile_kernels_on_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 8, 8)
    model(x)  # the lazy layer's shape

    def step() -> None:
        model(x).sum().backward()

    p = profile_kernels("tiny", step, torch.device("cpu"), steps=2)
    assert (p.model, p.device, p.steps) == ("tiny", "cpu", 2)
    names = {k.name: k for k in p.kernels}
    assert names["aten::convolution"].calls == 2  # one forward convolution a step
    assert p.ms_per_step > 0 and p.launches_per_step == sum(k.calls for k in p.kernels) / 2
    assert [k.self_us for k in p.kernels] == sorted((k.self_us for k in p.kernels), reverse=True)
    with pytest.raises(ValueError, match="at least one"):
        profile_kernels("tiny", step, torch.device("cpu"), steps=0)
