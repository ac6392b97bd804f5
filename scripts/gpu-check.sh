#!/usr/bin/env bash
# The CUDA checks, in two halves, for a GPU machine that has the CUDA toolkit and PyTorch but
# no Rust:
#
#   scripts/gpu-check.sh build   # here: build kiln, the CUDA test binaries and the benches,
#                                # stripped and packed into target/gpu/kiln-gpu.tar.xz (carry
#                                # target/gpu over)
#   scripts/gpu-check.sh run [STAGE[:ITEM,ITEM..] ...]
#                                # there: the stages in order, `all` (the default) being
#                                # parity train bench sanitize:
#     parity    every CUDA test binary with KILN_REQUIRE_CUDA=1 (items: the binaries' names)
#     train     each GAN 200 steps on cuda:0, one MLP GAN epoch scored by `kiln eval`, and
#               `kiln sample --latents` on CUDA against the CPU (items: gan dcgan cgan
#               wgan-gp epoch latents)
#     bench     the elementwise, GEMM (against cuBLAS) and training-step tables beside PyTorch
#               eager's steps (items: elementwise gemm train_step torch; and, only when named,
#               compile: PyTorch's torch.compile(mode="reduce-overhead") steps)
#     sanitize  compute-sanitizer memcheck over short training runs and the tensor tests,
#               racecheck over the shared-memory kernels' tests (items: train-dcgan
#               train-wgan-gp, memcheck-NAME, racecheck-NAME)
#   e.g. `run parity:cuda_gemm,cuda_norm sanitize:racecheck-cuda_gemm` reruns just those.
#
# Every stage has its own time budget (together about 7 minutes) and every command in it its
# own `timeout`; a failure or a timeout is recorded and the run goes on. $OUT (or
# target/gpu/logs) receives, written as the run goes: summary.txt (each test binary
# passed/failed/time and its first failing assertion, each bench's table, each sanitizer's
# error count, and `key: value` lines to compare turn to turn), one log per stage, and
# runs.tar.gz (sample grids, loss plots, scores). The exit status is 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu
# The test binaries, by cargo target name: kiln-tensor's unit tests (the cuda:: ones) and
# integration tests, the loader's device gather, clipping on the device, the CUDA half of the
# gradient checks and the GAN/VAE/DDPM/PixelCNN training runs.
tensor_tests=(cuda_tensor cuda_elementwise cuda_reduce cuda_index cuda_conv_matmul
    cuda_rng_optim cuda_gemm cuda_pool cuda_norm cuda_loss)
# cuda_kernels_compile first: it compiles every kernel file for sm_90 into $KILN_CACHE_DIR, so
# the later binaries load cubins instead of compiling.
parity_tests=(cuda_kernels_compile kiln_tensor "${tensor_tests[@]}" loader optim gradcheck
    cuda_train)
benches=(elementwise gemm train_step)
# Seconds per stage: parity + train + bench + sanitize = 440, plus unpacking (the first H200
# run took 240 s of it). `bench:compile` alone gets 180 s: PyTorch compiles three steps.
declare -A budget=([parity]=150 [train]=70 [bench]=80 [sanitize]=140)

