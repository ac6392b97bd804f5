//! `kiln train ddpm|pixelcnn` and their `kiln sample` / `kiln eval` run as a user runs them, on
//! the first images of the committed MNIST (`common::mnist_subset`), at test sizes
//! (`--channels`): the run folder with the per-epoch test
//! measure and eval.json's model-specific parts, the DDPM's samplers, a resumed run logging what
//! an uninterrupted one logs, and bad input as one line.

mod common;

use std::path::Path;
use std::process::Output;

use common::{error_line, kiln, metrics, mnist_subset, path_str};

/// A tiny U-Net: 8 channels at every level (one group norm group per channel).
const DDPM_CHANNELS: &str = "8,8,8";

/// Test images in the runs' data: each stop measures the model on all of them.
const TEST_IMAGES: usize = 500;

/// Trains on the MNIST subset in the run's parent folder (written there on first use).
fn train(model: &str, run: &Path, extra: &[&str]) -> Output {
    let data = data_dir(run.parent().unwrap());
    let mut args = vec!["train", model, "--quiet", "--out", path_str(run)];
    args.extend(["--data-dir", path_str(&data)]);
    args.extend(extra);
    kiln(&args, &[])
}

/// `dir/mnist`: 2000 training and [`TEST_IMAGES`] test images, written if not there yet.
fn data_dir(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("mnist");
    if data.is_dir() {
        data
    } else {
        mnist_subset(dir, 2000, TEST_IMAGES)
    }
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (width, height) of a PNG file.
fn png_size(path: &Path) -> (u32, u32) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let info = png::Decoder::new(file).read_info().unwrap().info().clone();
    (info.width, info.height)
}

/// The `images` tensor `kiln sample` wrote to a safetensors file: its shape and values.
fn sampled_images(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = file.tensor("images").unwrap();
    let values = images
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (images.shape().to_vec(), values)
}

#[test]
fn a_short_ddpm_training_leaves_the_run_folder_and_samples_with_both_samplers() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train(
        "ddpm",
        &run,
        &[
            "--steps",
            "4",
            "--batch-size",
            "16",
            "--channels",
            DDPM_CHANNELS,
            "--eval-samples",
            "20",
        ],
    );
    let text = stdout(&output);
    assert!(text.starts_with("done: 4 steps"), "{text}");
    for file in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step_0000004.png",
        "checkpoints/latest.safetensors",
        "eval.json",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let config = json(&run.join("config.json"));
    assert_eq!(config["model"]["channels"], serde_json::json!([8, 8, 8]));
    assert_eq!(config["model"]["timesteps"], 1000);
    assert_eq!(config["model"]["batch_size"], 16);
    let lines = metrics(&run);
    assert!(lines[0].starts_with("{\"step\":4,"), "{lines:?}");
    assert!(lines[0].contains("\"loss\":"), "{lines:?}");
    assert!(lines[1].contains("\"test_loss\":"), "{lines:?}");
    let eval = json(&run.join("eval.json"));
    assert_eq!(eval["samples"], 20);
    assert_eq!(eval["sampler"], "DDIM, 50 steps, eta 0");
    assert!(eval["frechet_distance"].as_f64().unwrap() > 0.0);

    let checkpoint = run.join("checkpoints/latest.safetensors");
    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            path_str(&checkpoint),
            "--quiet",
            "--out",
            path_str(out),
        ];
        args.extend(extra);
        kiln(&args, &[])
    };
    // DDIM with 5 steps to a grid of 9; the ancestral sampler's 1000 steps to safetensors.
    let grid = dir.path().join("ddim.png");
    let text = stdout(&sample(&grid, &["--n", "9", "--steps", "5"]));
    assert!(
        text.starts_with("wrote 9 samples (DDIM, 5 steps, eta 0) from the ddpm at step 4"),
        "{text}"
    );
    assert_eq!(png_size(&grid), (8 * 30 + 2, 2 * 30 + 2));
    let file = dir.path().join("ddpm.safetensors");
    stdout(&sample(
        &file,
        &["--n", "2", "--sampler", "ddpm", "--seed", "3"],
    ));
    let (shape, values) = sampled_images(&file);
    assert_eq!(shape, [2, 1, 28, 28]);
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The same seed draws the same images; η > 0 draws others.
    let again = dir.path().join("again.safetensors");
    stdout(&sample(
        &again,
        &["--n", "2", "--sampler", "ddpm", "--seed", "3"],
    ));
    assert_eq!(sampled_images(&again).1, values);
    let noisy = dir.path().join("noisy.safetensors");
    stdout(&sample(
        &noisy,
        &["--n", "2", "--steps", "20", "--eta", "1", "--seed", "3"],
    ));
    assert_ne!(sampled_images(&noisy).1, values);

    for (extra, expected) in [
        (
            &["--steps", "1001"][..],
            "error: --steps/--eta: DDIM takes 1 to 1000 steps (the model's T), not 1001",
        ),
        (
            &["--sampler", "ddpm", "--steps", "10"][..],
            "error: --sampler ddpm runs all 1000 steps with the posterior's noise: --steps and --eta are DDIM's",
        ),
        (
            &["--latents", "z.safetensors"][..],
            "error: --latents: the ddpm draws samples without latents; give --seed instead",
        ),
        (&["--n", "0"][..], "error: --n must be at least 1"),
    ] {
        let out = dir.path().join("never.png");
        assert_eq!(error_line(&sample(&out, extra)).trim_end(), expected);
    }
}

