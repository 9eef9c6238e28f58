#!/usr/bin/env python3
"""Build ``.gpu/``: what ``tools/gpu_full.sh`` needs on a bare, offline GPU machine, in under 64 MiB with the repo.

    python tools/gpu_bundle.py                      # the real bundle: wheels, weights, kitti-1k recompressed
    python tools/gpu_bundle.py --out DIR --max-images 8 --no-wheels   # a tiny one (tests/test_gpu_full.py)

The GPU machine's image has PyTorch, torchvision, OpenCV (headless), matplotlib, requests, psutil, httpx, ... but no
Ultralytics and no polars, and it reaches no registry. Only the repository's working tree travels (tracked and
untracked-not-ignored files plus the carried ``.gpu``: 64 MiB together), so the bundle holds:

* ``whl/``: wheels (Python 3.12, manylinux x86_64) of the versions pinned in ``requirements.lock`` for ultralytics,
  ultralytics-thop and ultralytics-platform (Ultralytics' pure dependencies that the image lacks; the script checks the
  wheels' ``Requires-Dist`` against the image's package list and names anything else missing);
* ``shim/polars/``: a stand-in for polars. Ultralytics 8.4.190 imports polars on the training path only in
  ``BaseTrainer.read_results_csv`` (each checkpoint save); the real polars needs ``polars-runtime-32``, a 54 MB wheel
  that does not fit next to the weights and the data. ``gpu_full.sh`` uses the stand-in only when polars is missing;
* ``weights/``: the official COCO ``yolov8n.pt`` and ``yolov8s.pt`` (29 MB of the budget);
* ``kitti-1k.tar.gz``: ``../shared/data/kitti-1k`` with every image resized to a long side of 640 px and re-encoded as
  JPEG quality 75 (same layout: ``kitti-1k/{images,labels}/{train,val}``, ``kitti-1k/kitti-1k.yaml``): 26.7 MiB (gzip
  shrinks only the tar headers and the labels). The source frames are JPEG quality 50 (IJG tables) at 1242x375. At
  640 px, quality 90 took 46.7 MiB (measured), 80 about 31 MiB (estimated on a sample), while only about 34 MiB are
  left beside the weights (27.8 MiB), the wheels (1.5 MiB) and the repository (0.8 MiB).

Idempotent: what is already there with the same settings is kept. Prints the size of what travels.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
#: What may travel to the device machine with one command (tracked + untracked-not-ignored files + carried paths).
TRAVEL_LIMIT = 64 * MIB
#: Wheels carried: Ultralytics and its pure dependencies that the GPU image lacks (polars: the stand-in, see above).
WHEELS = ["ultralytics", "ultralytics-thop", "ultralytics-platform"]
#: Provided otherwise than by a wheel.
SHIMMED = {"polars": "shim/polars (stand-in for read_csv(...).to_dict(), the one call on Ultralytics' training path)"}
WEIGHTS = ["yolov8n.pt", "yolov8s.pt"]
DATASET = "kitti-1k"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
#: Target interpreter of the GPU machine (KINDS.md: Python 3.12.3, x86-64 Linux), for evaluating wheel markers.
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
#: The GPU image's packages when KINDS.md cannot be read (copied from it, 2026-11-17).
IMAGE_PACKAGES_FALLBACK = (
    "certifi charset-normalizer contourpy cycler filelock fonttools fsspec httpx idna jinja2 kiwisolver markupsafe "
    "matplotlib mpmath networkx numpy nvidia-ml-py onnx onnxruntime opencv-python-headless packaging pandas pillow "
    "psutil pyparsing python-dateutil pyyaml requests scipy six sympy torch torchvision tqdm triton typing-extensions "
    "urllib3").split()
KINDS_MD = Path("/work/.library/device/KINDS.md")

POLARS_SHIM = '''"""Stand-in for polars on the GPU machine, written by tools/gpu_bundle.py. This is NOT polars.

