#!/usr/bin/env bash
# kitti-1k, GPU full setting, in ONE command on a lent GPU machine (bare image: no Ultralytics, no polars, no network).
# Installs the carried wheels, unpacks the recompressed kitti-1k, runs
#   yolokd bench protocol=kitti-1k-gpu jobs=4 device=0
# (teacher fine-tuning, then the students side by side on the one GPU) and ALWAYS packs what finished into $OUT, also
# when the bench is stopped at this script's deadline (a snapshot every 60 s covers a kill from outside).
#
#   here, once:  .venv/bin/python tools/gpu_bundle.py        # builds the git-ignored .gpu/ (~56 MiB)
#   device:      run tool: command "bash tools/gpu_full.sh", carry [".gpu"], timeout_s 600
#   CPU dry run: GPU_FULL_DRYRUN=1 PYTHON=.venv/bin/python bash tools/gpu_full.sh     (tests/test_gpu_full.py)
#
# Environment:
#   OUT                where the result files go (the device sets it; default: a new temp dir, printed)
#   GPU_BUNDLE         the bundle folder (default .gpu)
#   METHODS            comma list of entries (default: the protocol's: none,ultralytics,fgd,ld)
#   PYTHON             interpreter (default python3)
#   GPU_FULL_DRYRUN=1  CPU dry run: everything but CUDA at a tiny scale (1 epoch at imgsz 64, batch 4, teacher 1 epoch,
#                      none + ultralytics, device=cpu, 2 jobs): checks the pipeline, not the numbers
#   GPU_FULL_BUDGET_S  seconds for the whole script (default 570, inside the tool's 600): the bench is stopped in
#                      time to tabulate what finished and pack it
#   GPU_FULL_POLARS    auto | shim | real (auto: the bundle's polars stand-in only when polars is not importable)
#   GPU_FULL_KEEP=1    keep the work folder (data, runs, weights) instead of deleting it at the end
#
# $OUT receives at most 8 files (the device returns 8): summary.md, summary.csv, results.csv, summary.png, curves.png,
# runs.tar.gz (every run's results.csv, args.yaml, job.json, result.json, log.txt, the teacher's results.csv and
# args.yaml, recipe.yaml; no weights), gpu_full.log (this script's whole output) and status.txt.
set -euo pipefail

T0=$SECONDS
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PY=${PYTHON:-python3}
DRY=${GPU_FULL_DRYRUN:-0}
BUDGET=${GPU_FULL_BUDGET_S:-570}
RESERVE=50          # seconds kept after the bench: tabulating finished runs, packing
STAGE=start
BENCH_RC=""
CHILD=""

die() { echo "gpu_full: error: $*" >&2; exit 2; }
left() { echo $((BUDGET - (SECONDS - T0))); }

BUNDLE=$(cd "${GPU_BUNDLE:-.gpu}" 2>/dev/null && pwd) \
  || die "bundle folder '${GPU_BUNDLE:-.gpu}' not found: run 'python tools/gpu_bundle.py' here, carry .gpu"
[ -f "$BUNDLE/kitti-1k.tar.gz" ] || die "$BUNDLE/kitti-1k.tar.gz missing: rebuild the bundle (tools/gpu_bundle.py)"
for w in yolov8n.pt yolov8s.pt; do
  [ -f "$BUNDLE/weights/$w" ] || die "$BUNDLE/weights/$w missing: rebuild the bundle"
done

if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d /tmp/gpu-full-out.XXXXXX); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
WORK=$(mktemp -d /tmp/gpu-full.XXXXXX)
PROJECT=$WORK/bench
exec > >(tee -a "$OUT/gpu_full.log") 2>&1
echo "gpu_full: $(date -u +%FT%TZ) repo $REPO, bundle $BUNDLE, OUT $OUT, work $WORK, dry run $DRY, budget ${BUDGET}s"

