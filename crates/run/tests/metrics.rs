//! The metrics log: appending records, reading series back, cutting back to a checkpoint on
//! resume, and the torn last line a crash leaves.

use std::path::Path;

use kiln_run::{MetricsLog, RunError};
use serde_json::json;

#[derive(serde::Serialize)]
struct Record {
    step: u64,
    epoch: u64,
    loss_d: f64,
    loss_g: f64,
}

fn record(step: u64) -> Record {
    Record {
        step,
        epoch: 1 + step / 4,
        loss_d: step as f64 / 10.0,
        loss_g: 2.0 * step as f64,
    }
}

/// The `step` of every line in the file, in order.
fn steps(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn append_writes_one_object_per_line_in_field_order() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&record(1)).unwrap();
    // Written and flushed at once: readable before the log is closed.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"step\":1,\"epoch\":1,\"loss_d\":0.1,\"loss_g\":2.0}\n"
    );
    log.append(&json!({"step": 2, "note": "a map works too"}))
        .unwrap();
    drop(log);

    // Reopening appends after what is there.
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&record(3)).unwrap();
    assert_eq!(steps(&path), [1, 2, 3]);
    assert_eq!(log.path(), path);
}

#[test]
fn a_record_that_is_not_an_object_is_refused() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    let err = log.append(&[1, 2, 3]).unwrap_err();
    assert!(matches!(err, RunError::Json { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot write a metrics record as JSON: expected a JSON object (a struct or a \
             map), got [1,2,3]",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn read_series_returns_each_field_by_step_and_skips_gaps() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&record(10)).unwrap();
    // NaN is written as null (JSON has no NaN) and skipped on reading.
    log.append(&Record {
        loss_g: f64::NAN,
        ..record(20)
    })
    .unwrap();
    log.append(&json!({"step": 30, "loss_g": 7.5})).unwrap(); // no loss_d
    log.append(&json!({"loss_d": 9.0, "loss_g": 9.0})).unwrap(); // no step: not plotted
    log.append(&json!({"step": 40, "loss_d": "high", "loss_g": 8}))
        .unwrap();

    let series = MetricsLog::read_series(&path, &["loss_g", "loss_d", "absent"]).unwrap();
    assert_eq!(
        series,
        [
            (
                "loss_g".to_string(),
                vec![(10.0, 20.0), (30.0, 7.5), (40.0, 8.0)]
            ),
            ("loss_d".to_string(), vec![(10.0, 1.0), (20.0, 2.0)]),
            ("absent".to_string(), vec![]),
        ]
    );
}

#[test]
fn truncate_after_drops_lines_past_the_checkpoint_so_a_resume_logs_each_step_once() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    for step in 1..=10 {
        log.append(&record(step)).unwrap();
    }
    drop(log);

    // The run resumes from a checkpoint at step 6.
    let mut log = MetricsLog::open(&path).unwrap();
    assert_eq!(log.truncate_after(6).unwrap(), 4);
    for step in 7..=12 {
        log.append(&record(step)).unwrap();
    }
    assert_eq!(steps(&path), (1..=12).collect::<Vec<_>>());

    // Nothing past the step: the file is left as it was.
    let before = std::fs::read(&path).unwrap();
    assert_eq!(log.truncate_after(12).unwrap(), 0);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // No temporary files are left beside it.
    assert_eq!(std::fs::read_dir(temporary.path()).unwrap().count(), 1);
}

#[test]
fn truncate_after_keeps_records_without_a_step() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&json!({"event": "start"})).unwrap();
    log.append(&record(5)).unwrap();
    log.append(&json!({"event": "epoch end"})).unwrap();
    log.append(&record(9)).unwrap();
    assert_eq!(log.truncate_after(5).unwrap(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<&str> = text.lines().collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[0], "{\"event\":\"start\"}");
    assert_eq!(events[2], "{\"event\":\"epoch end\"}");
}

const WHOLE_LINES: &str = "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"loss\":0.4}\n";
const TORN_LINE: &str = "{\"step\":3,\"lo";

#[test]
fn a_torn_last_line_is_skipped_by_reading_and_dropped_by_truncate() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    std::fs::write(&path, format!("{WHOLE_LINES}{TORN_LINE}")).unwrap();

    let series = MetricsLog::read_series(&path, &["loss"]).unwrap();
    assert_eq!(series[0].1, [(1.0, 0.5), (2.0, 0.4)]);

    // Reading does not change the file; truncate_after does.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{WHOLE_LINES}{TORN_LINE}")
    );
    let mut log = MetricsLog::open(&path).unwrap();
    assert_eq!(log.truncate_after(2).unwrap(), 0); // open already cut the torn line
    assert_eq!(std::fs::read_to_string(&path).unwrap(), WHOLE_LINES);
}

#[test]
fn open_cuts_a_torn_last_line_before_appending() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    std::fs::write(&path, format!("{WHOLE_LINES}{TORN_LINE}")).unwrap();

    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&json!({"step": 3, "loss": 0.3})).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{WHOLE_LINES}{{\"loss\":0.3,\"step\":3}}\n")
    );
    let series = MetricsLog::read_series(&path, &["loss"]).unwrap();
    assert_eq!(series[0].1, [(1.0, 0.5), (2.0, 0.4), (3.0, 0.3)]);
}

#[test]
fn a_whole_last_line_missing_its_newline_is_kept() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    std::fs::write(&path, WHOLE_LINES.trim_end()).unwrap();

    let series = MetricsLog::read_series(&path, &["loss"]).unwrap();
    assert_eq!(series[0].1, [(1.0, 0.5), (2.0, 0.4)]);
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&json!({"step": 3})).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{WHOLE_LINES}{{\"step\":3}}\n")
    );
}

#[test]
fn a_bad_line_before_the_end_is_an_error_naming_the_file_and_line() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("metrics.jsonl");
    std::fs::write(&path, "{\"step\":1}\n{\"step\":2,\"lo\n{\"step\":3}\n").unwrap();
    let err = MetricsLog::read_series(&path, &["loss"]).unwrap_err();
    assert!(matches!(err, RunError::Metrics { line: 2, .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: line 2: not JSON: ", path.display())),
        "{err}"
    );

    std::fs::write(&path, "{\"step\":1}\n\n[1, 2]\n").unwrap();
    let mut log = MetricsLog::open(&path).unwrap();
    let err = log.truncate_after(0).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: line 3: expected a JSON object, found [1,2]",
            path.display()
        )
    );
    // The failed truncate left the file as it was.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"step\":1}\n\n[1, 2]\n"
    );
}

#[test]
fn reading_a_missing_file_is_an_error_naming_it() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("none.jsonl");
    let err = MetricsLog::read_series(&path, &["loss"]).unwrap_err();
    assert!(matches!(err, RunError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", path.display())),
        "{err}"
    );
    let err = MetricsLog::open(temporary.path().join("no-folder/metrics.jsonl")).unwrap_err();
    assert!(
        err.to_string()
            .contains("no-folder/metrics.jsonl: cannot open: "),
        "{err}"
    );
}
