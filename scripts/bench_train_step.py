#!/usr/bin/env python
"""Training-step speed of an SC model against its timm baseline, measured side by side.

Three variants alternate step by step in one process, so drift in the machine's speed (other
load, thermal state) hits all equally: the SC model as shipped (sibling layers fused), the same
model run layer by layer (``set_fused(False)``, the straightforward implementation), and the
baseline. Reports the median step time of each and the speed ratios baseline_time / sc_time
(> 1 means the SC model trains faster).

    python scripts/bench_train_step.py --model scnet50 --batch-size 16 --image-size 224 --channels-last
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import scnet
from scnet.models import BASELINES


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype):
    """One SGD training step, closed over its model, optimizer and batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    device_type = x.device.type
    autocast = torch.autocast(device_type=device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scnet50")
    parser.add_argument("--baseline", default=None, help="default: the model's A/B partner")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    baseline = args.baseline or BASELINES[args.model]
    names = [args.model, f"{args.model} (unfused)", baseline]
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    steps = {}
    for name in names:
        model = scnet.create_model(name.split(" ")[0]).to(device, memory_format=memory_format).train()
        if name.endswith("(unfused)"):
            model.set_fused(False)
        if args.compile:
            model = torch.compile(model)
        steps[name] = make_step(model, x, y, amp_dtype)

    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    sync(device)

    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": args.model,
        "baseline": baseline,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "amp": args.amp,
        "step_seconds": med,
        "images_per_second": {n: args.batch_size / t for n, t in med.items()},
        "speed_ratio": med[baseline] / med[names[0]],
        "speed_ratio_unfused": med[baseline] / med[names[1]],
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
