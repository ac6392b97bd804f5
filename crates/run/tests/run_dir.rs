//! The run folder: its layout, its file names, the config file and the errors for paths that
//! cannot be a run folder.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_run::{RunDir, RunError};
use serde_json::json;

#[derive(serde::Serialize)]
struct Config {
    dataset: &'static str,
    epochs: u64,
    learning_rate: f64,
    betas: (f64, f64),
}

#[test]
fn create_makes_the_folder_and_names_its_files() {
    let temporary = tempfile::tempdir().unwrap();
    let root = temporary.path().join("runs/gan-mnist");
    let run = RunDir::create(&root).unwrap();

    assert_eq!(run.path(), root);
    assert!(root.join("samples").is_dir());
    assert!(root.join("checkpoints").is_dir());
    assert_eq!(run.samples_dir(), root.join("samples"));
    assert_eq!(run.checkpoints_dir(), root.join("checkpoints"));
    assert_eq!(
        run.latest_checkpoint_path(),
        root.join("checkpoints/latest.safetensors")
    );
    assert_eq!(run.sample_path(1), root.join("samples/epoch_001.png"));
    assert_eq!(run.sample_path(42), root.join("samples/epoch_042.png"));
    assert_eq!(run.sample_path(1000), root.join("samples/epoch_1000.png"));
    assert_eq!(run.plot_path(), root.join("loss.png"));
    assert_eq!(run.plot_svg_path(), root.join("loss.svg"));
    assert_eq!(run.metrics_path(), root.join("metrics.jsonl"));
    assert_eq!(run.config_path(), root.join("config.json"));
}

#[test]
fn an_existing_run_folder_is_reused_as_it_is() {
    let temporary = tempfile::tempdir().unwrap();
    let run = RunDir::create(temporary.path()).unwrap();
    std::fs::write(run.latest_checkpoint_path(), b"checkpoint").unwrap();
    std::fs::write(run.metrics_path(), b"{\"step\":1}\n").unwrap();

    let again = RunDir::create(temporary.path()).unwrap();
    assert_eq!(again, run);
    assert_eq!(
        std::fs::read(again.latest_checkpoint_path()).unwrap(),
        b"checkpoint"
    );
    assert_eq!(
        std::fs::read(again.metrics_path()).unwrap(),
        b"{\"step\":1}\n"
    );
}

#[test]
fn a_file_where_the_folder_goes_is_an_error_naming_it() {
    let temporary = tempfile::tempdir().unwrap();
    let file = temporary.path().join("run");
    std::fs::write(&file, b"not a folder").unwrap();

    let err = RunDir::create(&file).unwrap_err();
    assert!(matches!(err, RunError::NotUsable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: exists and is not a directory", file.display())
    );

    // The same for a subfolder's name taken by a file.
    let run = temporary.path().join("other");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("samples"), b"").unwrap();
    let err = RunDir::create(&run).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: ", run.join("samples").display())),
        "{err}"
    );
}

#[test]
fn a_folder_the_os_refuses_is_an_error_naming_it_and_the_os_error() {
    let temporary = tempfile::tempdir().unwrap();
    let file = temporary.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let inside = file.join("run");

    let err = RunDir::create(&inside).unwrap_err();
    assert!(matches!(err, RunError::Io { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: cannot create directory: ", inside.display())),
        "{message}"
    );
    assert!(message.contains("os error"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn write_config_writes_pretty_json_that_reads_back() {
    let temporary = tempfile::tempdir().unwrap();
    let run = RunDir::create(temporary.path()).unwrap();
    let config = Config {
        dataset: "mnist",
        epochs: 10,
        learning_rate: 2e-4,
        betas: (0.5, 0.999),
    };
    run.write_config(&config).unwrap();

    let text = std::fs::read_to_string(run.config_path()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value,
        json!({"dataset": "mnist", "epochs": 10, "learning_rate": 2e-4, "betas": [0.5, 0.999]})
    );
    assert!(text.contains("\n  \"epochs\": 10,\n"), "not pretty: {text}");
    assert!(text.ends_with("}\n"));

    // Rewriting replaces the file and leaves no temporary file behind.
    run.write_config(&json!({"epochs": 3})).unwrap();
    let text = std::fs::read_to_string(run.config_path()).unwrap();
    assert_eq!(text, "{\n  \"epochs\": 3\n}\n");
    assert_eq!(
        entries(run.path()),
        ["checkpoints", "config.json", "samples"]
    );
}

#[test]
fn a_config_json_cannot_hold_is_an_error_and_writes_nothing() {
    let temporary = tempfile::tempdir().unwrap();
    let run = RunDir::create(temporary.path()).unwrap();
    // JSON object keys must be strings.
    let config: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();

    let err = run.write_config(&config).unwrap_err();
    assert!(matches!(err, RunError::Json { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: cannot write the config as JSON: ",
            run.config_path().display()
        )),
        "{err}"
    );
    assert!(!run.config_path().exists());
}

/// The names in `folder`, sorted.
fn entries(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
