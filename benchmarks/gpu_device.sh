#!/usr/bin/env bash
# The GPU path on a fresh, offline GPU machine, in one go and under 8 minutes:
# a virtual environment on the machine's CUDA PyTorch, MetaScope installed into it with the
# GPU extra's onnxruntime (carried as trimmed wheels, see benchmarks/gpu_pack.py), then
# benchmarks/gpu_bench.py: the gpu tests, heatmap tiles/s (CUDA vs CPU execution provider),
# training patches/s with AMP on and off, the end-to-end time of a 20,000-tile slide and a short
# training run. Results: $OUT/gpu_results.json, $OUT/gpu_results.md, $OUT/gpu_bench.log, $OUT/setup.log.
#
#   bash benchmarks/gpu_device.sh                 # on the GPU machine (repo root or anywhere)
#   bash benchmarks/gpu_device.sh --stash         # only keep the carried .gpuwheels parts for the next call
#   PYTHON=.venv/bin/python bash benchmarks/gpu_device.sh --cpu-dry-run   # here: every step tiny on the CPU
#
# Environment: PYTHON (interpreter with a CUDA PyTorch; default python3), OUT (results folder),
# GPU_TOTAL_S (hard limit for everything, default 470 s).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/metascope-gpu-out}
TOTAL=${GPU_TOTAL_S:-470}
STASH=/tmp/metascope-gpu-stash
VENV=/tmp/metascope-gpu-venv
PY=${PYTHON:-python3}
DRY=""
T0=$(date +%s)
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/setup.log"; }

case "${1:-}" in
  --stash)
    mkdir -p "$STASH" && cp .gpuwheels/part-* "$STASH"/ && ls -l "$STASH"
    exit $? ;;
  --cpu-dry-run) DRY="--cpu-dry-run" ;;
  "") ;;
  *) echo "error: unknown option $1 (use --stash or --cpu-dry-run)" >&2; exit 2 ;;
esac

log "machine: $(uname -m), $(nproc) cores; $(nvidia-smi -L 2>/dev/null | head -2 | tr '\n' ' ')"
BASE_SITE=$(timeout 60 "$PY" -c 'import site, sys; print(":".join(p for p in site.getsitepackages() if p.endswith("-packages")))') || {
  log "error: $PY does not run"; exit 2; }
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
log "python $PYVER at $(command -v "$PY"); torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1)"

# 1. a virtual environment that sees the interpreter's packages (its CUDA PyTorch) behind its own
rm -rf "$VENV"
timeout 60 "$PY" -m venv --without-pip "$VENV" || { log "error: cannot create a virtual environment"; exit 2; }
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$BASE_SITE" | tr ':' '\n' > "$SITE/_metascope_base.pth"
VPY="$VENV/bin/python"

# 2. carried wheels (.gpuwheels/part-*, and parts stashed by an earlier call): onnxruntime-gpu
#    (CUDA provider trimmed to sm_90), openslide, imagecodecs -- for the machine's Python 3.12
parts=$( (ls "$STASH"/part-* 2>/dev/null; ls .gpuwheels/part-* 2>/dev/null) | awk -F/ '{print $NF" "$0}' | sort -k1,1 -u | cut -d" " -f2)
if [ -n "$DRY" ]; then
  log "dry run: carried wheels are not installed (they are for the GPU machine's Python 3.12)"
elif [ -z "$parts" ]; then
  log "note: no .gpuwheels parts: onnxruntime without CUDA (heatmap steps report it); see benchmarks/gpu_pack.py"
elif [ "$PYVER" != "3.12" ]; then
  log "note: the carried wheels are for Python 3.12, this is $PYVER: not installed"
else
  mkdir -p /tmp/metascope-gpu-pack
  # shellcheck disable=SC2086
  if cat $parts | timeout 90 tar -xJf - -C /tmp/metascope-gpu-pack; then
    cp -r /tmp/metascope-gpu-pack/site/. "$SITE"/
    timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" /tmp/metascope-gpu-pack/wheels/*.whl \
      >>"$OUT/setup.log" 2>&1 || log "warning: installing the carried wheels failed (see setup.log)"
    log "installed: $(ls "$SITE" | grep -iE '^(onnxruntime|openslide|imagecodecs)' | grep -v info | tr '\n' ' ')"
  else
    log "warning: the carried parts do not form a whole archive ($(echo $parts | wc -w) found): onnxruntime without CUDA"
  fi
fi

# 3. MetaScope itself (editable, no downloads), else from the source tree
if timeout 90 "$PY" -m pip --python "$VPY" install -q --no-index --no-deps --no-build-isolation -e "$ROOT" >>"$OUT/setup.log" 2>&1; then
  log "metascope installed (editable) into $VENV"
else
  log "note: editable install failed (see setup.log); using the source tree on PYTHONPATH"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# 4. CUDA libraries of the pip-installed NVIDIA packages, for onnxruntime's CUDA provider
libs=$(echo "$BASE_SITE" | tr ':' '\n' | while read -r d; do ls -d "$d"/nvidia/*/lib "$d"/nvidia/cu*/lib 2>/dev/null; done | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg
log "onnxruntime: $("$VPY" -c 'import onnxruntime as o; print(o.__version__, o.__file__.rsplit("/",2)[0], o.get_available_providers())' 2>&1 | tail -1)"

# 5. the benchmark, inside what is left of the budget (each step has its own limit)
left=$(( TOTAL - ($(date +%s) - T0) - 10 ))
log "setup took $(( $(date +%s) - T0 )) s; benchmark budget ${left} s"
timeout $(( left + 8 )) "$VPY" "$ROOT/benchmarks/gpu_bench.py" --out "$OUT" --budget "$left" $DRY
rc=$?
log "done in $(( $(date +%s) - T0 )) s (exit $rc); results in $OUT"
exit $rc
