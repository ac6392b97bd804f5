//! `kiln eval` as a user runs it, with the committed MNIST classifier: the scale of the scores
//! (real images score near 0, noise and blank images far away, a one-digit set is caught by
//! coverage), the scores of a checkpoint's samples, and one-line errors.

mod common;

use std::path::Path;

use common::{error_line, kiln, path_str};
use kiln_data::{write_idx, Encoding, IdxArray, IdxData};

/// Runs `kiln eval` on `args` and returns the JSON it wrote.
fn eval(args: &[&str], json: &Path) -> serde_json::Value {
    let mut all = vec!["eval", "--json", path_str(json)];
    all.extend(args);
    let output = kiln(&all, &[]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("Fréchet distance"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn write_images(path: &Path, images: Vec<u8>) {
    let n = images.len() / 784;
    let array = IdxArray::new(vec![n, 28, 28], IdxData::U8(images)).unwrap();
    write_idx(path, &array, Encoding::Raw).unwrap();
}

fn number(report: &serde_json::Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("{pointer}: {report}"))
}

#[test]
fn real_images_score_near_zero_and_noise_far_away() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scores.json");
    // 2000 training images against the test split: the same distribution.
    let train = eval(
        &[
            "--samples",
            "data/mnist/train-images-idx3-ubyte.gz",
            "--n",
            "2000",
        ],
        &json,
    );
    let real_distance = number(&train, "/frechet_distance");
    assert_eq!(number(&train, "/samples"), 2000.0);
    assert_eq!(number(&train, "/coverage/classes_at_least_5_percent"), 10.0);
    assert!(number(&train, "/classifier_score") > 9.0, "{train}");
    assert!(
        number(&train, "/precision_recall/precision") > 0.6,
        "{train}"
    );

    // Uniform noise and blank (all black) images.
    let mut state = 12345u32;
    let noise: Vec<u8> = (0..1000 * 784)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let noise_path = dir.path().join("noise.idx");
    write_images(&noise_path, noise);
    let noise = eval(&["--samples", path_str(&noise_path)], &json);
    let blank_path = dir.path().join("blank.idx");
    write_images(&blank_path, vec![0; 1000 * 784]);
    let blank = eval(&["--samples", path_str(&blank_path)], &json);
    for far in [&noise, &blank] {
        let distance = number(far, "/frechet_distance");
        assert!(
            distance > 20.0 * real_distance.max(1.0),
            "{distance} vs {real_distance}"
        );
        // No real image lies inside either set's manifold.
        assert!(number(far, "/precision_recall/recall") < 0.01, "{far}");
    }
    // A few outlying real images have wide k-NN balls that catch some noise, so its
    // precision is not 0, but it is far below real images'.
    assert!(
        number(&noise, "/precision_recall/precision") < 0.2,
        "{noise}"
    );
    // Blank images are one point in feature space, which lies inside the real manifold:
    // precision 1 with recall 0 is what a collapsed generator looks like. Coverage says so too.
    assert_eq!(number(&blank, "/coverage/classes_at_least_5_percent"), 1.0);
}

#[test]
fn coverage_catches_a_set_of_one_digit() {
    let dir = tempfile::tempdir().unwrap();
    // The test set's ones.
    let test = kiln_data::Dataset::load(
        kiln_data::DatasetKind::Mnist,
        kiln_data::Split::Test,
        Some(Path::new("data/mnist")),
    )
    .unwrap();
    let ones: Vec<u8> = (0..test.len())
        .filter(|&i| test.labels()[i] == 1)
        .flat_map(|i| test.image(i).to_vec())
        .collect();
    let path = dir.path().join("ones.idx");
    write_images(&path, ones);
    let report = eval(
        &["--samples", path_str(&path)],
        &dir.path().join("ones.json"),
    );
    assert_eq!(number(&report, "/coverage/classes_at_least_5_percent"), 1.0);
    assert!(number(&report, "/coverage/kl_to_uniform") > 2.0, "{report}");
    assert!(number(&report, "/classifier_score") < 1.5, "{report}");
}

#[test]
fn a_checkpoint_is_scored_from_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = kiln(
        &[
            "train",
            "gan",
            "--quiet",
            "--steps",
            "3",
            "--eval-samples",
            "0",
            "--out",
            path_str(&run),
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let checkpoint = run.join("checkpoints/latest.safetensors");
    let output = kiln(
        &["eval", "--checkpoint", path_str(&checkpoint), "--n", "500"],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    assert_eq!(number(&report, "/samples"), 500.0);
    // Three steps in, the generator makes grey noise: far from MNIST.
    assert!(number(&report, "/frechet_distance") > 10.0, "{report}");
}

#[test]
fn bad_input_is_one_line_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let m = error_line(&kiln(
        &["eval", "--samples", path_str(&dir.path().join("none.idx"))],
        &[],
    ));
    assert!(m.contains("none.idx"), "{m}");
    let labels = "data/mnist/t10k-labels-idx1-ubyte.gz";
    let m = error_line(&kiln(&["eval", "--samples", labels], &[]));
    assert!(m.contains("expected images"), "{m}");
    let m = error_line(&kiln(
        &[
            "eval",
            "--samples",
            "data/mnist/t10k-images-idx3-ubyte.gz",
            "--classifier",
            labels,
        ],
        &[],
    ));
    assert!(m.contains("t10k-labels"), "{m}");
    let m = error_line(&kiln(
        &[
            "eval",
            "--samples",
            "data/mnist/t10k-images-idx3-ubyte.gz",
            "--n",
            "3",
        ],
        &[],
    ));
    assert!(m.contains("holds 10000 images"), "{m}");
}

/// Issue 24, finding 2: `kiln train classifier` with a batch larger than the training set took
/// no step and wrote the untrained network (by default over the committed classifier). Now it
/// fails with one line and writes nothing.
#[test]
fn a_classifier_training_that_takes_no_step_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("classifier.safetensors");
    let output = kiln(
        &[
            "train",
            "classifier",
            "--device",
            "cpu",
            "--batch-size",
            "100000",
            "--out",
            path_str(&out),
        ],
        &[],
    );
    let line = error_line(&output);
    assert!(line.contains("take no step"), "{line}");
    assert!(!out.exists(), "an untrained classifier was written");
}
