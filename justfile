# kiln's everyday commands. Run `just` to list them.

# List the recipes
default:
    @just --list

# Build the kiln binary (release)
build:
    cargo build --release

# Run every test in the workspace (release build, as CI runs them)
test:
    cargo test --workspace --release

# Check formatting and run clippy with warnings as errors
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the whole workspace
fmt:
    cargo fmt --all

# Run what CI runs: toolchain versions, lint, then the timed tests
ci:
    bash .ci/run

# Train data-parallel over N MPI ranks on this machine (needs libopenmpi-dev, openmpi-bin and
# libclang-dev), e.g. `just train-mpi 2 dcgan --sync-batch-norm`
train-mpi ranks="2" model="gan" *flags:
    cargo build --release --features distributed
    mpirun --oversubscribe -np {{ranks}} target/release/kiln train {{model}} {{flags}}

# The all-reduce bandwidth MPI reaches between N ranks of kiln on this machine
bench-allreduce ranks="2":
    cargo build --release --features distributed --example allreduce
    mpirun --oversubscribe -np {{ranks}} target/release/examples/allreduce

# Train a GAN (gan, dcgan, cgan, wgan-gp), a VAE (vae, conv-vae), the DDPM (ddpm) or the
# PixelCNN (pixelcnn) on MNIST on the CPU for its default epochs (20; dcgan 5; the VAEs 10;
# ddpm 2; pixelcnn 1), or pass e.g. `just train gan --epochs 1`; the run folder is runs/MODEL
train model="gan" *flags="":
    cargo run --release -- train {{model}} --device cpu {{flags}}

# The same on the GPU (cuda:0; without a usable GPU it says why in one line and exits)
train-cuda model="gan" *flags="":
    cargo run --release -- train {{model}} --device cuda {{flags}}

# Draw a grid of 64 samples from a run's latest checkpoint (a DDPM: add e.g. `--sampler ddpm`
# or `--steps 100`)
sample run="runs/gan" out="samples.png" *flags="":
    cargo run --release -- sample --checkpoint {{run}}/checkpoints/latest.safetensors --out {{out}} {{flags}}

# A VAE run's reconstructions and latent walks, as PNGs in its folder
vae-views run="runs/vae":
    cargo run --release -- reconstruct --checkpoint {{run}}/checkpoints/latest.safetensors --out {{run}}/reconstructions.png
    cargo run --release -- interpolate --checkpoint {{run}}/checkpoints/latest.safetensors --out {{run}}/interpolation.png

# Train a VAE with a 2-D latent and draw its decoder over the latent plane (runs/vae-2d)
manifold epochs="10":
    cargo run --release -- train vae --latent-dim 2 --epochs {{epochs}} --out runs/vae-2d
    cargo run --release -- manifold --checkpoint runs/vae-2d/checkpoints/latest.safetensors --out runs/vae-2d/manifold.png

# PyTorch's VAE example on the committed MNIST, to compare with `just train vae` (needs torch)
torch-vae:
    ${PYTHON:-python3} benches/reference/torch_vae.py

# PyTorch's training steps of kiln's DDPM U-Net and PixelCNN, images/s beside `just bench`'s
torch-steps:
    ${PYTHON:-python3} benches/reference/torch_ddpm_pixelcnn.py --model ddpm
    ${PYTHON:-python3} benches/reference/torch_ddpm_pixelcnn.py --model pixelcnn

# Score generated images: a run's latest checkpoint (10,000 samples; the DDPM 2,000, the
# PixelCNN 1,000) against the test set
eval run="runs/gan":
    cargo run --release -- eval --checkpoint {{run}}/checkpoints/latest.safetensors

# The README's reference scores: MNIST training images, uniform noise and blank images
eval-reference out="target/reference":
    cargo run --release --example reference_sets -- {{out}}
    cargo run --release -- eval --samples data/mnist/train-images-idx3-ubyte.gz --n 10000 --json {{out}}/train.eval.json
    cargo run --release -- eval --samples {{out}}/noise.idx --json {{out}}/noise.eval.json
    cargo run --release -- eval --samples {{out}}/blank.idx --json {{out}}/blank.eval.json

# Retrain kiln-eval's classifier for mnist or fashion-mnist (overwrites data/classifiers/DATASET.safetensors)
train-classifier dataset="mnist":
    cargo run --release -- train classifier --dataset {{dataset}}

# Kernel throughput: GEMM GFLOP/s (square and GAN shapes, 1 and all threads), the models'
# convolutions (fwd, dx, dw) in GFLOP/s, elementwise GB/s,
# and every model's training step (images/s); with a GPU, also their CUDA tables (GEMM against
# cuBLAS, the GANs' steps on cuda:0)
bench:
    cargo bench --bench gemm
    cargo bench --bench conv
    cargo bench --bench elementwise
    cargo bench --bench train_step

