#!/usr/bin/env python
"""Inference latency at batch 1: PyTorch CPU and onnxruntime CPU, plus PyTorch CUDA FP16 and TensorRT where present.

    python tools/bench_latency.py                                   # yolov8n.pt at 640 and 320
    python tools/bench_latency.py --model runs/bench/.../best.pt --imgsz 640 --rounds 5 --iters 20

Backends are interleaved round by round (each round times every backend), so a slow phase of the machine hits all of
them alike; the table gives the median and the 10th / 90th percentiles of single forward passes in milliseconds.
What is timed is the network alone (letterboxed fp32 input already in memory; NMS and image decoding excluded), the
figure that compares runtimes. The checkpoint is copied to a temp dir before export, so nothing is written next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _torch_runner(pt: Path, size: int, device: str, half: bool) -> Callable[[], None]:
    import torch
    from ultralytics import YOLO

    model = YOLO(str(pt)).model.fuse().eval().to(device)
    model = model.half() if half else model.float()
    x = torch.rand(1, 3, size, size, device=device, dtype=torch.float16 if half else torch.float32)

    def run() -> None:
        with torch.inference_mode():
            model(x)
        if device != "cpu":
            torch.cuda.synchronize()

    return run


def _ort_runner(onnx: Path, size: int, threads: int) -> Callable[[], None]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the same thread budget as PyTorch's
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.rand(1, 3, size, size).astype(np.float32)
    return lambda: sess.run(None, {name: x})


def _trt_runner(engine: Path, size: int) -> Callable[[], None]:
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(str(engine), device=torch.device("cuda:0"))
    x = torch.rand(1, 3, size, size, device="cuda:0", dtype=torch.float16 if backend.fp16 else torch.float32)

    def run() -> None:
        backend(x)
        torch.cuda.synchronize()

    return run


def build_backends(pt: Path, size: int, work: Path, threads: int, data: str | None = None,
                   ) -> dict[str, Callable[[], None]]:
    """Every backend this machine can run for ``pt`` at ``size``."""
    import importlib.util

    import torch
    from ultralytics import YOLO

    local = work / f"{pt.stem}-{size}.pt"
    shutil.copy2(pt, local)
    onnx = Path(YOLO(str(local)).export(format="onnx", imgsz=size, verbose=False))
    backends = {"pytorch-cpu-fp32": _torch_runner(local, size, "cpu", False), "onnxruntime-cpu-fp32": _ort_runner(onnx, size, threads)}
    if torch.cuda.is_available():
        backends["pytorch-cuda-fp16"] = _torch_runner(local, size, "cuda:0", True)
        if importlib.util.find_spec("tensorrt") is not None:
            for q, tag in ((16, "fp16"), (8, "int8")) if data else ((16, "fp16"),):  # INT8 calibrates on --data
                try:
                    eng = YOLO(str(local)).export(format="engine", imgsz=size, quantize=q, device=0, verbose=False,
                                                  **({"data": data} if q == 8 else {}))
                    backends[f"tensorrt-{tag}"] = _trt_runner(Path(eng), size)
                except Exception as e:  # noqa: BLE001  (report, keep timing the others)
                    print(f"tensorrt-{tag}: not measured ({e})")
    return backends


def measure(backends: dict[str, Callable[[], None]], rounds: int, iters: int, warmup: int) -> dict[str, list[float]]:
    """Per-backend single-call times in ms, interleaved by round."""
    for run in backends.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(rounds):
        for name, run in backends.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def summary(t: list[float]) -> dict[str, float]:
    q = statistics.quantiles(t, n=10)
    return {"median_ms": statistics.median(t), "p10_ms": q[0], "p90_ms": q[-1], "n": len(t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the official yolov8n.pt found locally)")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads of both PyTorch and onnxruntime (default: all cores; Ultralytics' own CPU "
                         "default is cores - 1)")
    ap.add_argument("--data", default=None, help="dataset YAML for TensorRT INT8 calibration (GPU + TensorRT only)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()

    import yolokd  # noqa: F401  (offline switches before Ultralytics)
    from yolokd.utils.offline import prepare_ultralytics
    from yolokd.utils.paths import find_weights

    prepare_ultralytics()
    import torch

    torch.set_num_threads(a.threads)  # importing Ultralytics set OMP_NUM_THREADS=1; compare runtimes at equal threads

    pt = Path(a.model) if a.model else find_weights("yolov8n.pt")
    if pt is None or not pt.is_file():
        raise SystemExit("bench_latency: no checkpoint (give --model or put yolov8n.pt where find_weights looks)")
    results: dict[str, Any] = {
        "model": pt.name, "batch": 1, "rounds": a.rounds, "iters": a.iters, "warmup": a.warmup,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
        "command": "python tools/bench_latency.py " + " ".join(
            [f"--imgsz {' '.join(map(str, a.imgsz))}", f"--rounds {a.rounds}", f"--iters {a.iters}",
             f"--threads {a.threads}"]
            + ([f"--model {a.model}"] if a.model else [])),
        "results": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for size in a.imgsz:
            backends = build_backends(pt, size, Path(work), a.threads, a.data)
            torch.set_num_threads(a.threads)  # Ultralytics' export resets it to cores - 1 (select_device)
            times = measure(backends, a.rounds, a.iters, a.warmup)
            results["results"][str(size)] = {k: summary(v) for k, v in times.items()}
    print(f"\n{pt.name}, batch 1, {results['machine']}")
    print("| imgsz | backend | median ms | p10 ms | p90 ms |\n|---|---|---|---|---|")
    for size, rows in results["results"].items():
        for name, s in rows.items():
            print(f"| {size} | {name} | {s['median_ms']:.1f} | {s['p10_ms']:.1f} | {s['p90_ms']:.1f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
        print(f"saved {a.out}")


if __name__ == "__main__":
    main()
