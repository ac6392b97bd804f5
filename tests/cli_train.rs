//! `kiln train` and `kiln sample` run as a user runs them, on the committed MNIST: a short
//! training leaves the whole run folder; Ctrl-C saves a checkpoint and a resumed run then
//! logs exactly what an uninterrupted one logs; samples come out as PNG, IDX and safetensors,
//! reproducibly from a latents file; and bad input is one line on stderr and a failed exit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{command, error_line, kiln, last_error_line, metrics, path_str};

fn train(run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "gan",
        "--quiet",
        "--log-every",
        "1",
        "--eval-samples",
        "0",
        "--out",
        path_str(run),
    ];
    args.extend(extra);
    kiln(&args, &[])
}

#[test]
fn a_short_training_leaves_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = kiln(
        &[
            "train",
            "gan",
            "--quiet",
            "--steps",
            "40",
            "--eval-samples",
            "300",
            "--out",
            path_str(&run),
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with("done: 40 steps"), "{stdout}");
    for file in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step_0000040.png",
        "checkpoints/latest.safetensors",
        "eval.json",
        "eval/step_0000040.json",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"architecture\": \"gan\"") && config.contains("\"total_steps\": 40"));
    // The run ends with kiln-eval's scores of 300 samples.
    let eval = std::fs::read_to_string(run.join("eval.json")).unwrap();
    for field in [
        "\"samples\": 300",
        "frechet_distance",
        "classifier_score",
        "precision",
    ] {
        assert!(eval.contains(field), "{field}: {eval}");
    }
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("eval at epoch"), "{stderr}");
    let lines = metrics(&run);
    assert_eq!(lines.len(), 4, "steps 10, 20, 30, 40: {lines:?}");
    assert!(lines[3].starts_with("{\"step\":40,"), "{}", lines[3]);
    for field in ["loss_d", "loss_g", "d_real", "d_fake"] {
        assert!(lines[0].contains(field), "{field}: {}", lines[0]);
    }
}

/// Sends SIGINT (what Ctrl-C sends) to a training run once it has logged `after` steps.
fn interrupt_after(run: &Path, total: u64, after: usize) -> Output {
    let steps = total.to_string();
    let args = [
        "train",
        "gan",
        "--quiet",
        "--log-every",
        "1",
        "--steps",
        &steps,
        "--out",
        path_str(run),
    ];
    let child = command(&args, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |s| s.lines().count())
        < after
    {
        assert!(
            Instant::now() < deadline,
            "the run never logged {after} steps"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_resuming_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut");
    let total = 5000; // far more than are run: the interrupt comes first
    let output = interrupt_after(&cut, total, 20);
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("checkpoint saved to") && stderr.contains("--resume"),
        "{stderr}"
    );
    let stopped = metrics(&cut).len() as u64;
    assert!(stopped >= 20);

    // Resume to 15 steps past the interruption, and run the same steps without a break.
    let end = (stopped + 15).to_string();
    let checkpoint = cut.join("checkpoints/latest.safetensors");
    let resumed = kiln(
        &[
            "train",
            "gan",
            "--quiet",
            "--log-every",
            "1",
            "--steps",
            &end,
            "--eval-samples",
            "0",
            "--resume",
            path_str(&checkpoint),
        ],
        &[],
    );
    assert!(resumed.status.success(), "{resumed:?}");
    let whole = dir.path().join("whole");
    assert!(train(&whole, &["--steps", &end]).status.success());
    assert_eq!(
        metrics(&cut),
        metrics(&whole),
        "losses after a resume differ"
    );
    assert_eq!(metrics(&whole).len() as u64, stopped + 15);
}

#[test]
fn samples_come_out_as_png_idx_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(train(&run, &["--steps", "5"]).status.success());
    let checkpoint = run.join("checkpoints/latest.safetensors");
    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            path_str(&checkpoint),
            "--out",
            path_str(out),
        ];
        args.extend(extra);
        kiln(&args, &[])
    };
    let png = dir.path().join("grid.png");
    let output = sample(&png, &["--n", "16"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("wrote 16 samples from the gan at step 5"),
        "{stdout}"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (8 * 28 + 9 * 2, 2 * 28 + 3 * 2));

    let idx = dir.path().join("samples.idx");
    assert!(sample(&idx, &["--n", "10"]).status.success());
    let array = kiln_data::read_idx(&idx).unwrap();
    assert_eq!(array.dims(), &[10, 28, 28]);

    // Latents written by one call, fed to another: the same images.
    let first = dir.path().join("first.safetensors");
    assert!(sample(&first, &["--n", "6", "--seed", "9"])
        .status
        .success());
    let second = dir.path().join("second.safetensors");
    assert!(sample(&second, &["--latents", path_str(&first)])
        .status
        .success());
    let images = |path: &PathBuf| {
        let file = kiln_nn::checkpoint::Checkpoint::load(path).unwrap();
        file.tensor("images").unwrap().to_vec::<f32>().unwrap()
    };
    assert_eq!(images(&first), images(&second));
    assert_eq!(images(&first).len(), 6 * 784);

    let m = error_line(&sample(&png, &["--digit", "3"]));
    assert!(m.contains("--digit needs the conditional GAN"), "{m}");
    let m = error_line(&sample(&dir.path().join("x.jpg"), &[]));
    assert!(m.contains(".png, .idx or .safetensors"), "{m}");
}