# The protocol's results folder (<project>/<name>-v<version>[-hash]; one protocol per project here).
bench_dir() { local d; for d in "$PROJECT"/*/; do [ -f "$d/recipe.yaml" ] && { echo "${d%/}"; return; }; done; true; }

# Copy the tables and plots, and tar every run's small files (never weights) into $OUT, atomically.
pack() {
  local b s
  b=$(bench_dir)
  if [ -n "$b" ]; then
    for f in summary.md summary.csv results.csv summary.png curves.png; do
      if [ -f "$b/$f" ]; then cp "$b/$f" "$OUT/$f.tmp" && mv -f "$OUT/$f.tmp" "$OUT/$f"; fi
    done
  fi
  s=$WORK/pack.$BASHPID
  rm -rf "$s" && mkdir -p "$s/bench" "$s/teachers"
  if [ -d "$PROJECT" ]; then
    (cd "$PROJECT" && find . -type f -not -path '*/weights/*' \( -name results.csv -o -name args.yaml \
      -o -name job.json -o -name result.json -o -name log.txt -o -name recipe.yaml -o -name 'summary.*' \) -print0 \
      | xargs -0 -r cp --parents -t "$s/bench")
  fi
  if [ -d "${YOLOKD_CACHE:-/nonexistent}/teachers" ]; then
    (cd "$YOLOKD_CACHE/teachers" && find . -type f -not -path '*/weights/*' \( -name results.csv -o -name args.yaml \
      -o -name teacher.json \) -print0 | xargs -0 -r cp --parents -t "$s/teachers")
  fi
  tar -czf "$s.tgz" -C "$s" bench teachers && mv -f "$s.tgz" "$OUT/runs.tar.gz"
  rm -rf "$s"
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "${SNAP_PID:-}" ]; then kill "$SNAP_PID" 2>/dev/null; wait "$SNAP_PID" 2>/dev/null; fi
  pack || echo "gpu_full: packing failed"
  if [ -n "${CHILD:-}" ]; then  # signalled while the bench ran: packed first, then its process group is stopped
    echo "gpu_full: stopping the running bench (process group $CHILD)"
    kill -TERM -- "-$CHILD" 2>/dev/null
  fi
  {
    echo "exit $rc at stage '$STAGE' after $((SECONDS - T0)) s ($(date -u +%FT%TZ)); dry run $DRY"
    echo "bench exit: ${BENCH_RC:-not started} (0 complete, 124 stopped at this script's deadline, else failed: log)"
    echo "protocol ${PROTO:-?}, methods ${METHODS:-protocol default}, jobs ${JOBS:-?}, device ${DEVICE:-?}"
    local b; b=$(bench_dir)
    if [ -n "$b" ]; then
      echo "finished runs: $(cd "$b" && ls -d runs/*/result.json 2>/dev/null | cut -d/ -f2 | tr '\n' ' ')"
      [ -f "$b/teacher/result.json" ] && echo "teacher: $(tr -d '\n' < "$b/teacher/result.json")"
    fi
  } > "$OUT/status.txt"
  cat "$OUT/status.txt"
  echo "gpu_full: files in $OUT:"
  ls -la "$OUT"
  if [ "${GPU_FULL_KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "gpu_full: kept $WORK"; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- packages: the carried wheels (Ultralytics and its pure dependencies), yolokd from the working tree -------------
STAGE=install
PYPATH=$REPO
shopt -s nullglob
wheels=("$BUNDLE"/whl/*.whl)
shopt -u nullglob
if [ ${#wheels[@]} -gt 0 ]; then
  SITE=${GPU_FULL_SITE:-$WORK/site}
  echo "gpu_full: installing ${#wheels[@]} wheel(s) into $SITE: ${wheels[*]##*/}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  PYPATH=$SITE:$PYPATH
else
  echo "gpu_full: no wheels in $BUNDLE/whl: using the packages installed for $PY"
fi
case ${GPU_FULL_POLARS:-auto} in
  shim) SHIM=1 ;;
  real) SHIM=0 ;;
  auto) if PYTHONPATH=$PYPATH "$PY" -c "import polars" 2>/dev/null; then SHIM=0; else SHIM=1; fi ;;
  *) die "GPU_FULL_POLARS=${GPU_FULL_POLARS}: give auto, shim or real" ;;
