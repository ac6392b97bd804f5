# kiln's everyday commands. Run `just` to list them.
# train, sample and bench recipes are added by the issues that build those commands.

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

# Print the version, platform, CPU features and devices kiln sees
info:
    cargo run --release -- info
