//! `kiln train vae|conv-vae` and the VAE views (`kiln reconstruct`, `interpolate`,
//! `manifold`, `sample`, `eval`) run as a user runs them, on the committed MNIST: the run
//! folder with its per-epoch test ELBO, the grids' layouts, the VAE's settings recorded, a
//! resumed run logging what an uninterrupted one logs, and bad input as one line.

mod common;

use std::path::Path;
use std::process::Output;

use common::{error_line, kiln, metrics, path_str};

fn train(model: &str, run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        model,
        "--quiet",
        "--eval-samples",
        "0",
        "--out",
        path_str(run),
    ];
    args.extend(extra);
    kiln(&args, &[])
}

/// (width, height) of a PNG file.
fn png_size(path: &Path) -> (u32, u32) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let info = png::Decoder::new(file).read_info().unwrap().info().clone();
    (info.width, info.height)
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A grid of `rows` x `columns` 28x28 tiles with 2 pixels between and around them.
fn grid(columns: u32, rows: u32) -> (u32, u32) {
    (columns * 30 + 2, rows * 30 + 2)
}

#[test]
fn a_short_vae_training_leaves_the_run_folder_and_its_views_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = kiln(
        &[
            "train",
            "vae",
            "--quiet",
            "--steps",
            "60",
            "--log-every",
            "20",
            "--eval-samples",
            "300",
            "--out",
            path_str(&run),
        ],
        &[],
    );
    let text = stdout(&output);
    assert!(text.starts_with("done: 60 steps"), "{text}");
    for file in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step_0000060.png",
        "checkpoints/latest.safetensors",
        "eval.json",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    for field in [
        "\"architecture\": \"vae\"",
        "\"latent_dim\": 20",
        "\"likelihood\": \"bernoulli\"",
        "\"batch_size\": 128",
    ] {
        assert!(config.contains(field), "{field}: {config}");
    }
    // Steps 20, 40, 60, then the test ELBO at the run's end.
    let lines = metrics(&run);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for field in [
        "\"neg_elbo\"",
        "\"reconstruction\"",
        "\"kl\"",
        "\"kl_weight\":1.0",
    ] {
        assert!(lines[0].contains(field), "{field}: {}", lines[0]);
    }
    assert!(
        lines[3].starts_with("{\"step\":60,") && lines[3].contains("\"test_neg_elbo\""),
        "{}",
        lines[3]
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    // 60 of the default 10 epochs' 4,690 steps: the test measure takes the first
    // 1,000 test images (its floor) and says so.
    assert!(
        stderr.contains("uses the first 1000 of the 10000 test images")
            && stderr.contains("test -ELBO")
            && stderr.contains("over 1000 images"),
        "{stderr}"
    );
    // eval.json: the samples' scores and the VAE's own.
    let eval = std::fs::read_to_string(run.join("eval.json")).unwrap();
    for field in [
        "\"samples\": 300",
        "frechet_distance",
        "\"vae\"",
        "\"neg_elbo\"",
        "\"ssim\"",
        "\"psnr\"",
    ] {
        assert!(eval.contains(field), "{field}: {eval}");
    }

    let checkpoint = run.join("checkpoints/latest.safetensors");
    let checkpoint = path_str(&checkpoint);
    let out = |name: &str| dir.path().join(name);
    // 16 test images: two pairs of rows, originals above reconstructions.
    let reconstructions = out("reconstructions.png");
    let text = stdout(&kiln(
        &[
            "reconstruct",
            "--checkpoint",
            checkpoint,
            "--n",
            "16",
            "--out",
            path_str(&reconstructions),
        ],
        &[],
    ));
    assert!(text.contains("MSE") && text.contains("SSIM"), "{text}");
    assert_eq!(png_size(&reconstructions), grid(8, 4));
    // 8 walks of 10 (test 0 → 1, 1 → 2, ..), and one of 5 between chosen test images.
    let walks = out("walks.png");
    let text = stdout(&kiln(
        &[
            "interpolate",
            "--checkpoint",
            checkpoint,
            "--out",
            path_str(&walks),
        ],
        &[],
    ));
    assert!(text.starts_with("wrote 8 walks of 10 steps"), "{text}");
    assert_eq!(png_size(&walks), grid(10, 8));
    let walk = out("walk.png");
    let text = stdout(&kiln(
        &[
            "interpolate",
            "--checkpoint",
            checkpoint,
            "--from",
            "0",
            "--to",
            "1",
            "--steps",
            "5",
            "--out",
            path_str(&walk),
        ],
        &[],
    ));
    assert!(
        text.contains("1 walk of 5 steps") && text.contains("0 (7) → 1 (2)"),
        "{text}"
    );
    assert_eq!(png_size(&walk), grid(5, 1));
    // Samples from the prior, as the GANs' are written.
    let samples = out("samples.idx");
    let text = stdout(&kiln(
        &[
            "sample",
            "--checkpoint",
            checkpoint,
            "--n",
            "12",
            "--out",
            path_str(&samples),
        ],
        &[],
    ));
    assert!(
        text.starts_with("wrote 12 samples from the vae at step 60"),
        "{text}"
    );
    assert_eq!(kiln_data::read_idx(&samples).unwrap().dims(), &[12, 28, 28]);

    // The importance-weighted likelihood, on a few images, lies below the ELBO's bound.
    let json = out("iw.json");
    stdout(&kiln(
        &[
            "eval",
            "--checkpoint",
            checkpoint,
            "--n",
            "200",
            "--iw-samples",
            "20",
            "--iw-images",
            "50",
            "--json",
            path_str(&json),
        ],
        &[],
    ));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let vae = &report["vae"];
    let (nll, elbo) = (
        vae["importance_weighted"]["nll"].as_f64().unwrap(),
        vae["test"]["neg_elbo"].as_f64().unwrap(),
    );
    assert_eq!(vae["importance_weighted"]["images"], 50);
    assert!(nll < elbo + 5.0 && nll > elbo - 30.0, "{nll} vs {elbo}");

    // Views a 20-D latent VAE cannot give, and those a GAN cannot.
    let m = error_line(&kiln(
        &[
            "manifold",
            "--checkpoint",
            checkpoint,
            "--out",
            path_str(&out("m.png")),
        ],
        &[],
    ));
    assert!(
        m.contains("needs a 2-D latent") && m.contains("has 20"),
        "{m}"
    );
    let m = error_line(&kiln(
        &[
            "sample",
            "--checkpoint",
            checkpoint,
            "--digit",
            "3",
            "--out",
            path_str(&out("s.png")),
        ],
        &[],
    ));
    assert!(m.contains("--digit needs the conditional GAN"), "{m}");
}