#[test]
fn bad_input_is_one_line_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_arg = path_str(&run);

    let missing = dir.path().join("nowhere");
    let m = error_line(&kiln(
        &[
            "train",
            "gan",
            "--data-dir",
            path_str(&missing),
            "--out",
            run_arg,
        ],
        &[],
    ));
    assert!(m.contains("nowhere"), "{m}");

    // A truncated training-images file.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    for entry in std::fs::read_dir(&data).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "gz") {
            std::fs::copy(entry.path(), corrupt.join(entry.file_name())).unwrap();
        }
    }
    let images = corrupt.join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let m = error_line(&kiln(
        &[
            "train",
            "gan",
            "--data-dir",
            path_str(&corrupt),
            "--out",
            run_arg,
        ],
        &[],
    ));
    assert!(m.contains("train-images"), "{m}");

    let m = error_line(&kiln(
        &["train", "gan", "--device", "tpu", "--out", run_arg],
        &[],
    ));
    assert!(m.contains("--device tpu"), "{m}");
    let m = error_line(&kiln(
        &["train", "gan", "--device", "cuda:1000", "--out", run_arg],
        &[],
    ));
    assert!(m.to_lowercase().contains("cuda"), "{m}");

    // A checkpoint of another model.
    assert!(train(&run, &["--steps", "2"]).status.success());
    let checkpoint = run.join("checkpoints/latest.safetensors");
    let m = error_line(&kiln(
        &["train", "dcgan", "--resume", path_str(&checkpoint)],
        &[],
    ));
    assert!(m.contains("holds a gan model, not a dcgan"), "{m}");
    // A file that is not a checkpoint.
    let m = error_line(&kiln(
        &[
            "sample",
            "--checkpoint",
            path_str(&images),
            "--out",
            "x.png",
        ],
        &[],
    ));
    assert!(m.contains("train-images"), "{m}");
    // An existing run is not overwritten without --resume.
    let m = error_line(&train(&run, &["--steps", "2"]));
    assert!(m.contains("already holds a run"), "{m}");
    // Resuming past the end.
    let m = error_line(&kiln(
        &[
            "train",
            "gan",
            "--steps",
            "2",
            "--resume",
            path_str(&checkpoint),
        ],
        &[],
    ));
    assert!(m.contains("at step 2"), "{m}");
}

#[test]
fn a_checkpoint_with_nan_weights_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(train(&run, &["--steps", "3"]).status.success());
    // Poison the generator's first weight with NaN, as a diverging run would.
    let path = run.join("checkpoints/latest.safetensors");
    let mut checkpoint = kiln_nn::checkpoint::Checkpoint::load(&path).unwrap();
    let weight = checkpoint
        .tensor("generator.main.0.weight")
        .unwrap()
        .clone();
    let poisoned = weight.affine(f64::NAN, 0.0).unwrap();
    checkpoint
        .insert("generator.main.0.weight", &poisoned)
        .unwrap();
    checkpoint.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    let output = kiln(
        &[
            "train",
            "gan",
            "--quiet",
            "--steps",
            "10",
            "--resume",
            path_str(&path),
        ],
        &[],
    );
    // Issue 24, finding 4: this run used to take a step, stop on its NaN loss and call the
    // poisoned file "the last good checkpoint"; now the file is refused before any work.
    let line = error_line(&output);
    assert!(
        line.contains("`generator.main.0.weight` holds NaN or infinite values")
            && line.contains("cannot continue from it"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the checkpoint was overwritten"
    );
}

