#!/usr/bin/env bash
# The CUDA checks, in two halves, for a GPU machine that has the CUDA toolkit and PyTorch but
# no Rust:
#
#   scripts/gpu-check.sh build   # here: build kiln, the CUDA test binaries and the benches,
#                                # stripped and packed into target/gpu/kiln-gpu.tar.xz (carry
#                                # target/gpu over)
#   scripts/gpu-check.sh run [parity|bench|sanitize|all]
#                                # there: parity = every CUDA test with KILN_REQUIRE_CUDA=1;
#                                # bench = the elementwise, GEMM (against cuBLAS) and
#                                # training-step benches beside PyTorch eager's steps;
#                                # sanitize = compute-sanitizer memcheck over the CUDA tests and
#                                # a short training run, racecheck over the shared-memory
#                                # kernels' tests; all (the default) = the three in that order.
#                                # Logs go to $OUT (or target/gpu/logs).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu
# The test binaries, by cargo target name, and the packages or targets that build them.
tensor_tests=(cuda_tensor cuda_elementwise cuda_reduce cuda_index cuda_conv_matmul
    cuda_rng_optim cuda_gemm cuda_pool cuda_norm cuda_loss cuda_kernels_compile)
root_tests=(gradcheck cuda_train)
# Tests of other crates with a CUDA case: the loader's device gather, clipping on the device.
crate_tests=(loader optim)
benches=(elementwise gemm train_step)

build() {
    rm -rf "$dir" && mkdir -p "$dir/bin"
    cargo build --release
    cp target/release/kiln "$dir/bin/kiln"
    local json
    json=$( { cargo test --release -p kiln-tensor --no-run --message-format=json;
              cargo test --release -p kiln-data --test loader --no-run --message-format=json;
              cargo test --release -p kiln-nn --test optim --no-run --message-format=json;
              for t in "${root_tests[@]}"; do
                  cargo test --release --test "$t" --no-run --message-format=json; done;
              for b in "${benches[@]}"; do
                  cargo bench --bench "$b" --no-run --message-format=json; done; } 2>/dev/null)
    for name in "${tensor_tests[@]}" "${crate_tests[@]}" "${root_tests[@]}" "${benches[@]}"; do
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
    tar -C "$dir" -cJf "$dir/kiln-gpu.tar.xz" bin
    rm -rf "$dir/bin"
    du -sh "$dir/kiln-gpu.tar.xz"
}

setup() {
    logs=${OUT:-$dir/logs}
    bin=/tmp/kiln-gpu/bin
    mkdir -p "$logs" /tmp/kiln-gpu
    [ -x "$bin/kiln" ] || tar -C /tmp/kiln-gpu -xJf "$dir/kiln-gpu.tar.xz"
    export KILN_REQUIRE_CUDA=1 KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-kernels}
    # libnvrtc: the toolkit's, else the one in NVIDIA's Python wheels (PyTorch's).
    for lib in /usr/local/cuda/lib64 \
        "$(python3 -c 'import glob, nvidia; print(sorted(glob.glob(nvidia.__path__[0] + "/cu[0-9]*/lib"))[-1])' 2>/dev/null)"; do
        if [ -n "$lib" ] && [ -d "$lib" ]; then
            export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    done
    failed=0
}

# Runs a test binary (in the repository root, where data/mnist is), its log in $logs.
test_binary() {
    local name=$1
    shift
    echo "== $name"
    if ! "$bin/$name" --test-threads 1 "$@" >"$logs/$name.txt" 2>&1; then
        failed=1
        echo "FAILED: $name"
    fi
    grep -E "^test result|panicked" "$logs/$name.txt" | tail -3
}

