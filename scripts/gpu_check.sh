#!/usr/bin/env bash
# One command for a GPU machine: environment, wheels, the `cuda` tests, then the throughput, memory
# and evaluation benchmarks on random-weight models of two shapes (the embedded Gemma 3 270M's and
# Llama 3.2 1B's: benchmarks/shapes/) at the paper's settings (rows of 4,096 tokens, bfloat16, sdpa),
# and a summary. JSON goes to --out (default $OUT, else benchmarks/results/gpu).
#
#   bash scripts/gpu_check.sh                            # on the GPU box (under 8 minutes on an H200)
#   bash scripts/gpu_check.sh --device cpu --quick       # the same path in seconds on a CPU (CI runs it)
#
# Options: --device cuda|cpu (default cuda), --quick (1-layer models, short rows, few tokens, the
# Llama tiny-model tests only), --out DIR, --wheels DIR (wheels to install with --no-index --no-deps
# when transformer_lens is missing; default wheels/, made by scripts/gpu_wheels.sh), --python PY.
# Every step runs even when an earlier one fails; the exit status says whether any failed.
set -uo pipefail

DEVICE=cuda QUICK=0 OUT_DIR="${OUT:-}" WHEELS=wheels PY="${PYTHON:-python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1; see the header of scripts/gpu_check.sh" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT_DIR="${OUT_DIR:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
MODELS="$(mktemp -d)"
trap 'rm -rf "$MODELS"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
step() {  # step NAME COMMAND...: run, time, and remember a failure
  local name="$1"; shift
  echo "== $name"
  local t0=$SECONDS
  if "$@"; then echo "== $name: ok ($((SECONDS - t0)) s)"; else echo "== $name: FAILED ($((SECONDS - t0)) s)"; FAILED+=("$name"); fi
}

if [ "$QUICK" = 1 ]; then
  LAYERS=(--layers 1) SEQ=64 TOKENS=256 EVAL_TOKENS=128 BATCH=2 REPEATS=1 SIZES=128,256 DTYPE=bfloat16
  TESTS=(-k "llama and not torchrun") GEMMA_LAYERS=2
else
  LAYERS=() SEQ=4096 TOKENS=65536 EVAL_TOKENS=32768 BATCH=4 REPEATS=3 SIZES=16384,65536 DTYPE=bfloat16
  TESTS=() GEMMA_LAYERS=""
fi

environment() {
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
import transformers
print("transformers", transformers.__version__)
EOF
}

wheels() {
  if "$PY" -c "import transformer_lens, tl_culture" 2>/dev/null; then echo "transformer_lens present"; return 0; fi
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS and transformer_lens is missing"; return 1; }
  "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl && "$PY" -c "import transformer_lens"
}

models() {
  for shape in gemma3-270m llama3.2-1b; do
    "$PY" benchmarks/shapes.py "$shape" --out "$MODELS/$shape" "${LAYERS[@]}" || return 1
  done
}

cuda_tests() {
  TL_CULTURE_TEST_DEVICE="$DEVICE" TL_CULTURE_TEST_GEMMA_LAYERS="$GEMMA_LAYERS" \
    "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider -W ignore::UserWarning "${TESTS[@]}" \
    --junitxml "$OUT_DIR/cuda_tests.xml"
}

bench() {  # bench SHAPE
  local shape="$1" model="$MODELS/$1" common=(--device "$DEVICE" --dtype "$DTYPE")
  "$PY" benchmarks/throughput.py --model "$model" "${common[@]}" --seq-len "$SEQ" --batch-size "$BATCH" \
    --tokens "$TOKENS" --repeats "$REPEATS" --methods collect,collect_hooks,hf_body,bridge_logits \
    --out "$OUT_DIR/throughput_$shape.json" || return 1
  "$PY" benchmarks/evaluation.py --model "$model" "${common[@]}" --seq-len "$SEQ" --batch-size "$BATCH" \
    --tokens "$EVAL_TOKENS" --repeats "$REPEATS" --out "$OUT_DIR/evaluation_$shape.json" || return 1
  "$PY" benchmarks/memory.py --model "$model" "${common[@]}" --seq-len "$SEQ" --batch-size "$BATCH" \
    --sizes "$SIZES" --methods collect,run_with_cache_batch --out "$OUT_DIR/memory_$shape.json"
}

step environment environment
step wheels wheels
step models models
step "cuda tests" cuda_tests
for shape in gemma3-270m llama3.2-1b; do step "benchmarks $shape" bench "$shape"; done
step summary "$PY" benchmarks/gpu_report.py "$OUT_DIR"
if [ ${#FAILED[@]} -gt 0 ]; then echo "gpu_check: FAILED: ${FAILED[*]}"; exit 1; fi
echo "gpu_check: all steps passed; results in $OUT_DIR"