/// A loss that becomes NaN stops the run with one line naming the step, the loss and what is
/// left of the run, and writes no checkpoint. (A GAN at learning rate 1e39 — infinite in the
/// step's f32 — makes the discriminator's update infinite, so the generator's loss, measured
/// through the updated discriminator in the same step, is NaN.)
#[test]
fn a_nan_loss_stops_the_run_and_says_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train(&run, &["--steps", "5", "--lr", "1e39"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert_eq!(
        last,
        "error: step 1 (epoch 1): loss_g is NaN; training stopped and no checkpoint had been saved yet"
    );
    assert!(!run.join("checkpoints/latest.safetensors").exists());
}

/// Issue 24, finding 4: the NaN guard looked only at the loss, which is measured before the
/// update, so an update that made the weights non-finite was saved as the run's checkpoint.
#[test]
fn an_update_that_makes_the_weights_non_finite_is_not_saved() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Learning rate 1e39 is finite as the config's f64 and infinite as the step's f32: the
    // VAE's first update makes its weights infinite while the step's loss (measured before the
    // update) is finite. (A GAN's generator loss, measured after the discriminator's update,
    // would catch it.)
    let output = kiln(
        &[
            "train",
            "vae",
            "--quiet",
            "--steps",
            "1",
            "--lr",
            "1e39",
            "--eval-samples",
            "0",
            "--out",
            path_str(&run),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let line = stderr.lines().last().unwrap();
    assert!(
        line.starts_with("error: step 1: `model.")
            && line.contains("holds NaN or infinite values after the update")
            && line.ends_with("no checkpoint had been saved yet"),
        "{line}"
    );
    let path = run.join("checkpoints/latest.safetensors");
    assert!(!path.exists(), "a non-finite checkpoint was written");
}

#[test]
fn a_resumed_run_keeps_the_dataset_it_trained_on() {
    // MNIST images given as Fashion-MNIST (which may not be installed): the loop takes
    // --dataset and --data-dir at their word.
    let dir = tempfile::tempdir().unwrap();
    let fashion = common::mnist_subset(dir.path(), 256, 64);
    let run = dir.path().join("run");
    let data = [
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        path_str(&fashion),
    ];
    assert!(train(&run, &[&["--steps", "2"][..], &data].concat())
        .status
        .success());
    let checkpoint = run.join("checkpoints/latest.safetensors");
    // Resumed without --dataset: on Fashion-MNIST still, as the run folder and checkpoint say.
    let resumed = kiln(
        &[
            "train",
            "gan",
            "--quiet",
            "--eval-samples",
            "0",
            "--steps",
            "4",
            "--data-dir",
            path_str(&fashion),
            "--resume",
            path_str(&checkpoint),
        ],
        &[],
    );
    assert!(resumed.status.success(), "{resumed:?}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(
        config.contains("\"dataset\": \"fashion-mnist\""),
        "{config}"
    );
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("on fashion-mnist"), "{stderr}");
    // Resumed with another --dataset: refused, naming both.
    let m = error_line(&kiln(
        &[
            "train",
            "gan",
            "--steps",
            "6",
            "--dataset",
            "mnist",
            "--resume",
            path_str(&checkpoint),
        ],
        &[],
    ));
    assert!(
        m.contains("--dataset mnist") && m.contains("trained on fashion-mnist"),
        "{m}"
    );
}

/// Issue 24: a checkpoint every N steps besides epoch ends, and the one it replaces kept as
/// `previous.safetensors`.
#[test]
fn checkpoints_come_every_n_steps_and_the_previous_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(train(&run, &["--steps", "7", "--checkpoint-every", "3"])
        .status
        .success());
    let step = |name: &str| {
        let path = run.join("checkpoints").join(name);
        kiln_nn::checkpoint::Checkpoint::load(path)
            .unwrap()
            .step()
            .unwrap()
    };
    // Saved at 3 and 6 (every 3 steps) and 7 (the last): 6 is the previous of 7.
    assert_eq!(
        (step("latest.safetensors"), step("previous.safetensors")),
        (7, 6)
    );
}

