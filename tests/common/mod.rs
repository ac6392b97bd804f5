//! What the command-line tests share: running the `kiln` binary as a user would.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_data::{write_idx, Dataset, DatasetKind, Encoding, IdxArray, IdxData, Split};

/// Runs `kiln args` in the package root (where data/mnist is), with `KILN_DATA_DIR` unset
/// unless `env` sets it.
pub fn kiln(args: &[&str], env: &[(&str, &Path)]) -> Output {
    command(args, env).output().unwrap()
}

/// The command `kiln` would run, to spawn it.
pub fn command(args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("KILN_DATA_DIR");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A path as the `&str` an argument list takes (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The one stderr line of a failed run.
pub fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "expected failure: {output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stderr
}

/// The last stderr line of a run that stopped part way (after progress lines) with exit
/// status 1: asserts that it starts with "error: " and that nothing panicked, and returns it.
pub fn last_error_line(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    last
}

/// A run folder's metrics.jsonl lines, without the timing fields, which differ from run to run.
pub fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let cut = line.find(",\"images_per_s\"").unwrap_or(line.len());
            line[..cut].to_string()
        })
        .collect()
}

/// Writes the first `train` training and first `test` test images of the committed MNIST, with
/// their labels, as plain IDX files into `dir/mnist`, and returns that folder: a `--data-dir`
/// for runs whose checks do not need the whole dataset (a run's test evaluation covers every
/// test image it is given, which on all 10000 is most of a short run's time).
pub fn mnist_subset(dir: &Path, train: usize, test: usize) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let out = dir.join("mnist");
    std::fs::create_dir_all(&out).unwrap();
    for (split, count) in [(Split::Train, train), (Split::Test, test)] {
        let subset = Dataset::load(DatasetKind::Mnist, split, Some(&root))
            .and_then(|full| full.subset(0, count))
            .unwrap();
        let [images, labels] = split.file_stems();
        let pixels = IdxData::U8(subset.images().to_vec());
        let array = IdxArray::new(vec![count, 28, 28], pixels).unwrap();
        write_idx(out.join(images), &array, Encoding::Raw).unwrap();
        let array = IdxArray::new(vec![count], IdxData::U8(subset.labels().to_vec())).unwrap();
        write_idx(out.join(labels), &array, Encoding::Raw).unwrap();
    }
    out
}
