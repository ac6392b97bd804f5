//! kiln-fs: files that appear whole or not at all. Checkpoints, sample grids, metrics, plots,
//! run configurations and cached kernels are all written through [`write_file_atomically`], so
//! a crash, a full disk or a failed write never leaves half a file where the output belongs.
//! Not for reading, nor for anything that appends (metrics lines append in place).

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a file so that it appears whole or not at all: `write` fills a temporary file beside
/// `path`, which is flushed to disk (`sync_all`), renamed over `path`, and then the directory is
/// flushed so that the rename itself survives a crash. A crash or an error from `write` leaves
/// the previous `path` as it was; on an error the temporary file is removed. (An error from the
/// final directory flush comes after the rename: `path` then holds the new contents, but they
/// may not survive a power loss.)
pub fn write_file_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&temporary)?);
        write(&mut out)?;
        disk_full_for_fault_injection()?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        pause_for_fault_injection();
        std::fs::rename(&temporary, path)
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    sync_directory(path)
}

/// With `KILN_FAULT_INJECTION_WRITE_PAUSE_MS` set (tests only), waits that long between
/// writing a file's temporary and renaming it, so a test that kills the process can land in
/// the middle of a write.
fn pause_for_fault_injection() {
    let pause = std::env::var("KILN_FAULT_INJECTION_WRITE_PAUSE_MS").ok();
    if let Some(ms) = pause.and_then(|ms| ms.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// With `KILN_FAULT_INJECTION_DISK_FULL_AFTER=N` set (tests only), every write after the
/// process's first N fails as a full disk does (ENOSPC), after its temporary file was
/// written and before the rename.
fn disk_full_for_fault_injection() -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let limit = std::env::var("KILN_FAULT_INJECTION_DISK_FULL_AFTER").ok();
    let Some(limit) = limit.and_then(|n| n.parse::<u64>().ok()) else {
        return Ok(());
    };
    match WRITES.fetch_add(1, Ordering::Relaxed) >= limit {
        true => Err(io::Error::from_raw_os_error(28)), // ENOSPC
        false => Ok(()),
    }
}

/// Flushes the directory holding `path`, so that a rename into it is on disk.
#[cfg(unix)]
fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

/// Windows cannot open a directory as a file to flush it; NTFS journals the rename instead.
#[cfg(not(unix))]
fn sync_directory(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// `dir/.name.<pid>.<n>.tmp` beside `dir/name`: on the same file system, so the rename is
/// atomic, and unique to this process and call, so concurrent writers do not share it.
fn temporary_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let call = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map_or_else(
        || "kiln-output".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!(".{name}.{}.{call}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The files in `directory`, sorted.
    fn listing(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failing_write_leaves_the_previous_file_and_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        write_file_atomically(&path, |out| out.write_all(b"first")).unwrap();
        let err = write_file_atomically(&path, |out| {
            out.write_all(b"second, half written")?;
            Err(io::Error::other("injected failure"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "injected failure");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(listing(directory.path()), ["out.bin"]);
    }

    #[test]
    fn a_successful_write_replaces_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        write_file_atomically(&path, |out| out.write_all(b"first")).unwrap();
        write_file_atomically(&path, |out| out.write_all(b"second")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(listing(directory.path()), ["out.bin"]);
    }
}