# PyTorch's CPU matmul and convolutions on the GEMM and conv benches' cases, side by side with
# the last `just bench`
# (needs `pip install torch`; kiln's own tests never do)
bench-torch:
    python3 benches/reference/torch_gemm.py --kiln target/criterion
    python3 benches/reference/torch_conv.py --kiln target/criterion

# Every model's training step in kiln and in PyTorch eager, alternately in fresh processes on
# this machine, 1 thread and all: images/s, the ratio, page faults per step and peak RSS; add
# `--avx2` for both sides as an AVX2-only machine runs them (kiln with KILN_CPU_KERNEL, PyTorch
# held to AVX2 by its own variables), `--epoch` for a whole `kiln train gan
# --epochs 1` against the same PyTorch loop, `--models gan,dcgan` for fewer (needs torch)
bench-vs-torch *flags="":
    cargo build --release --example step_rate --bin kiln
    ${PYTHON:-python3} benches/reference/vs_torch.py {{flags}}

# Two builds of the step_rate example timed in turn, order swapped every pair: each side's
# images/s, the median ratio of the pairs and a sign test, to tell a change from the machine's
# noise (`cp target/release/examples/step_rate /tmp/old` before the change, build after it;
# `--models dcgan,ddpm --threads 1,2 --pairs 12 --avx2`); with `--ops "conv-dw 64 64 14 128 4 2
# 1;matmul 64 1024 784 0 1"` OLD and NEW are op_time builds timing one primitive each
bench-ab old new *flags="":
    ${PYTHON:-python3} benches/ab.py {{old}} {{new}} {{flags}}

# One CPU primitive (conv-fwd, conv-dx, conv-dw, matmul) timed in a process of its own: the
# fastest and the median of --runs runs, and GFLOP/s (`just op-time conv-dw 64 64 14 128 4 2 1`)
op-time *args:
    cargo run --release --example op_time -- {{args}}

# Print the version, platform, CPU features and devices kiln sees
info:
    cargo run --release -- info

# Write a PNG grid of a dataset's first 64 training images (mnist or fashion-mnist)
data-show dataset="mnist" out="digits.png":
    cargo run --release -- data show --dataset {{dataset}} --out {{out}}

# Print a dataset's image counts and label histograms
data-info dataset="mnist":
    cargo run --release -- data info --dataset {{dataset}}

# Fuzz the IDX reader with libFuzzer for `seconds` (cargo-fuzz on the stable toolchain)
fuzz seconds="600":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    mkdir -p fuzz/corpus/idx_reader
    RUSTC_BOOTSTRAP=1 cargo fuzz run idx_reader fuzz/corpus/idx_reader fuzz/seeds -- -max_total_time={{seconds}} -print_final_stats=1

# The soak (not in CI): `kiln train gan` for `minutes` beside the same run interrupted with
# Ctrl-C every few minutes and resumed; RSS per epoch, metrics and evaluations compared
# (summary in runs/soak/summary.txt)
soak minutes="60":
    cargo build --release
    python3 scripts/soak.py --minutes {{minutes}} --out runs/soak

# Fuzz checkpoint loading (safetensors header, tensors, kiln's metadata) for `seconds`
fuzz-checkpoint seconds="600":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    mkdir -p fuzz/corpus/checkpoint_loader
    RUSTC_BOOTSTRAP=1 cargo fuzz run checkpoint_loader fuzz/corpus/checkpoint_loader fuzz/seeds-checkpoint -- -max_total_time={{seconds}} -print_final_stats=1

# Save kiln's GAN and VAE checkpoints and check that PyTorch loads them (strict) and computes
# the same outputs (needs `pip install torch safetensors`; set PYTHON to pick the interpreter)
interop out="target/interop":
    cargo run --release --example interop -- {{out}}
    ${PYTHON:-python3} scripts/interop.py {{out}}

# Remake the PyTorch parity fixtures in tests/fixtures (needs torch and safetensors)
fixtures:
    ${PYTHON:-python3} tests/fixtures/make_fixtures.py

# Build kiln, the CUDA test binaries and the benches, stripped and packed into target/gpu/, for
# a GPU machine without Rust; there, `scripts/gpu-check.sh run` runs the parity, train, bench
# and sanitize stages in about 7 minutes (`run parity:cuda_gemm` reruns one binary) and writes
# summary.txt and the logs to $OUT
gpu-build:
    bash scripts/gpu-check.sh build
