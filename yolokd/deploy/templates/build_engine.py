#!/usr/bin/env python3
"""Build a TensorRT engine from the bundle's ONNX model ON THE JETSON (engines are not portable between devices).

    python3 build_engine.py --fp16                      # FP16 engine
    python3 build_engine.py --int8                      # INT8, calibrated on calib/ (entropy calibrator), FP16 fallback

INT8 calibration runs the network on the calibration images (drawn from the training data when the bundle was made)
with TensorRT's IInt8EntropyCalibrator2 and caches the scales in calib.cache, so later builds skip calibration.
Preprocessing is the one the model was trained with: letterbox to the export size (grey 114 padding), BGR -> RGB,
CHW, float32 in [0, 1].

Needs: numpy, opencv-python (cv2) or Pillow, TensorRT's Python package (shipped with JetPack), and one of cuda-python,
pycuda or torch for device buffers. Written by yolokd; depends on nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXIT_NO_TENSORRT = 3


def letterbox(path: Path, size: int):
    """(3, size, size) float32 RGB in [0, 1], resized with unchanged aspect ratio and padded with grey 114."""
    import numpy as np

    try:
        import cv2

        im = cv2.imread(str(path))
        if im is None:
            raise ValueError(f"cannot read {path}")
        im = im[..., ::-1]
        h, w = im.shape[:2]
        r = min(size / h, size / w)
        nh, nw = round(h * r), round(w * r)
        im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else im
    except ImportError:
        from PIL import Image

        pil = Image.open(path).convert("RGB")
        w, h = pil.size
        r = min(size / h, size / w)
        nh, nw = round(h * r), round(w * r)
        im = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = im
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32) / 255.0


def calibration_batches(folder: Path, size: int, batch: int, limit: int):
    """All calibration images, preprocessed, as (n_batches, batch, 3, size, size); fails early on an unreadable image."""
    import numpy as np

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})[:limit]
    if len(files) < batch:
        sys.exit(f"build_engine: {folder} has {len(files)} image(s); INT8 calibration needs at least {batch}")
    n = len(files) // batch * batch
    arr = np.stack([letterbox(f, size) for f in files[:n]]).reshape(-1, batch, 3, size, size)
    print(f"build_engine: calibration: {n} images preprocessed to batches of shape {arr.shape[1:]}")
    return arr


class _DeviceBuffer:
    """One device allocation, from cuda-python, pycuda or torch (whichever is installed)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes, self._keep = nbytes, None
        try:
            from cuda import cudart

            err, self.ptr = cudart.cudaMalloc(nbytes)
            self._copy = lambda host: cudart.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes,
                                                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return
        except ImportError:
            pass
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as cuda

            self._keep = cuda.mem_alloc(nbytes)
            self.ptr = int(self._keep)
            self._copy = lambda host: cuda.memcpy_htod(self._keep, host)
            return
        except ImportError:
            pass
        try:
            import torch

            self._keep = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            self.ptr = self._keep.data_ptr()
            self._copy = lambda host: self._keep.copy_(torch.from_numpy(host.view("uint8").reshape(-1)))
            return
        except ImportError:
            sys.exit("build_engine: INT8 calibration needs cuda-python, pycuda or torch for device memory")

    def copy_from(self, host) -> None:
        self._copy(host)


def build(args: argparse.Namespace) -> None:
    """Parse the ONNX model and build the engine."""
    meta = json.loads((HERE / "bundle.json").read_text()) if (HERE / "bundle.json").exists() else {}
    onnx = Path(args.onnx)
    if not onnx.is_file():
        sys.exit(f"build_engine: ONNX model {onnx} not found")
    size = args.imgsz or meta.get("imgsz", 640)
    batches = calibration_batches(Path(args.calib), size, args.calib_batch, args.calib_limit) if args.int8 else None
    try:
        import tensorrt as trt
    except ImportError:
        print("build_engine: the TensorRT Python package is not installed here. Run this script on the Jetson, where "
              "JetPack provides it (python3 -c 'import tensorrt').", file=sys.stderr)
        sys.exit(EXIT_NO_TENSORRT)

    logger = trt.Logger(trt.Logger.INFO)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if int(trt.__version__.split(".")[0]) < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        sys.exit("build_engine: ONNX parse failed: " + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace * (1 << 30)))
    inp = network.get_input(0)
    if any(d == -1 for d in inp.shape):  # dynamic ONNX: one optimisation profile over the batch sizes
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, 3, size, size), (args.batch, 3, size, size), (args.batch, 3, size, size))
        config.add_optimization_profile(profile)
        if args.int8:
            config.set_calibration_profile(profile)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # also the fallback precision of layers INT8 cannot take
    if args.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, batches, Path(args.cache))
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        sys.exit("build_engine: TensorRT failed to build the engine (see the log above)")
    out = Path(args.out or onnx.with_name(f"{onnx.stem}_{'int8' if args.int8 else 'fp16'}.engine"))
    out.write_bytes(engine)
    print(f"build_engine: wrote {out}")


def _calibrator(trt, batches, cache: Path):
    """IInt8EntropyCalibrator2 over the preprocessed batches, caching its scales in ``cache``."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.i, self.buf = 0, _DeviceBuffer(batches[0].nbytes)

        def get_batch_size(self) -> int:
            return batches.shape[1]

        def get_batch(self, names):
            if self.i >= len(batches):
                return None
            self.buf.copy_from(batches[self.i])
            self.i += 1
            return [self.buf.ptr]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fp16", action="store_true", help="FP16 engine")
    mode.add_argument("--int8", action="store_true", help="INT8 engine calibrated on --calib")
    ap.add_argument("--onnx", default=str(HERE / "model.onnx"))
    ap.add_argument("--out", default=None, help="engine path (default: model_fp16.engine / model_int8.engine)")
    ap.add_argument("--calib", default=str(HERE / "calib"), help="folder of calibration images")
    ap.add_argument("--cache", default=str(HERE / "calib.cache"), help="calibration cache (reused when present)")
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--calib-limit", type=int, default=1000)
    ap.add_argument("--imgsz", type=int, default=0, help="input size (default: bundle.json)")
    ap.add_argument("--batch", type=int, default=1, help="max batch of a dynamic-batch model")
    ap.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GiB")
    build(ap.parse_args())


if __name__ == "__main__":
    main()