/// Issue 24, fault injection: `kiln train` killed with SIGKILL at arbitrary moments — some of
/// them inside a checkpoint write, held open by a test hook — always leaves a run folder that
/// resumes: `latest` (and `previous`) load, metrics.jsonl reads, and the next run continues
/// from the checkpoint; no temporary files pile up.
#[test]
fn a_run_killed_at_any_moment_resumes_from_a_checkpoint_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let latest = run.join("checkpoints/latest.safetensors");
    let previous = run.join("checkpoints/previous.safetensors");
    let mut state = 0x2545_F491_4F6C_DD1Du64; // xorshift: arbitrary but repeatable delays
    let mut last_step = 0;
    for round in 0..20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = std::time::Duration::from_millis(400 + state % 1100);
        let mut args = vec![
            "train",
            "gan",
            "--quiet",
            "--log-every",
            "1",
            "--eval-samples",
            "0",
            "--steps",
            "100000",
            "--checkpoint-every",
            "2",
            "--out",
            path_str(&run),
        ];
        if latest.exists() {
            args.extend(["--resume", path_str(&latest)]);
        }
        let mut command = common::command(&args, &[]);
        if round % 2 == 1 {
            // Hold every write open between its temporary file and the rename.
            command.env("KILN_FAULT_INJECTION_WRITE_PAUSE_MS", "40");
        }
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let early = child.try_wait().unwrap();
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            early.is_none(),
            "round {round}: the run ended before the kill: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if !latest.exists() {
            continue; // killed before its first checkpoint
        }
        let checkpoint = kiln_nn::checkpoint::Checkpoint::load(&latest)
            .unwrap_or_else(|e| panic!("round {round}: latest does not load: {e}"));
        let step = checkpoint.step().unwrap();
        assert!(
            step >= last_step,
            "round {round}: step {step} < {last_step}"
        );
        last_step = step;
        if previous.exists() {
            kiln_nn::checkpoint::Checkpoint::load(&previous)
                .unwrap_or_else(|e| panic!("round {round}: previous does not load: {e}"));
        }
        kiln_run::MetricsLog::read_series(run.join("metrics.jsonl"), &["loss_d"])
            .unwrap_or_else(|e| panic!("round {round}: metrics.jsonl: {e}"));
    }
    assert!(last_step > 0, "no round got as far as a checkpoint");
    // The run continues from where the last kill left it, to a few steps more, and ends well.
    let target = (last_step + 3).to_string();
    let resumed = train(&run, &["--steps", &target, "--resume", path_str(&latest)]);
    assert!(resumed.status.success(), "{resumed:?}");
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp") || name.ends_with(".linking"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Issue 24, fault injection: a full disk (a write hook that fails as ENOSPC after the first
/// few files) stops the run with one line naming the file, and the checkpoint written before
/// it stays whole and resumable.
#[test]
fn a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "train",
        "gan",
        "--quiet",
        "--eval-samples",
        "0",
        "--steps",
        "50",
        "--checkpoint-every",
        "2",
        "--out",
        path_str(&run),
    ];
    // config.json, then checkpoints at steps 2 and 4; the fourth file fails.
    let output = common::command(&args, &[])
        .env("KILN_FAULT_INJECTION_DISK_FULL_AFTER", "3")
        .output()
        .unwrap();
    let last = last_error_line(&output);
    assert!(last.contains("No space left on device"), "{last}");
    let latest = run.join("checkpoints/latest.safetensors");
    let checkpoint = kiln_nn::checkpoint::Checkpoint::load(&latest).unwrap();
    assert_eq!(checkpoint.step().unwrap(), 4);
    let resumed = train(&run, &["--steps", "6", "--resume", path_str(&latest)]);
    assert!(resumed.status.success(), "{resumed:?}");
}

/// Starts a `kiln train gan` into `run` that would go on for 100,000 steps, writing a
/// checkpoint every 2, and returns it (stderr piped) once its first checkpoint is there, with
/// that checkpoint's path.
fn start_endless_run(run: &Path) -> (std::process::Child, PathBuf) {
    let args = [
        "train",
        "gan",
        "--quiet",
        "--eval-samples",
        "0",
        "--steps",
        "100000",
        "--checkpoint-every",
        "2",
        "--out",
        path_str(run),
    ];
    let child = command(&args, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let latest = run.join("checkpoints/latest.safetensors");
    let started = Instant::now();
    while !latest.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, latest)
}

/// Issue 24, fault injection: the run folder deleted while the run writes into it: one line,
/// a failed exit, no panic.
#[test]
fn a_vanished_run_folder_stops_the_run_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (child, _) = start_endless_run(&run);
    std::fs::remove_dir_all(&run).unwrap();
    last_error_line(&child.wait_with_output().unwrap());
}