esac
if [ "$SHIM" = 1 ]; then
  [ -f "$BUNDLE/shim/polars/__init__.py" ] || die "polars is not importable and $BUNDLE/shim/polars is missing"
  PYPATH=$BUNDLE/shim:$PYPATH
  echo "gpu_full: polars: the bundle's stand-in $BUNDLE/shim/polars (read_csv(...).to_dict() only; tools/gpu_bundle.py)"
fi
export PYTHONPATH=$PYPATH${PYTHONPATH:+:$PYTHONPATH}

# --- data, weights, offline switches ---------------------------------------------------------------------------------
STAGE=data
mkdir -p "$WORK/data"
tar -xzf "$BUNDLE/kitti-1k.tar.gz" -C "$WORK/data"   # -> $WORK/data/kitti-1k/...: shared:kitti-1k/kitti-1k.yaml
export YOLOKD_DATA=$WORK/data YOLOKD_WEIGHTS=$BUNDLE/weights YOLOKD_CACHE=$WORK/cache
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=$WORK/yolo-config PYTHONUNBUFFERED=1 MPLBACKEND=Agg
echo "gpu_full: data $(find "$WORK/data/kitti-1k/images" -type f | wc -l) images under $YOLOKD_DATA/kitti-1k"

# --- the protocol -----------------------------------------------------------------------------------------------------
STAGE=protocol
if [ "$DRY" = 1 ]; then
  # The same protocol file at a tiny scale (a generated copy under another name, so the teacher is tiny too: the
  # teacher's epochs come from the protocol's teacher.epochs, not from the bench's train overrides).
  PROTO=$WORK/kitti-1k-gpu-dryrun.yaml
  "$PY" - "$REPO/cfg/protocols/kitti-1k-gpu.yaml" "$PROTO" <<'EOF'
import sys
import yaml
p = yaml.safe_load(open(sys.argv[1]))
p.update(name=p["name"] + "-dryrun", setting="cpu-dry-run", methods=["none", "ultralytics"],
         budget="CPU dry run of tools/gpu_full.sh: checks the pipeline, the numbers mean nothing")
p["teacher"]["epochs"] = 1
p["train"].update(epochs=1, imgsz=64, batch=4, workers=0, warmup_epochs=0)
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
EOF
  DEVICE=cpu JOBS=2 THREADS=1
else
  PROTO=kitti-1k-gpu DEVICE=0 JOBS=4 THREADS=""
fi
args=(bench "protocol=$PROTO" "jobs=$JOBS" "device=$DEVICE" "project=$PROJECT")
if [ -n "${METHODS:-}" ]; then args+=("methods=$METHODS"); fi
if [ -n "$THREADS" ]; then args+=("threads=$THREADS"); fi

# --- the machine, and Ultralytics prepared once before the parallel jobs ---------------------------------------------
STAGE=env
if command -v nvidia-smi >/dev/null; then nvidia-smi || true; fi
echo "gpu_full: $(nproc) CPUs; $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB RAM"}');" \
  "/dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $4}') free"
# One process before the jobs: Ultralytics' settings file written once (network integrations off; runs_dir in the work
# folder: the bench's validations without a project= land there, not in the checkout's runs/), bytecode compiled once,
# the dataset copied into $YOLOKD_CACHE and its label caches written once (parallel jobs would race for them).
# Ultralytics' AMP self-check (CUDA only) compares fp32 and fp16 boxes of a detector on its bundled bus.jpg and would
# try to download yolo26n.pt for it (no network here: a wait, then a skipped check). On the device the official
# yolov8n.pt is linked under that name in a private weights dir (this run's YOLO_CONFIG_DIR), which is what
# Ultralytics 8.0-8.2 used for the same check. It is never a training weight: the protocols name yolov8n/s.pt.
"$PY" - "$DRY" "$PROTO" <<'EOF'
import os, sys
from pathlib import Path
import torch
print(f"gpu_full: python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__}; "
      f"CUDA available {torch.cuda.is_available()}", flush=True)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu_full: GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