#[test]
fn the_vae_settings_reach_the_run_and_a_2d_latent_gives_a_manifold() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = stdout(&train(
        "conv-vae",
        &run,
        &[
            "--steps",
            "20",
            "--log-every",
            "1",
            "--batch-size",
            "32",
            "--latent-dim",
            "2",
            "--likelihood",
            "gaussian",
            "--beta",
            "2",
            "--kl-warmup-steps",
            "10",
        ],
    ));
    assert!(text.starts_with("done: 20 steps"), "{text}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    for field in [
        "\"architecture\": \"conv-vae\"",
        "\"latent_dim\": 2",
        "\"likelihood\": \"gaussian\"",
        "\"beta\": 2.0",
        "\"kl_warmup_steps\": 10",
        "\"batch_size\": 32",
    ] {
        assert!(config.contains(field), "{field}: {config}");
    }
    // The KL weight ramps to β over the first 10 steps: 0.2 at step 1, 2 from step 10 on.
    let lines = metrics(&run);
    assert!(lines[0].contains("\"kl_weight\":0.2"), "{}", lines[0]);
    assert!(lines[19].contains("\"kl_weight\":2.0"), "{}", lines[19]);

    let manifold = dir.path().join("manifold.png");
    let checkpoint = run.join("checkpoints/latest.safetensors");
    let text = stdout(&kiln(
        &[
            "manifold",
            "--checkpoint",
            path_str(&checkpoint),
            "--size",
            "12",
            "--out",
            path_str(&manifold),
        ],
        &[],
    ));
    assert!(text.contains("12 x 12 grid"), "{text}");
    // No padding: the tiles meet, as in Kingma & Welling's figure.
    assert_eq!(png_size(&manifold), (12 * 28, 12 * 28));
}