/// Issue 24, fault injection: a training checkpoint cut at every 4 KiB, and with bytes flipped
/// across its header and its payload, is refused with one line naming the file by the loader
/// that `--resume`, `kiln sample` and `kiln eval` share (a flip in the checksum's own key, the
/// one kind that loads, leaves every tensor as saved); and through the binary: one line, a
/// failed exit, no panic.
#[test]
fn a_truncated_or_flipped_checkpoint_is_one_line_never_a_panic() {
    use kiln_nn::checkpoint::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(train(&run, &["--steps", "2"]).status.success());
    let good_path = run.join("checkpoints/latest.safetensors");
    let bytes = std::fs::read(&good_path).unwrap();
    let good = Checkpoint::from_bytes(&bytes, "good").unwrap();
    let (header_len, _) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let refused = |damaged: &[u8], what: &str| match Checkpoint::from_bytes(damaged, "bad.st") {
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("bad.st") && !message.contains('\n'),
                "{what}: {message}"
            );
            true
        }
        Ok(loaded) => {
            for (name, tensor) in good.tensors() {
                let same = loaded.tensor(name).unwrap().to_vec::<f32>().ok();
                assert_eq!(same, tensor.to_vec::<f32>().ok(), "{what}: {name}");
            }
            false
        }
    };
    for cut in (0..bytes.len()).step_by(4096) {
        assert!(refused(&bytes[..cut], &format!("cut at {cut}")));
    }
    let mut flipped = bytes.clone();
    let mut flip = |at: usize, mask: u8| {
        flipped[at] ^= mask;
        let verdict = refused(&flipped, &format!("byte {at} ^ {mask:#x}"));
        flipped[at] ^= mask;
        verdict
    };
    let payload = 8 + header_len..bytes.len();
    let step = payload.len() / 40;
    for at in payload.clone().step_by(step).chain([bytes.len() - 1]) {
        assert!(flip(at, 0x01), "a payload flip at {at} loaded");
    }
    let mut loaded = 0;
    for at in (0..8 + header_len).step_by(97) {
        for mask in [0x01, 0x02, 0x10, 0x40] {
            loaded += usize::from(!flip(at, mask));
        }
    }
    assert!(loaded <= 4, "{loaded} header flips loaded");

    // Through the binary: a cut, a payload flip and a header flip, resumed and sampled from.
    let damaged = dir.path().join("damaged.safetensors");
    let config_digit = 8 + bytes[8..8 + header_len]
        .windows(8)
        .position(|w| w == b"\\\"lr\\\":0")
        .unwrap_or(header_len / 2);
    for (what, contents) in [
        ("cut", bytes[..bytes.len() / 2].to_vec()),
        ("payload flip", {
            let mut b = bytes.clone();
            b[bytes.len() / 3] ^= 0x08;
            b
        }),
        ("header flip", {
            let mut b = bytes.clone();
            b[config_digit + 7] ^= 0x01;
            b
        }),
    ] {
        std::fs::write(&damaged, contents).unwrap();
        let grid = dir.path().join("grid.png");
        let resume = ["train", "gan", "--quiet", "--steps", "4", "--resume"];
        for args in [
            &[
                "sample",
                "--checkpoint",
                path_str(&damaged),
                "--out",
                path_str(&grid),
            ][..],
            &[&resume[..], &[path_str(&damaged)]].concat(),
        ] {
            let line = error_line(&kiln(args, &[]));
            assert!(line.contains("damaged.safetensors"), "{what}: {line}");
        }
    }
}

/// Issue 24, fault injection: the run folder made read-only while the run writes into it (a
/// read-only bind mount over it when the test runs as root, whom permissions do not stop;
/// its permissions otherwise): one line, a failed exit, no panic, and the checkpoint before
/// it whole and resumable once the folder is writable again.
#[cfg(target_os = "linux")]
#[test]
fn a_read_only_run_folder_stops_the_run_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (mut child, latest) = start_endless_run(&run);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let folders = [run.clone(), run.join("checkpoints")];
    let mount = |args: &[&str]| Command::new("mount").args(args).status();
    let mounted = root && {
        // The run folder a read-only view of itself, its subfolders with it: creating or
        // renaming a file in them fails with EROFS, for root too.
        let run = path_str(&run);
        mount(&["--bind", run, run]).is_ok_and(|s| s.success())
            && mount(&["-o", "remount,ro,bind", run]).is_ok_and(|s| s.success())
    };
    if !root {
        for folder in &folders {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    }
    if root && !mounted {
        child.kill().unwrap();
        let _ = Command::new("umount").arg(&run).status();
        panic!("running as root without the right to mount: cannot make the folder read-only");
    }
    let output = child.wait_with_output().unwrap();
    if mounted {
        assert!(Command::new("umount").arg(&run).status().unwrap().success());
    }
    for folder in &folders {
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let last = last_error_line(&output);
    assert!(
        last.contains("Read-only file system") || last.contains("Permission denied"),
        "{last}"
    );
    let checkpoint = kiln_nn::checkpoint::Checkpoint::load(&latest).unwrap();
    let step = checkpoint.step().unwrap();
    let end = (step + 2).to_string();
    let resumed = train(&run, &["--steps", &end, "--resume", path_str(&latest)]);
    assert!(resumed.status.success(), "{resumed:?}");
}