import yolokd  # offline switches before Ultralytics
from yolokd.utils.offline import prepare_ultralytics
prepare_ultralytics()
import cv2, numpy, polars, ultralytics
from ultralytics.utils import SETTINGS
print(f"gpu_full: ultralytics {ultralytics.__version__} ({Path(ultralytics.__file__).parent}); yolokd from "
      f"{Path(yolokd.__file__).parent}; opencv {cv2.__version__}; numpy {numpy.__version__}; "
      f"polars {polars.__version__} ({Path(polars.__file__).parent})", flush=True)
settings = dict(sync=False, clearml=False, comet=False, dvc=False, mlflow=False, raytune=False, tensorboard=False,
                wandb=False, runs_dir=str(Path(os.environ["YOLO_CONFIG_DIR"]).parent / "ultralytics-runs"))
if sys.argv[1] != "1" and torch.cuda.is_available():
    wd = Path(os.environ["YOLO_CONFIG_DIR"]) / "amp-check-weights"
    wd.mkdir(parents=True, exist_ok=True)
    dst = wd / "yolo26n.pt"
    if not dst.exists():
        dst.symlink_to(Path(os.environ["YOLOKD_WEIGHTS"]).resolve() / "yolov8n.pt")
    settings["weights_dir"] = str(wd)
    print(f"gpu_full: AMP check weights: {dst} -> yolov8n.pt")
SETTINGS.update(**settings)  # saved in this run's private YOLO_CONFIG_DIR; read by every job process
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from yolokd.bench.protocol import load_protocol, resolve_data
data = check_det_dataset(resolve_data(load_protocol(sys.argv[2])["data"]))
for split in ("train", "val"):
    ds = build_yolo_dataset(get_cfg(), data[split], 16, data, mode="val")  # scans the labels, writes <split>.cache
    print(f"gpu_full: {split}: {len(ds)} images, {sum(len(x['cls']) for x in ds.labels)} boxes")
EOF

# --- the bench, stopped in time to tabulate and pack -----------------------------------------------------------------
# yolokd's CLI as `python -m yolokd`, from the working tree (PYTHONPATH), under a deadline. timeout puts the command in
# its own process group and signals the whole group (every job process and data-loader worker). It runs in the background and is waited for, so that a signal to this script is
# handled at once (bash defers traps while a foreground command runs) and what finished is packed.
yolokd_within() {  # yolokd_within SECONDS ARGS...
  local s=$1 rc=0
  shift
  timeout --signal=TERM --kill-after=15 "$s" "$PY" -m yolokd "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}
STAGE=bench
BENCH_S=$(($(left) - RESERVE))
[ "$BENCH_S" -ge 20 ] || die "only ${BENCH_S}s left for the bench (GPU_FULL_BUDGET_S=$BUDGET)"
( while sleep 60; do pack || true; done ) >/dev/null 2>&1 &
SNAP_PID=$!
echo "gpu_full: yolokd ${args[*]}  (stopped after ${BENCH_S}s)"
BENCH_RC="none yet (still running when this script was stopped)"
rc=0
yolokd_within "$BENCH_S" "${args[@]}" || rc=$?
BENCH_RC=$rc
echo "gpu_full: bench exit $BENCH_RC after $((SECONDS - T0)) s"

# --- stopped or failed: tabulate the runs that finished (`yolokd bench report` runs nothing) ---------------------------
if [ "$BENCH_RC" -ne 0 ]; then
  STAGE=partial
  T=$(($(left) - 15))
  B=$(bench_dir)
  if [ -n "$B" ] && [ -f "$B/teacher/result.json" ] && [ "$T" -ge 20 ]; then
    echo "gpu_full: tabulating the runs that finished"
    yolokd_within "$T" bench report "protocol=$PROTO" "project=$PROJECT" || echo "gpu_full: tabulating failed"
  else
    echo "gpu_full: nothing to tabulate (teacher unfinished, or no time left)"
  fi
fi
STAGE=done
exit "$BENCH_RC"
