//! kiln-data: what kiln trains on and what it shows. A strict IDX reader and writer
//! ([`idx`]), the MNIST and Fashion-MNIST datasets ([`dataset`]), a seeded batch loader that
//! returns kiln tensors ([`loader`]) and PNG image grids ([`grid`]). Not for models or metrics.
//!
//! Every fault in a file a user points kiln at is a [`DataError`] naming the file and the fault;
//! nothing here panics on bad input or reserves memory a header asks for before the file is
//! known to hold it.
//!
//! ```no_run
//! use kiln_data::{Dataset, DatasetKind, Loader, LoaderOptions, Split};
//! # fn main() -> kiln_data::Result<()> {
//! let train = Dataset::load(DatasetKind::Mnist, Split::Train, None)?; // 60000 images, 28x28
//! let loader = Loader::new(&train, LoaderOptions { batch_size: 64, seed: 7, ..Default::default() })?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // images [64, 1, 28, 28] f32 in [-1, 1], labels [64] u32
//! }
//! # Ok(())
//! # }
//! ```

pub mod dataset;
mod error;
pub mod grid;
pub mod idx;
pub mod loader;

pub use dataset::{Dataset, DatasetKind, Split};
pub use error::{DataError, IdxFault, Result};
pub use grid::{save_grid, Grid};
pub use idx::{
    encode_idx, parse_idx, read_idx, write_idx, ElementType, Encoding, IdxArray, IdxData,
};
pub use loader::{Batch, Loader, LoaderOptions, Scale};

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a file so that it appears whole or not at all: `write` fills a temporary file beside
/// `path`, which is flushed to disk and then renamed over `path`. A crash (or an error from
/// `write`) leaves at most the temporary file, never a half-written `path`.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&temporary)?);
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        DataError::io(path, "write", err)
    })
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