build() {
    rm -rf "$dir" && mkdir -p "$dir/bin"
    cargo build --release || exit 1
    cp target/release/kiln "$dir/bin/kiln"
    local json
    json=$( { cargo test --release -p kiln-tensor --no-run --message-format=json;
              cargo test --release -p kiln-data --test loader --no-run --message-format=json;
              cargo test --release -p kiln-nn --test optim --no-run --message-format=json;
              cargo test --release --test cuda_train --no-run --message-format=json;
              for b in "${benches[@]}"; do
                  cargo bench --bench "$b" --no-run --message-format=json; done; } 2>/dev/null)
    for name in "${parity_tests[@]}" "${benches[@]}"; do
        local path
        path=$(printf '%s\n' "$json" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$name" | tail -1)
        if [ -z "$path" ]; then
            echo "no executable for $name" >&2
            exit 1
        fi
        cp "$path" "$dir/bin/$name"
    done
    strip "$dir"/bin/*
    # The newest glibc symbol version any binary needs: the GPU machine's glibc must be at
    # least this (`ldd --version` there; the run's summary prints it).
    echo "newest glibc symbol needed: $(objdump -T "$dir"/bin/* 2>/dev/null \
        | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
    tar -C "$dir" -cJf "$dir/kiln-gpu.tar.xz" bin
    rm -rf "$dir/bin"
    du -sh "$dir/kiln-gpu.tar.xz"
}

# ---- the run: bookkeeping ----

say() { echo "$*" | tee -a "$summary"; }

# Seconds left of the current stage's budget (at least 5, so a late item still starts).
left() {
    local remaining=$((stage_end - SECONDS))
    echo $((remaining < 5 ? 5 : remaining))
}

# Whether ITEM is selected in the current stage (no item list: all are).
wanted() {
    [ -z "$items" ] && return 0
    [[ ",$items," == *",$1,"* ]]
}

# Runs `command...` under `timeout LIMIT`, its output appended to the stage log under a
# header; sets `status` (124: timed out) and `took` (seconds).
timed() {
    local limit=$1
    shift
    echo "===== $* (limit ${limit}s)" >>"$log"
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$scratch" 2>&1
    status=$?
    took=$((SECONDS - start))
    cat "$scratch" >>"$log"
    echo "===== exit $status after ${took}s" >>"$log"
}

# The first failing assertion of a Rust test run: the first panic's location and message.
first_failure() {
    grep -m1 -A1 "panicked at" "$scratch" | tr '\n' ' ' | cut -c1-400
}

# ---- the stages ----

parity() {
    for name in "${parity_tests[@]}"; do
        wanted "$name" || continue
        # One test at a time: the host-wait counts and the index fault record are per process.
        local args=(--test-threads 1)
        # kiln-tensor's unit tests: the CUDA module's (its CPU ones run in CI).
        [ "$name" = kiln_tensor ] && args+=(cuda::)
        timed "$(left)" "$bin/$name" "${args[@]}"
        local result counts
        counts=$(grep -E "^test result" "$scratch" | tail -1 \
            | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 passed, \2 failed/')
        if [ "$status" = 0 ]; then
            result=ok
        else
            result=FAILED
            failed=1
            parity_failed=1
        fi
        [ "$status" = 124 ] && result=TIMEOUT
        say "$(printf 'parity   %-22s %-7s %-22s %4ss' "$name" "$result" "${counts:-no result line}" "$took")"
        [ "$result" != ok ] && say "         first failure: $(first_failure)"
    done
}

train() {
    local runs=/tmp/kiln-gpu/runs
    for model in gan dcgan cgan wgan-gp; do
        wanted "$model" || continue
        rm -rf "${runs:?}/$model"
        timed "$(left)" "$bin/kiln" train "$model" --device cuda --steps 200 --eval-samples 0 \
            --quiet --out "$runs/$model"
        local grids
        grids=$(find "$runs/$model" -name '*.png' 2>/dev/null | wc -l)
        if [ "$status" = 0 ] && [ "$grids" -gt 0 ]; then
            say "$(printf 'train    %-22s ok      %4ss  %s PNGs; %s' "$model" "$took" "$grids" \
                "$(grep -m1 '^done:' "$scratch" | cut -c1-200)")"
        else
            failed=1
            say "$(printf 'train    %-22s FAILED  %4ss  exit %s: %s' "$model" "$took" "$status" \
                "$(tail -1 "$scratch" | cut -c1-300)")"
        fi
    done
    if wanted epoch; then
        rm -rf "$runs/gan-epoch"
        timed "$(left)" "$bin/kiln" train gan --device cuda --epochs 1 --eval-samples 0 --quiet \
            --out "$runs/gan-epoch"
        if [ "$status" = 0 ]; then
            say "train    gan, one epoch (937 steps)  wall ${took}s"
            say "mlp-gan-epoch-cuda-wall-s: $took"
            timed "$(left)" "$bin/kiln" eval --device cuda \
                --checkpoint "$runs/gan-epoch/checkpoints/latest.safetensors"
            if [ "$status" = 0 ]; then
                say "train    kiln eval of that epoch's checkpoint (${took}s):"
                sed 's/^/           /' "$scratch" | tail -12 | tee -a "$summary"
            else
                failed=1
                say "train    kiln eval FAILED (exit $status): $(tail -1 "$scratch" | cut -c1-300)"
            fi
        else
            failed=1
            say "train    gan, one epoch FAILED (exit $status after ${took}s): $(tail -1 "$scratch" | cut -c1-300)"
        fi
    fi
    if wanted latents; then
        # Latents written on the CPU, read by `kiln sample --device cuda`: the same images.
        local checkpoint=$runs/gan/checkpoints/latest.safetensors
        [ -f "$checkpoint" ] || checkpoint=$runs/gan-epoch/checkpoints/latest.safetensors
        timed "$(left)" bash -c "'$bin/kiln' sample --device cpu --n 16 --checkpoint '$checkpoint' \
            --out /tmp/kiln-gpu/cpu.safetensors && '$bin/kiln' sample --device cuda \
            --latents /tmp/kiln-gpu/cpu.safetensors --checkpoint '$checkpoint' \
            --out /tmp/kiln-gpu/cuda.safetensors && python3 -c '
from safetensors.numpy import load_file
cpu, cuda = (load_file(f\"/tmp/kiln-gpu/{d}.safetensors\") for d in (\"cpu\", \"cuda\"))
gap = abs(cpu[\"images\"] - cuda[\"images\"]).max()
print(f\"max |cpu - cuda| over 16 images: {gap:.2e}\")
assert (cpu[\"latents\"] == cuda[\"latents\"]).all() and gap < 1e-3, gap
'"
        if [ "$status" = 0 ]; then
            say "train    sample --latents on cuda   ok      $(tail -1 "$scratch")"
        else
            failed=1
            say "train    sample --latents on cuda   FAILED  $(tail -2 "$scratch" | tr '\n' ' ' | cut -c1-300)"
        fi
    fi
    # Sample grids, loss plots, metrics and scores of the runs, without the checkpoints.
    (cd /tmp/kiln-gpu && find runs -type f ! -name '*.safetensors' -print0 \
        | tar --null -czf "$logs/runs.tar.gz" -T -) 2>/dev/null || true
}

# Criterion's median throughput (images/s) of bench `id` in the stage log's last bench run.
criterion_rate() {
    python3 - "$1" "$scratch" <<'PYTHON'
import re, sys
target, path = sys.argv[1], sys.argv[2]
text = open(path).read()
units = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}
match = re.search(re.escape(target) + r"\s.*?thrpt:\s*\[\S+ \S+ (\S+) (\S+)", text, re.S)
print(f"{float(match.group(1)) * units[match.group(2)]:.0f}" if match else "")
PYTHON
}

bench() {
    if wanted elementwise; then
        timed "$(left)" "$bin/elementwise" --bench cuda
        say "bench    elementwise (exit $status, ${took}s):"
        grep -A6 "^cuda:0" "$scratch" | sed 's/^/           /' | tee -a "$summary"
        [ "$status" = 0 ] || failed=1
    fi
    if wanted gemm; then
        timed "$(left)" "$bin/gemm" --bench cuda
        say "bench    gemm against cuBLAS (exit $status, ${took}s):"
        grep -A80 "^cuda:0" "$scratch" | grep -v "^Benchmarking\|^$" | sed 's/^/           /' \
            | tee -a "$summary"
        [ "$status" = 0 ] || failed=1
        # kiln/cuBLAS at 4096³: FP32, and BF16 on bf16 tensors (the "bf16" row without
        # "tensors" also counts the f32 operands' conversion).
        say "gemm-fp32-4096-vs-cublas: $(awk '$1 == "4096x4096x4096" && $2 == "fp32" { print $NF }' "$scratch")"
        say "gemm-bf16-4096-vs-cublas: $(awk '$1 == "4096x4096x4096" && $2 == "bf16" && $3 == "tensors" { print $NF }' "$scratch")"
    fi
    local kiln_b64="" kiln_b256="" kiln_dcgan=""
    if wanted train_step; then
        timed "$(left)" "$bin/train_step" --bench train_step_cuda
        say "bench    train_step_cuda, images/s (exit $status, ${took}s):"
        grep -E "^train_step_cuda/" "$scratch" | awk '{print $1}' | while read -r id; do
            say "           $id $(criterion_rate "$id")"
        done
        kiln_b64=$(criterion_rate train_step_cuda/gan_b64)
        kiln_b256=$(criterion_rate train_step_cuda/gan_b256)
        kiln_dcgan=$(criterion_rate train_step_cuda/dcgan_b64)
        [ "$status" = 0 ] || failed=1
    fi
    if wanted torch; then
        local model batch torch_rate ratio kiln_rate
        for case in "gan 64 $kiln_b64" "gan 256 $kiln_b256" "dcgan 64 $kiln_dcgan"; do
            read -r model batch kiln_rate <<<"$case"
            timed "$(left)" python3 benches/reference/torch_gan.py --model "$model" \
                --batch "$batch" --device cuda --steps 300
            torch_rate=$(grep -o '[0-9]* images/s' "$scratch" | cut -d' ' -f1)
            ratio=$(python3 -c "import sys; k, t = sys.argv[1:]; print(f'{float(k) / float(t):.2f}')" \
                "${kiln_rate:-nan}" "${torch_rate:-nan}" 2>/dev/null)
            say "bench    $model b$batch: kiln ${kiln_rate:-?} images/s, PyTorch eager ${torch_rate:-?} (kiln/PyTorch ${ratio:-?})"
            [ "$model $batch" = "gan 64" ] && say "mlp-gan-b64-vs-torch-eager: ${ratio:-?}"
        done
    fi
    # torch.compile(mode="reduce-overhead") takes a minute to compile each step: only when
    # named (`run bench:compile`).
    if [[ ",$items," == *",compile,"* ]]; then
        for case in "gan 64" "gan 256" "dcgan 64"; do
            read -r model batch <<<"$case"
            timed "$(left)" python3 benches/reference/torch_gan.py --model "$model" \
                --batch "$batch" --device cuda --steps 300 --compile
            say "bench    $model b$batch: PyTorch compile(reduce-overhead) $(grep -o '[0-9]* images/s' "$scratch" || echo "failed (exit $status): $(tail -1 "$scratch" | cut -c1-200)")"
        done
    fi
}

# The errors a compute-sanitizer log reports: its summary line's count, else (cut short) the
# reports printed so far.
sanitizer_errors() {
    local summary_line
    summary_line=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$scratch" | tail -1)
    if [ -n "$summary_line" ]; then
        echo "$summary_line" | sed 's/^========= //'
    else
        echo "no summary (cut short); $(grep -cE '^========= (Invalid|Race|Program hit|Uninitialized|Barrier|Error|Leaked)' "$scratch") reports so far"
    fi
}

sanitize() {
    if ! command -v compute-sanitizer >/dev/null; then
        say "sanitize compute-sanitizer not found"
        failed=1
        return
    fi
    local sanitizer=(compute-sanitizer --error-exitcode 9)
    local model name
    for model in dcgan wgan-gp; do
        wanted "train-$model" || continue
        timed "$(left)" "${sanitizer[@]}" --tool memcheck "$bin/kiln" train "$model" \
            --device cuda --steps 3 --eval-samples 0 --quiet \
            --out "/tmp/kiln-gpu/sanitized/$model"
        [ "$status" = 0 ] || failed=1
        say "$(printf 'sanitize memcheck %-24s exit %-3s %4ss  %s' "train-$model" "$status" "$took" "$(sanitizer_errors)")"
    done
    # Memcheck over the tensor tests first (each a few seconds under it), then racecheck over
    # the shared-memory kernels' (tens of seconds each) in the time left: a timed-out run still
    # reports what it saw.
    for pass in memcheck racecheck; do
        local list=("${tensor_tests[@]}") cap=30
        [ "$pass" = racecheck ] && list=(cuda_reduce cuda_norm cuda_gemm) && cap=60
        for name in "${list[@]}"; do
            wanted "$pass-$name" || continue
            timed "$(( $(left) < cap ? $(left) : cap ))" "${sanitizer[@]}" --tool "$pass" \
                "$bin/$name" --test-threads 1
            [ "$status" = 0 ] || [ "$status" = 124 ] || failed=1
            say "$(printf 'sanitize %-9s %-24s exit %-3s %4ss  %s' "$pass" "$name" "$status" "$took" "$(sanitizer_errors)")"
        done
    done
}

run() {
    logs=${OUT:-$dir/logs}
    bin=/tmp/kiln-gpu/bin
    mkdir -p "$logs" /tmp/kiln-gpu
    summary=$logs/summary.txt
    scratch=/tmp/kiln-gpu/last-command.txt
    : >"$summary"
    [ -x "$bin/kiln" ] || tar -C /tmp/kiln-gpu -xJf "$dir/kiln-gpu.tar.xz" || {
        say "cannot unpack $dir/kiln-gpu.tar.xz (carry target/gpu, built by \`just gpu-build\`)"
        exit 1
    }
    export KILN_REQUIRE_CUDA=1 KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-kernels}
    # libnvrtc: the toolkit's, else the one in NVIDIA's Python wheels (PyTorch's).
    for lib in /usr/local/cuda/lib64 \
        "$(python3 -c 'import glob, nvidia; print(sorted(glob.glob(nvidia.__path__[0] + "/cu[0-9]*/lib"))[-1])' 2>/dev/null)"; do
        if [ -n "$lib" ] && [ -d "$lib" ]; then
            export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    done
    failed=0
    parity_failed=0
    say "gpu-check $(date -u +%FT%TZ): $*"
    say "glibc: $(ldd --version 2>&1 | head -1)"
    say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
    "$bin/kiln" info >"$scratch" 2>&1 || failed=1
    sed 's/^/info: /' "$scratch" | tee -a "$summary"

    local selections=("$@")
    [ ${#selections[@]} = 0 ] && selections=(all)
    [ "${selections[*]}" = all ] && selections=(parity train bench sanitize)
    local selection stage
    for selection in "${selections[@]}"; do
        stage=${selection%%:*}
        items=""
        [[ "$selection" == *:* ]] && items=${selection#*:}
        case "$stage" in
            parity | train | bench | sanitize) ;;
            *) say "unknown stage $stage (parity, train, bench, sanitize)"; failed=1; continue ;;
        esac
        log=$logs/$stage.log
        stage_end=$((SECONDS + ${budget[$stage]}))
        [ "$selection" = bench:compile ] && stage_end=$((SECONDS + 180))
        say "== $stage${items:+ ($items)}, budget ${budget[$stage]}s"
        "$stage"
        say "== $stage done at ${SECONDS}s"
    done
    if [[ " ${selections[*]} " == *" parity "* ]]; then
        say "cuda-core-parity: $([ "$parity_failed" = 0 ] && echo pass || echo fail)"
    fi
    say "gpu-check finished in ${SECONDS}s, $([ "$failed" = 0 ] && echo 'nothing failed' || echo 'something FAILED')"
    exit "$failed"
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run [parity|train|bench|sanitize|all][:ITEM,..] ..." >&2; exit 2 ;;
esac