#[test]
fn a_resumed_vae_run_logs_what_an_uninterrupted_one_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut");
    let common = ["--log-every", "1", "--batch-size", "64"];
    assert!(
        train("vae", &cut, &[&common[..], &["--steps", "30"]].concat())
            .status
            .success()
    );
    let checkpoint = cut.join("checkpoints/latest.safetensors");
    let resumed = kiln(
        &[
            "train",
            "vae",
            "--quiet",
            "--log-every",
            "1",
            "--steps",
            "50",
            "--eval-samples",
            "0",
            "--resume",
            path_str(&checkpoint),
        ],
        &[],
    );
    assert!(resumed.status.success(), "{resumed:?}");
    let whole = dir.path().join("whole");
    assert!(
        train("vae", &whole, &[&common[..], &["--steps", "50"]].concat())
            .status
            .success()
    );
    // The training lines agree; the cut run also measured its test ELBO when it stopped.
    let training = |run: &Path| -> Vec<String> {
        metrics(run)
            .into_iter()
            .filter(|line| line.contains("\"loss\""))
            .collect()
    };
    assert_eq!(training(&cut), training(&whole));
    assert_eq!(training(&whole).len(), 50);
    let test = |run: &Path| {
        metrics(run)
            .into_iter()
            .filter(|line| line.contains("test_neg_elbo"))
            .count()
    };
    assert_eq!((test(&cut), test(&whole)), (2, 1));
}

#[test]
fn bad_vae_input_is_one_line_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let gan_run = dir.path().join("gan");
    assert!(train("gan", &gan_run, &["--steps", "2"]).status.success());
    let gan = gan_run.join("checkpoints/latest.safetensors");
    let gan = path_str(&gan);
    let out = dir.path().join("x.png");
    let out = path_str(&out);

    let m = error_line(&kiln(&["train", "gan", "--beta", "2", "--out", out], &[]));
    assert!(m.contains("--beta is not a setting of gan"), "{m}");
    let m = error_line(&kiln(&["train", "vae", "--resume", gan], &[]));
    assert!(m.contains("holds a gan model, not a vae"), "{m}");
    for command in ["reconstruct", "interpolate", "manifold"] {
        let m = error_line(&kiln(&[command, "--checkpoint", gan, "--out", out], &[]));
        assert!(
            m.contains("needs a VAE checkpoint") && m.contains("gan model"),
            "{m}"
        );
    }
    let m = error_line(&kiln(
        &["eval", "--checkpoint", gan, "--iw-samples", "10"],
        &[],
    ));
    assert!(m.contains("no likelihood"), "{m}");
    let m = error_line(&kiln(
        &["train", "vae", "--latent-dim", "0", "--out", out],
        &[],
    ));
    assert!(m.contains("latent size must be at least 1"), "{m}");

    let vae_run = dir.path().join("vae");
    assert!(train("vae", &vae_run, &["--steps", "2"]).status.success());
    let vae = vae_run.join("checkpoints/latest.safetensors");
    let vae = path_str(&vae);
    let m = error_line(&kiln(
        &["train", "vae", "--likelihood", "gaussian", "--resume", vae],
        &[],
    ));
    assert!(m.contains("come from the checkpoint"), "{m}");
    let m = error_line(&kiln(
        &["reconstruct", "--checkpoint", vae, "--n", "0", "--out", out],
        &[],
    ));
    assert!(m.contains("--n 0"), "{m}");
    let m = error_line(&kiln(
        &[
            "interpolate",
            "--checkpoint",
            vae,
            "--from",
            "2",
            "--to",
            "10000",
            "--out",
            out,
        ],
        &[],
    ));
    assert!(m.contains("test image 10000 does not exist"), "{m}");
    let m = error_line(&kiln(
        &["reconstruct", "--checkpoint", vae, "--out", "grid.jpg"],
        &[],
    ));
    assert!(m.contains("name it FILE.png"), "{m}");
}