Ultralytics 8.4.190 imports polars on its training path in one place, ``BaseTrainer.read_results_csv`` (every checkpoint
save): ``pl.read_csv(csv_bytes, infer_schema_length=None).to_dict(as_series=False)``, stored in the checkpoint as
``train_results``. The real polars needs the 54 MB ``polars-runtime-32`` wheel, which does not fit in the 64 MiB that
travel to the machine. This module provides that call and nothing else: any other attribute raises, naming this file,
so a new use of polars fails loudly instead of silently. tools/gpu_full.sh puts it on PYTHONPATH only when polars is
not importable (or GPU_FULL_POLARS=shim).
"""

import csv
import io
from pathlib import Path

__version__ = "0+yolokd.stand-in"


class _Frame:
    """Columns of a CSV file, in file order."""

    def __init__(self, columns):
        self._columns = columns

    @property
    def columns(self):
        return list(self._columns)

    def to_dict(self, as_series=True):
        return {k: list(v) for k, v in self._columns.items()}


def _value(s):
    s = s.strip()
    if s == "":
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def read_csv(source, infer_schema_length=None, **kwargs):
    """CSV text (bytes, a path or a file object) -> a frame whose ``to_dict(as_series=False)`` is {column: values}."""
    if hasattr(source, "read"):
        source = source.read()
    if isinstance(source, (bytes, bytearray)):
        text = bytes(source).decode("utf-8")
    else:
        text = Path(source).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip() for h in rows[0]] if rows else []
    columns = {h: [] for h in header}
    for row in rows[1:]:
        for h, v in zip(header, row):
            columns[h].append(_value(v))
    return _Frame(columns)


def __getattr__(name):
    raise AttributeError(f"polars.{name} is not provided by the polars stand-in {__file__} (only read_csv(...)"
                         f".to_dict()); carry the real polars wheels to use it")
'''


def log(msg: str) -> None:
    print(f"gpu_bundle: {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"gpu_bundle: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def shared_data(arg: str | None) -> Path:
    """The shared data folder: --shared, else $YOLOKD_DATA, else ../shared/data beside the checkout."""
    candidates = [arg] if arg else [os.environ.get("YOLOKD_DATA"), str(REPO.parent / "shared" / "data")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    fail(f"shared data not found (looked at {', '.join(c for c in candidates if c)}): the bundle is built from "
         f"../shared/data next to the checkout ({DATASET}/ and weights/); give --shared DIR or set $YOLOKD_DATA")
    raise AssertionError  # unreachable


def locked_versions() -> dict[str, str]:
    """name -> version pinned in requirements.lock (names normalised: lower case, '-' for '_' and '.')."""
    lock = REPO / "requirements.lock"
    if not lock.is_file():
        fail(f"{lock} not found")
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(path: Path) -> tuple[str, str]:
    parts = path.name.split("-")
    return norm(parts[0]), parts[1]


def fetch_wheels(whl: Path, versions: dict[str, str]) -> None:
    """Download each wheel of WHEELS at its locked version unless it is there; drop other versions of them."""
    whl.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        if name not in versions:
            fail(f"{name} is not pinned in requirements.lock")
        want = versions[name]
        have = [p for p in whl.glob("*.whl") if wheel_name_version(p)[0] == name]
        for p in have:
            if wheel_name_version(p)[1] != want:  # two versions of one package would stop the whole install
                log(f"removing {p.name} (requirements.lock pins {name}=={want})")
                p.unlink()
        if any(wheel_name_version(p) == (name, want) for p in whl.glob("*.whl")):
            log(f"wheel {name}=={want}: already there")
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-q", "-d", str(whl),
               f"{name}=={want}"]
        log(f"downloading {name}=={want}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"pip download {name}=={want} failed (is the package registry reachable from here?):\n"
                 f"{r.stdout[-2000:]}{r.stderr[-2000:]}")


def image_packages() -> set[str]:
    """Packages of the GPU image, read from the workplace's KINDS.md when present, else the fallback list."""
    try:
        text = KINDS_MD.read_text()
        m = re.search(r"nvidia-h200: their image.*?Packages: (.*?)\.\s*$", text, re.S | re.M)
        if m:
            return {norm(p.strip()) for p in m.group(1).replace("\n", " ").split(",") if p.strip()}
    except OSError:
        pass
    return {norm(p) for p in IMAGE_PACKAGES_FALLBACK}


