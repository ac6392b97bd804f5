//! The metrics log, `metrics.jsonl`: one JSON object per line, appended as training goes and
//! flushed at once, so a crash loses at most the line being written. It is read back to redraw
//! the loss plot (lines from before a resume included) and cut back to the last checkpoint on
//! resume. Not a metrics database: the trainer decides what a record holds; this module only
//! needs a numeric `step` field to plot and cut by.
//!
//! A crash can leave a torn last line (no newline, not whole JSON). Reading skips it,
//! [`MetricsLog::open`] cuts it off before appending and [`MetricsLog::truncate_after`] drops
//! it; any other line that is not a JSON object is an error naming its line number.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, RunError};

/// One plotted series: its name and its (step, value) points in file order.
pub type Series = (String, Vec<(f64, f64)>);

/// An open metrics file that records are appended to.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, creating it if needed. If the file ends in a torn line left
    /// by a crash, that line is cut off first so the next record starts on a line of its own;
    /// a last line that is whole JSON but lacks its newline gets the newline instead.
    pub fn open(path: impl AsRef<Path>) -> Result<MetricsLog> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|err| RunError::io(&path, "open", err))?;
        repair_torn_tail(&mut file).map_err(|err| RunError::io(&path, "repair", err))?;
        Ok(MetricsLog { path, file })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `record` as one line of compact JSON (its fields in their declared order) and
    /// flushes it. `record` must serialize to a JSON object (a struct or a map); give it a
    /// numeric `step` field for [`MetricsLog::read_series`] and [`MetricsLog::truncate_after`].
    /// A NaN or infinite float is written as `null` (JSON has no NaN), which reading skips.
    pub fn append<T: serde::Serialize + ?Sized>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|err| RunError::json(&self.path, "a metrics record", err))?;
        if line.first() != Some(&b'{') {
            return Err(RunError::json(
                &self.path,
                "a metrics record",
                format!(
                    "expected a JSON object (a struct or a map), got {}",
                    preview(&line)
                ),
            ));
        }
        line.push(b'\n');
        // One write of the whole line: a crash tears at most this line.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|err| RunError::io(&self.path, "append to", err))
    }

    /// Drops every record whose `step` is greater than `step` (those logged after the
    /// checkpoint a run resumes from) and any torn last line, so a resumed run logs those steps
    /// once, not twice. Records without a numeric `step` are kept. The file is rewritten
    /// atomically: a crash leaves the old file or the new one. Returns how many lines were
    /// dropped.
    pub fn truncate_after(&mut self, step: u64) -> Result<usize> {
        let mut kept = Vec::new();
        let mut dropped = 0;
        for_each_line(&self.path, |line, record| match record {
            Some(record) if step_of(record).is_some_and(|s| s > step as f64) => dropped += 1,
            Some(_) => kept.extend_from_slice(line),
            None => dropped += 1,
        })?;
        if dropped == 0 {
            return Ok(0);
        }
        kiln_fs::write_file_atomically(&self.path, |out| out.write_all(&kept))
            .map_err(|err| RunError::io(&self.path, "rewrite", err))?;
        // The rename replaced the file: appends must go to the new one.
        *self = MetricsLog::open(&self.path)?;
        Ok(dropped)
    }

    /// Reads the metrics file at `path` back as one series per name in `fields`, in that order:
    /// the (`step`, value) points of every record that has both as numbers, in file order.
    /// Records where a field is missing, `null` or not a number are skipped for that field, so
    /// a series may be empty.
    pub fn read_series(path: impl AsRef<Path>, fields: &[&str]) -> Result<Vec<Series>> {
        let mut series: Vec<Series> = fields
            .iter()
            .map(|field| (field.to_string(), Vec::new()))
            .collect();
        for_each_line(path.as_ref(), |_, record| {
            let Some(record) = record else { return };
            let Some(step) = step_of(record) else { return };
            for (field, points) in &mut series {
                if let Some(value) = record.get(field.as_str()).and_then(Value::as_f64) {
                    points.push((step, value));
                }
            }
        })?;
        Ok(series)
    }
}

/// The record's `step`, if it is a number.
fn step_of(record: &Map<String, Value>) -> Option<f64> {
    record.get("step").and_then(Value::as_f64)
}

/// Calls `each` with every line of the metrics file at `path` (its bytes, newline included)
/// and its record; the record is `None` for a torn last line. Blank lines are passed over.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(&[u8], Option<&Map<String, Value>>),
) -> Result<()> {
    let file = File::open(path).map_err(|err| RunError::io(path, "read", err))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|err| RunError::io(path, "read", err))?;
        if read == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let torn = line.last() != Some(&b'\n');
        match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(record)) => each(&line, Some(&record)),
            // A crash mid-append leaves the last line cut short, with no newline.
            Err(_) if torn => each(&line, None),
            Ok(other) => {
                return Err(RunError::Metrics {
                    path: path.display().to_string(),
                    line: number,
                    message: format!(
                        "expected a JSON object, found {}",
                        preview(other.to_string().as_bytes())
                    ),
                })
            }
            Err(err) => {
                return Err(RunError::Metrics {
                    path: path.display().to_string(),
                    line: number,
                    message: format!("not JSON: {err}"),
                })
            }
        }
    }
    Ok(())
}

/// Cuts a torn last line off `file` (one not ending in a newline that is not a JSON object),
/// or ends a whole last line that lacks its newline with one.
fn repair_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Only after a crash: reading the whole file once is simpler than scanning back for '\n'.
    let mut contents = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut contents)?;
    let start = contents
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    match serde_json::from_slice::<Value>(&contents[start..]) {
        Ok(Value::Object(_)) => file.write_all(b"\n"),
        _ => file.set_len(start as u64),
    }
}

/// The first few characters of `json`, for an error message.
fn preview(json: &[u8]) -> String {
    let text = String::from_utf8_lossy(json);
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}
