#!/usr/bin/env bash
# The CUDA checks, in two halves, for a GPU machine that has the CUDA toolkit but no Rust:
#
#   scripts/gpu-check.sh build   # here: build the CUDA test binaries, the elementwise and gemm
#                                # benches and kiln, stripped, into target/gpu/ (carry it over)
#   scripts/gpu-check.sh run     # there: run them all with KILN_REQUIRE_CUDA=1, then
#                                # compute-sanitizer memcheck and racecheck over the CUDA tests;
#                                # logs go to $OUT (or target/gpu/logs)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu

build() {
    rm -rf "$dir" && mkdir -p "$dir"
    cargo build --release
    cp target/release/kiln "$dir/kiln"
    # Test and bench executables, by target name, from cargo's JSON messages.
    local tests=(cuda_tensor cuda_elementwise cuda_reduce cuda_index cuda_conv_matmul
        cuda_rng_optim cuda_gemm cuda_kernels_compile)
    local json
    json=$( { cargo test --release -p kiln-tensor --no-run --message-format=json;
              cargo test --release --test gradcheck --no-run --message-format=json;
              cargo bench --bench elementwise --no-run --message-format=json;
              cargo bench --bench gemm --no-run --message-format=json; } 2>/dev/null)
    for name in "${tests[@]}" gradcheck elementwise gemm; do
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
        cp "$path" "$dir/$name"
    done
    strip "$dir"/*
    du -sh "$dir"
}

run() {
    local logs=${OUT:-$dir/logs}
    mkdir -p "$logs"
    export KILN_REQUIRE_CUDA=1 KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-kernels}
    # libnvrtc: the toolkit's, else the one in NVIDIA's Python wheels (PyTorch's).
    for lib in /usr/local/cuda/lib64 \
        "$(python3 -c 'import glob, nvidia; print(sorted(glob.glob(nvidia.__path__[0] + "/cu[0-9]*/lib"))[-1])' 2>/dev/null)"; do
        if [ -n "$lib" ] && [ -d "$lib" ]; then
            export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    done
    local failed=0
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/nvidia-smi.txt" || true
    "$dir/kiln" info | tee "$logs/info.txt" || failed=1
    for test in "$dir"/cuda_* "$dir/gradcheck"; do
        local name
        name=$(basename "$test")
        echo "== $name"
        if ! "$test" --test-threads 1 >"$logs/$name.txt" 2>&1; then
            failed=1
            echo "FAILED: $name"
        fi
        tail -3 "$logs/$name.txt"
    done
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            for test in "$dir"/cuda_*; do
                local name
                name=$(basename "$test")
                echo "== compute-sanitizer --tool $tool $name"
                if ! compute-sanitizer --tool "$tool" --error-exitcode 9 "$test" --test-threads 1 \
                    >"$logs/sanitizer-$tool-$name.txt" 2>&1; then
                    failed=1
                    echo "FAILED: $tool $name"
                fi
                grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$logs/sanitizer-$tool-$name.txt" | tail -1
            done
        done
    else
        echo "compute-sanitizer not found" && failed=1
    fi
    echo "== elementwise bench (CUDA part)"
    "$dir/elementwise" --bench cuda 2>&1 | tee "$logs/bench-elementwise.txt" | tail -8 || true
    echo "== gemm bench (CUDA part, against cuBLAS)"
    "$dir/gemm" --bench cuda 2>&1 | tee "$logs/bench-gemm.txt" | tail -40 || true
    return $failed
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
