//! `kiln data` run as a user runs it: a grid of MNIST digits is written and decodes to a PNG of
//! the right size; a missing dataset, a bad --n or an unwritable --out is one line on stderr and
//! a non-zero exit, never a panic.

mod common;

use std::path::Path;

use common::{error_line, kiln};

#[test]
fn data_show_writes_a_grid_of_digits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.png");
    let out_arg = out.to_str().unwrap();
    let output = kiln(
        &[
            "data",
            "show",
            "--dataset",
            "mnist",
            "--n",
            "20",
            "--columns",
            "5",
            "--out",
            out_arg,
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        format!("wrote 20 mnist train images (4 x 5) from data/mnist to {out_arg}\n")
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    // 5 tiles of 28 and 6 strips of 2 across; 4 tiles and 5 strips down.
    assert_eq!((info.width, info.height), (5 * 28 + 6 * 2, 4 * 28 + 5 * 2));
}

#[test]
fn data_info_prints_counts_and_histograms_from_kiln_data_dir() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    // KILN_DATA_DIR may name the folder that holds mnist/.
    let output = kiln(&["data", "info"], &[("KILN_DATA_DIR", &data)]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("60000 images of 28x28"), "{stdout}");
    assert!(stdout.contains("0 5923, 1 6742, 2 5958"), "{stdout}");
    assert!(stdout.contains("10000 images of 28x28"), "{stdout}");
}

#[test]
fn user_errors_are_one_line_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let out = out.to_str().unwrap();
    let missing = error_line(&kiln(
        &[
            "data",
            "show",
            "--data-dir",
            "/nonexistent/kiln",
            "--out",
            out,
        ],
        &[],
    ));
    assert!(
        missing.starts_with(
            "error: mnist train set not found: looked in /nonexistent/kiln (no such directory)"
        ),
        "{missing}"
    );
    assert!(missing.contains("--data-dir"), "{missing}");

    let too_many = error_line(&kiln(&["data", "show", "--n", "70000", "--out", out], &[]));
    assert!(
        too_many.contains("--n 70000: the mnist train set has 60000 images"),
        "{too_many}"
    );
    let zero_columns = error_line(&kiln(
        &["data", "show", "--columns", "0", "--out", out],
        &[],
    ));
    assert!(zero_columns.contains("--columns"), "{zero_columns}");
    let unwritable = error_line(&kiln(
        &["data", "show", "--out", "/nonexistent/kiln/digits.png"],
        &[],
    ));
    assert!(
        unwritable.contains("/nonexistent/kiln/digits.png: cannot write"),
        "{unwritable}"
    );
    let unknown = error_line(&kiln(
        &["data", "show", "--dataset", "cifar", "--out", out],
        &[],
    ));
    assert!(unknown.contains("cifar"), "{unknown}");
    assert!(!Path::new(out).exists());
}
