"""GPU training throughput and MFU: fp32 vs bf16 + channels_last (+ torch.compile), in one go.

    python bench/gpu_training.py [--models resnet50,resnet18] [--size 224] [--batch 128]
        [--steps 30] [--no-compile] [--peak-tflops 989] [--out DIR]

For each model and each setup, trains on synthetic batches already on the GPU (this measures the
model step, not the data loader): SGD + cross-entropy, `--warmup` steps, then `--steps` timed
steps, median of `--repeats`. MFU = achieved FLOP/s / the GPU's peak dense bf16 FLOP/s, with
FLOPs per image from torch.utils.flop_counter (forward + backward). The peak is looked up by
device name (table below) or given with --peak-tflops. fp32 runs with PyTorch's defaults
(cuDNN convolutions may use TF32). Works on torch 2.11+; needs no project data.
Writes gpu_training.json to --out (default: $OUT when set, else bench/out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),  # NVIDIA A10G, the AWS part (A10: 125)
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (no bf16 on V100)
    ("T4", 65.0),  # fp16
]


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def build(name: str, num_classes: int):
    import torchvision

    if name == "resnet50":
        return torchvision.models.resnet50(num_classes=num_classes)
    try:  # the project's own backbone when available
        from lightning_modules.models import build_model

        return build_model(name, num_classes=num_classes)
    except Exception:  # noqa: BLE001 - fall back to torchvision's
        return getattr(torchvision.models, name)(num_classes=num_classes)


def train_flops_per_image(name: str, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, 1000)
    x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def measure(name: str, setup: str, args) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device(args.device)
    bf16 = setup != "fp32"
    channels_last = setup != "fp32"
    model = build(name, 1000).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    step_model = torch.compile(model) if setup.endswith("compile") else model
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_warm = time.perf_counter()  # includes compiling
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t_warm
    rates = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        rates.append(args.steps * args.batch / (time.perf_counter() - t0))
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    model = opt = step_model = x = y = None  # free the GPU memory before the next setup (step() closes over them)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "model": name,
        "setup": setup,
        "images_per_s": statistics.median(rates),
        "rounds": rates,
        "warmup_s": round(warmup_s, 1),
        "max_mem_gib": round(mem, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (overrides the table)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "out"))
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (--device cpu dry-runs it)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
    peak = peak_tflops(name, args.peak_tflops)
    setups = ["fp32", "bf16+channels_last"] + ([] if args.no_compile else ["bf16+channels_last+compile"])
    rows = []
    for model in args.models.split(","):
        flops = train_flops_per_image(model, args.size)
        for setup in setups:
            try:
                r = measure(model, setup, args)
            except Exception as exc:  # noqa: BLE001 - report and go on (e.g. compile unavailable)
                r = {"model": model, "setup": setup, "error": f"{type(exc).__name__}: {exc}"[:500]}
                torch.cuda.empty_cache()
            r["gflops_train_per_image"] = flops / 1e9
            if "images_per_s" in r:
                r["achieved_tflops"] = r["images_per_s"] * flops / 1e12
                r["mfu"] = r["achieved_tflops"] / peak if peak else None
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(
        f"\n{name}, torch {torch.__version__}, {args.size} px, batch {args.batch}, peak bf16 "
        f"{peak or '?'} TFLOP/s; median of {args.repeats} x {args.steps} steps"
    )
    print(f"{'model':10s} {'setup':28s} {'img/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'vs fp32':>8s} {'mem GiB':>8s}")
    base = {r["model"]: r.get("images_per_s") for r in rows if r["setup"] == "fp32"}
    for r in rows:
        if "error" in r:
            print(f"{r['model']:10s} {r['setup']:28s} failed: {r['error'][:80]}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "?"
        speed = r["images_per_s"] / base[r["model"]] if base.get(r["model"]) else float("nan")
        print(
            f"{r['model']:10s} {r['setup']:28s} {r['images_per_s']:9.0f} {r['achieved_tflops']:8.1f} {mfu:>6s} "
            f"{speed:8.2f} {r['max_mem_gib']:8.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = {
        "device": name,
        "torch": torch.__version__,
        "peak_bf16_tflops": peak,
        "size": args.size,
        "batch": args.batch,
        "rows": rows,
    }
    (args.out / "gpu_training.json").write_text(json.dumps(out, indent=2))
    print(f"written: {args.out / 'gpu_training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
