//! `mpirun -np 2 kiln train` (the `distributed` feature; CI installs Open MPI and runs this
//! with `cargo test --release --features distributed --test distributed`): two ranks taking
//! 32 images each of every batch track one process taking 64, rank 0 alone writes the run
//! folder, and a run resumed from the 2-rank checkpoint in one process goes on as one process
//! would have. crates/gan/tests/parallel.rs checks the same with ranks that are threads.
#![cfg(feature = "distributed")]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{command, error_line, path_str};

/// `kiln train MODEL` on the CPU with `extra`, logging every step; under `mpirun -np ranks`
/// when `ranks > 1`.
fn train(ranks: usize, model: &str, run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        model,
        "--device",
        "cpu",
        "--quiet",
        "--log-every",
        "1",
        "--eval-samples",
        "0",
        "--out",
        path_str(run),
    ];
    args.extend(extra);
    let output = match ranks {
        1 => command(&args, &[]).output().unwrap(),
        n => {
            let kiln = command(&args, &[]);
            let mut mpirun = Command::new("mpirun");
            mpirun
                .args(["--oversubscribe", "-np", &n.to_string()])
                // Containers and CI run as root, which Open MPI refuses unless told.
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .arg(kiln.get_program())
                .args(kiln.get_args());
            mpirun.output().unwrap()
        }
    };
    output
}

fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `field` of every metrics.jsonl line of `run` that has it, by step.
fn losses(run: &Path, field: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            Some((record["step"].as_u64()?, record[field].as_f64()?))
        })
        .collect()
}

/// The largest difference of `a`'s and `b`'s losses at the same steps, relative to 1 + |loss|,
/// over the steps `a` has.
fn largest_difference(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    a.iter()
        .map(|&(step, x)| {
            let &(_, y) = b.iter().find(|(s, _)| *s == step).expect("the same steps");
            (x - y).abs() / (1.0 + x.abs())
        })
        .fold(0.0, f64::max)
}

/// The window is short on purpose. Two ranks sum each batch's gradient as 32 + 32 where one
/// process sums 64 at once, so the two runs differ by float reordering, about 1e-7 of a loss.
/// That holds until some pre-activation lands within rounding of zero: its LeakyReLU then
/// takes the other slope in one run, that sample's gradient changes by 0.8x, and Adam carries
/// the step into the weights, after which the runs part chaotically (loss_g 3e-8 apart at
/// step 29 and 1.4e-6 at step 30 for seed 0 on AVX-512, 1e-2 by step 50). On a 2-core
/// AVX-512 Xeon, seeds 0 to 7 with the AVX-512 and the AVX2 kernels, the first step more than
/// 1e-6 apart came at 14 at the earliest and after step 20 in 14 of the 16 runs; over the
/// first 15 steps they stayed within 1.6e-6. Fifteen steps test the plumbing (the split,
/// the all-reduce, rank 0's writes, the checkpoint) where only reordering can show.
#[test]
fn two_ranks_match_one_process_and_resume_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let (single, pair) = (dir.path().join("single"), dir.path().join("pair"));
    succeeded(&train(1, "gan", &single, &["--steps", "15"]));
    let output = train(2, "gan", &pair, &["--steps", "10"]);
    succeeded(&output);
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("data-parallel over 2 ranks"), "{said}");
    // Rank 0 alone wrote the run folder: one line per step.
    assert_eq!(losses(&pair, "loss_d").len(), 10);
    for field in ["loss_d", "loss_g", "d_real", "d_fake"] {
        let moved = largest_difference(&losses(&pair, field), &losses(&single, field));
        assert!(moved < 1e-4, "{field} moved {moved:.2e} from one process's");
    }
    // The 2-rank checkpoint goes on in one process as the one-process run did.
    let checkpoint = pair.join("checkpoints/latest.safetensors");
    let resumed = train(
        1,
        "gan",
        &pair,
        &["--steps", "15", "--resume", path_str(&checkpoint)],
    );
    succeeded(&resumed);
    let after: Vec<(u64, f64)> = losses(&pair, "loss_d")
        .into_iter()
        .filter(|&(step, _)| step > 10)
        .collect();
    assert_eq!(after.len(), 5);
    let moved = largest_difference(&after, &losses(&single, "loss_d"));
    assert!(moved < 1e-4, "resumed loss_d moved {moved:.2e}");
}

#[test]
fn dcgan_with_synchronised_batch_norm_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (single, pair) = (dir.path().join("single"), dir.path().join("pair"));
    let settings = ["--steps", "12", "--batch-size", "32"];
    succeeded(&train(1, "dcgan", &single, &settings));
    let mut synchronised = settings.to_vec();
    synchronised.push("--sync-batch-norm");
    succeeded(&train(2, "dcgan", &pair, &synchronised));
    let (a, b) = (losses(&pair, "loss_d"), losses(&single, "loss_d"));
    assert!(largest_difference(&a[..5], &b) < 1e-3);
    assert!(largest_difference(&a, &b) < 2e-2);
}

#[test]
fn the_vae_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (single, pair) = (dir.path().join("single"), dir.path().join("pair"));
    succeeded(&train(1, "vae", &single, &["--steps", "20"]));
    succeeded(&train(2, "vae", &pair, &["--steps", "20"]));
    let moved = largest_difference(&losses(&pair, "loss"), &losses(&single, "loss"));
    assert!(moved < 1e-4, "loss moved {moved:.2e}");
}

#[test]
fn batches_too_small_to_share_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(2, "gan", &dir.path().join("x"), &["--batch-size", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 ranks cannot share batches of 1 images") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn one_process_with_sync_batch_norm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(1, "dcgan", &dir.path().join("x"), &["--sync-batch-norm"]);
    assert!(error_line(&output).contains("--sync-batch-norm is for data-parallel runs"));
}