#[test]
fn a_resumed_ddpm_run_logs_what_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        "--batch-size",
        "8",
        "--channels",
        DDPM_CHANNELS,
        "--eval-samples",
        "0",
    ];
    let whole = dir.path().join("whole");
    stdout(&train(
        "ddpm",
        &whole,
        &[&["--steps", "4", "--log-every", "1"][..], &settings].concat(),
    ));
    let part = dir.path().join("part");
    stdout(&train(
        "ddpm",
        &part,
        &[&["--steps", "2", "--log-every", "1"][..], &settings].concat(),
    ));
    let checkpoint = part.join("checkpoints/latest.safetensors");
    let resumed = train(
        "ddpm",
        &part,
        &[
            "--steps",
            "4",
            "--log-every",
            "1",
            "--eval-samples",
            "0",
            "--resume",
            path_str(&checkpoint),
        ],
    );
    stdout(&resumed);
    // Training lines are the same; the resumed run also has the test line of its first stop.
    let training = |run: &Path| -> Vec<String> {
        metrics(run)
            .into_iter()
            .filter(|l| !l.contains("test_loss"))
            .collect()
    };
    assert_eq!(training(&part), training(&whole));
    let refused = train(
        "ddpm",
        &part,
        &[
            "--steps",
            "6",
            "--channels",
            "8,8,16",
            "--resume",
            path_str(&checkpoint),
        ],
    );
    assert!(error_line(&refused).contains("come from the checkpoint when resuming"));
}

#[test]
fn a_short_pixelcnn_training_measures_its_test_likelihood_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train(
        "pixelcnn",
        &run,
        &[
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--channels",
            "8",
            "--eval-samples",
            "20",
        ],
    );
    let text = stdout(&output);
    assert!(text.starts_with("done: 3 steps"), "{text}");
    let config = json(&run.join("config.json"));
    assert_eq!(config["model"]["hidden_channels"], 8);
    assert_eq!(config["model"]["likelihood"], "bernoulli");
    let lines = metrics(&run);
    assert!(
        lines[0].contains("\"nll\":") && lines[0].contains("\"bits_per_dim\":"),
        "{lines:?}"
    );
    assert!(lines[1].contains("\"test_nll\":"), "{lines:?}");
    let eval = json(&run.join("eval.json"));
    let test = &eval["pixelcnn"];
    assert_eq!(test["images"], TEST_IMAGES);
    let (nll, bits) = (
        test["nll"].as_f64().unwrap(),
        test["bits_per_dim"].as_f64().unwrap(),
    );
    // Three steps from random weights: still near 784·ln 2 ≈ 543 nats, and bits/dim is the
    // same figure in other units.
    assert!(nll > 100.0 && nll < 1000.0, "{nll}");
    assert!((bits - nll / (784.0 * std::f64::consts::LN_2)).abs() < 1e-9);
    assert!(eval.get("sampler").is_none());

    let checkpoint = run.join("checkpoints/latest.safetensors");
    let grid = dir.path().join("pixels.png");
    let text = stdout(&kiln(
        &[
            "sample",
            "--checkpoint",
            path_str(&checkpoint),
            "--n",
            "3",
            "--quiet",
            "--out",
            path_str(&grid),
        ],
        &[],
    ));
    assert!(
        text.starts_with("wrote 3 samples (pixel by pixel) from the pixelcnn"),
        "{text}"
    );
    assert_eq!(png_size(&grid), (3 * 30 + 2, 30 + 2));
    let table = stdout(&kiln(
        &[
            "eval",
            "--checkpoint",
            path_str(&checkpoint),
            "--n",
            "20",
            "--data-dir",
            path_str(&data_dir(dir.path())),
            "--quiet",
            "--json",
            path_str(&dir.path().join("e.json")),
        ],
        &[],
    ));
    assert!(table.contains("test NLL"), "{table}");
    let refused = kiln(
        &[
            "sample",
            "--checkpoint",
            path_str(&checkpoint),
            "--sampler",
            "ddim",
            "--out",
            path_str(&grid),
        ],
        &[],
    );
    assert_eq!(
        error_line(&refused).trim_end(),
        "error: --sampler, --steps and --eta choose how the DDPM samples; this checkpoint holds a pixelcnn"
    );
    let refused = kiln(
        &[
            "eval",
            "--checkpoint",
            path_str(&checkpoint),
            "--iw-samples",
            "5",
        ],
        &[],
    );
    assert!(error_line(&refused).contains("whose likelihood is exact"));
}

#[test]
fn settings_of_other_models_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("never");
    for (model, extra, expected) in [
        ("gan", &["--channels", "8"][..], "error: --channels is not a setting of gan"),
        ("ddpm", &["--channels", "8"][..], "error: --channels takes three numbers for the DDPM, e.g. 16,32,64"),
        ("pixelcnn", &["--channels", "8,8"][..], "error: --channels takes one number for the PixelCNN, e.g. 32"),
        ("vae", &["--likelihood", "categorical"][..], "error: vae: unknown variant `categorical`, expected `bernoulli` or `gaussian`"),
        ("ddpm", &["--beta", "2"][..], "error: --beta is not a setting of ddpm"),
        ("pixelcnn", &["--likelihood", "gaussian"][..], "error: pixelcnn: unknown variant `gaussian`, expected `bernoulli` or `categorical`"),
        ("ddpm", &["--channels", "8,8,12"][..], "error: DDPM config: every level's channels (8, 8, 12) must divide into the group norm's 8 groups"),
        ("pixelcnn", &["--channels", "7"][..], "error: PixelCNN config: the hidden channels must be an even number of at least 2"),
    ] {
        let output = train(model, &run, extra);
        let line = error_line(&output);
        assert!(line.starts_with(expected), "{model} {extra:?}: {line}");
    }
}