def check_dependencies(whl: Path) -> list[str]:
    """Requirements of the carried wheels (markers for the target Python) that neither the image nor the bundle has."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging is in requirements.lock
        log("packaging not importable: dependency check skipped")
        return []
    carried = {wheel_name_version(p)[0] for p in whl.glob("*.whl")}
    image = image_packages()
    missing = []
    for p in sorted(whl.glob("*.whl")):
        with zipfile.ZipFile(p) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue  # extras, other platforms / Pythons
            n = norm(req.name)
            headless = n == "opencv-python" and "opencv-python-headless" in image  # same cv2 module
            ok = n in carried or n in image or n in SHIMMED or headless
            if not ok:
                missing.append(n)
            elif n in SHIMMED and n not in carried:
                log(f"{n} (needed by {wheel_name_version(p)[0]}): {SHIMMED[n]}")
    return sorted(set(missing))


def copy_weights(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in WEIGHTS:
        s, d = src / name, dst / name
        if not s.is_file():
            fail(f"{s} not found: the official COCO weights are expected in ../shared/data/weights")
        if d.is_file() and d.stat().st_size == s.stat().st_size:
            log(f"weights {name}: already there")
            continue
        shutil.copyfile(s, d.with_suffix(".tmp"))
        os.replace(d.with_suffix(".tmp"), d)
        log(f"weights {name}: copied ({s.stat().st_size / MIB:.1f} MiB)")


def pack_dataset(src: Path, tar_path: Path, long_side: int, quality: int, max_images: int | None) -> None:
    """Resize every image of ``src`` to ``long_side`` (JPEG ``quality``) and pack the dataset as one .tar.gz.

    Labels are normalised YOLO boxes (fractions of the image's width and height), so they stay valid under a resize that
    keeps the aspect ratio; they are copied unchanged. Ultralytics trains at imgsz 640 anyway: it resizes each image's
    long side to 640 before augmenting, so a 640 px copy loses detail only where an augmentation zooms in beyond 1x
    (mosaic's random scale up to 1.5x), and not at all in validation at imgsz 640. The re-encoding adds JPEG error on
    top of the source's own quality-50 compression (PSNR of the re-encoded 640 px image against the decoded, resized
    source, measured on 15 frames: 33.2 dB at quality 75, 34.0 at 80, 36.7 at 90).
    """
    settings = {"source": str(src), "long_side": long_side, "quality": quality, "max_images": max_images}
    manifest = tar_path.with_name(f"{DATASET}.json")
    if tar_path.is_file() and manifest.is_file():
        old = json.loads(manifest.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            log(f"{tar_path.name}: already there ({old['n_images']} images, {tar_path.stat().st_size / MIB:.1f} MiB)")
            return
    yaml_file = src / f"{DATASET}.yaml"
    if not yaml_file.is_file():
        fail(f"{yaml_file} not found: the bundle recompresses ../shared/data/{DATASET}")
    import cv2

    cv2.setNumThreads(1)  # modest CPU use; ~15 s for the 1,141 frames
    t0 = time.time()
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    counts = {}
    with tarfile.open(tmp, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=6) as tar:

        def add(name: str, data: bytes, mtime: float) -> None:
            info = tarfile.TarInfo(f"{DATASET}/{name}")
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(data))

        header = (f"# Recompressed copy for the GPU machine (tools/gpu_bundle.py): every image resized to a long side "
                  f"of {long_side} px,\n# JPEG quality {quality}"
                  + (f", first {max_images} images per split" if max_images else "") + ". Labels unchanged.\n")
        add(f"{DATASET}.yaml", (header + yaml_file.read_text()).encode(), yaml_file.stat().st_mtime)
        for split in ("train", "val"):
            images = sorted(p for p in (src / "images" / split).iterdir()
                            if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            if max_images:
                images = images[:max_images]
            if not images:
                fail(f"no images in {src / 'images' / split}")
            for p in images:
                im = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if im is None:
                    fail(f"cannot read {p}")
                h, w = im.shape[:2]
                r = long_side / max(h, w)
                if r < 1:
                    im = cv2.resize(im, (round(w * r), round(h * r)), interpolation=cv2.INTER_AREA)
                ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    fail(f"cannot encode {p}")
                add(f"images/{split}/{p.stem}.jpg", buf.tobytes(), p.stat().st_mtime)
                lab = src / "labels" / split / f"{p.stem}.txt"
                if lab.is_file():
                    add(f"labels/{split}/{lab.name}", lab.read_bytes(), lab.stat().st_mtime)
            counts[split] = len(images)
    os.replace(tmp, tar_path)
    manifest.write_text(json.dumps({**settings, "n_images": sum(counts.values()),
                                    **{f"n_{k}": v for k, v in counts.items()}, "bytes": tar_path.stat().st_size},
                                   indent=1))
    log(f"{tar_path.name}: {counts} images at long side {long_side}, q{quality}: "
        f"{tar_path.stat().st_size / MIB:.1f} MiB in {time.time() - t0:.0f} s")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def travelling_repo_bytes() -> int | None:
    """Bytes of the tracked and untracked-not-ignored files (what travels besides carried paths)."""
    try:
        r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in r.stdout.decode().split("\0"):
        p = REPO / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / ".gpu"), help="bundle folder (default: .gpu in the repo, git-ignored)")
    ap.add_argument("--shared", default=None, help="shared data folder (default: $YOLOKD_DATA, else ../shared/data)")
    ap.add_argument("--max-images", type=int, default=None, help="first N images per split (tests); default: all")
    ap.add_argument("--long-side", type=int, default=640, help="resize each image's long side to this (default 640)")
    ap.add_argument("--quality", type=int, default=75, help="JPEG quality (default 75; see pack_dataset)")
    ap.add_argument("--no-wheels", action="store_true",
                    help="no wheels (the dry run then uses the installed packages); removes any already in OUT/whl")
    a = ap.parse_args(argv)

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = shared_data(a.shared)
    whl = out / "whl"
    if a.no_wheels:
        if whl.is_dir():
            shutil.rmtree(whl)
        log("no wheels (--no-wheels): gpu_full.sh will use the packages installed where it runs")
    else:
        fetch_wheels(whl, locked_versions())
        missing = check_dependencies(whl)
        if missing:
            log("WARNING: needed by the carried wheels but neither on the GPU image (KINDS.md) nor in the bundle: "
                + ", ".join(missing))
        else:
            log("dependencies: every requirement of the carried wheels is on the GPU image or in the bundle")
    shim = out / "shim" / "polars" / "__init__.py"
    shim.parent.mkdir(parents=True, exist_ok=True)
    if not shim.is_file() or shim.read_text() != POLARS_SHIM:
        shim.write_text(POLARS_SHIM)
    copy_weights(shared / "weights", out / "weights")
    for old in out.glob(f"{DATASET}.tar"):  # an earlier, uncompressed layout
        old.unlink()
    pack_dataset(shared / DATASET, out / f"{DATASET}.tar.gz", a.long_side, a.quality, a.max_images)

    size = tree_bytes(out)
    for sub in sorted(out.iterdir()):
        log(f"  {sub.name}: {(tree_bytes(sub) if sub.is_dir() else sub.stat().st_size) / MIB:.2f} MiB")
    repo = travelling_repo_bytes()
    log(f"bundle {out}: {size / MIB:.1f} MiB")
    if repo is not None and out.parent == REPO:
        total = size + repo
        log(f"travels with a command: {total / MIB:.1f} MiB of {TRAVEL_LIMIT / MIB:.0f} MiB "
            f"(tracked + untracked-not-ignored files {repo / MIB:.1f} MiB, carried {out.name} {size / MIB:.1f} MiB)")
        if total > TRAVEL_LIMIT:
            fail("over the device machine's 64 MiB limit: lower --quality or --long-side")
        if total > TRAVEL_LIMIT - 4 * MIB:
            log("WARNING: less than 4 MiB below the 64 MiB limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