parity() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/nvidia-smi.txt" || true
    "$bin/kiln" info | tee "$logs/info.txt" || failed=1
    # cuda_kernels_compile first: it compiles every kernel file into the shared cache.
    for name in cuda_kernels_compile "${tensor_tests[@]}" "${crate_tests[@]}" "${root_tests[@]}"; do
        [ "$name" = cuda_kernels_compile ] && [ -f "$logs/$name.txt" ] && continue
        test_binary "$name"
    done
    echo "== kiln train (each GAN, 200 steps on cuda:0)"
    for model in gan dcgan cgan wgan-gp; do
        "$bin/kiln" train "$model" --device cuda --steps 200 --eval-samples 0 --quiet \
            --out "/tmp/kiln-gpu/runs/$model" >"$logs/train-$model.txt" 2>&1 || failed=1
        tail -2 "$logs/train-$model.txt"
    done
}

bench() {
    echo "== elementwise bench (CUDA part)"
    "$bin/elementwise" --bench cuda 2>&1 | tee "$logs/bench-elementwise.txt" | tail -8 || true
    echo "== gemm bench (CUDA part, against cuBLAS)"
    "$bin/gemm" --bench cuda 2>&1 | tee "$logs/bench-gemm.txt" | tail -40 || true
    echo "== train_step bench (CUDA group)"
    "$bin/train_step" --bench train_step_cuda 2>&1 | tee "$logs/bench-train-step.txt" \
        | grep -E "train_step_cuda|thrpt" || true
    echo "== PyTorch eager, the same steps"
    for args in "--model gan --batch 64" "--model gan --batch 256" "--model dcgan --batch 64"; do
        # shellcheck disable=SC2086
        python3 benches/reference/torch_gan.py $args --device cuda --steps 300 2>&1 \
            | tee -a "$logs/torch-gan.txt" || true
    done
}

sanitize() {
    if ! command -v compute-sanitizer >/dev/null; then
        echo "compute-sanitizer not found" && failed=1 && return
    fi
    local sanitizer=(compute-sanitizer --error-exitcode 9)
    echo "== compute-sanitizer memcheck: a short DCGAN and WGAN-GP run"
    for model in dcgan wgan-gp; do
        "${sanitizer[@]}" --tool memcheck "$bin/kiln" train "$model" --device cuda --steps 3 \
            --eval-samples 0 --quiet --out "/tmp/kiln-gpu/sanitized/$model" \
            >"$logs/sanitizer-memcheck-train-$model.txt" 2>&1 || failed=1
        grep -E "ERROR SUMMARY" "$logs/sanitizer-memcheck-train-$model.txt" | tail -1
    done
    for name in "${tensor_tests[@]}"; do
        [ "$name" = cuda_kernels_compile ] && continue
        echo "== compute-sanitizer memcheck $name"
        "${sanitizer[@]}" --tool memcheck "$bin/$name" --test-threads 1 \
            >"$logs/sanitizer-memcheck-$name.txt" 2>&1 || { failed=1; echo "FAILED"; }
        grep -E "ERROR SUMMARY" "$logs/sanitizer-memcheck-$name.txt" | tail -1
    done
    # The kernels that share memory between threads: reductions, GEMMs, batch norm.
    for name in cuda_reduce cuda_gemm cuda_norm; do
        echo "== compute-sanitizer racecheck $name"
        "${sanitizer[@]}" --tool racecheck "$bin/$name" --test-threads 1 \
            >"$logs/sanitizer-racecheck-$name.txt" 2>&1 || { failed=1; echo "FAILED"; }
        grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$logs/sanitizer-racecheck-$name.txt" | tail -1
    done
}

case "${1:-}" in
    build) build ;;
    run)
        setup
        case "${2:-all}" in
            parity) parity ;;
            bench) bench ;;
            sanitize) sanitize ;;
            all) parity; bench; sanitize ;;
            *) echo "usage: $0 run [parity|bench|sanitize|all]" >&2; exit 2 ;;
        esac
        exit $failed
        ;;
    *) echo "usage: $0 build|run [parity|bench|sanitize|all]" >&2; exit 2 ;;
esac
