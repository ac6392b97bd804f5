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
pub use loader::{Batch, Loader, LoaderOptions, Scale, Shard};

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use kiln_fs::write_file_atomically;

/// [`write_file_atomically`], with its error as a [`DataError`] naming `path`.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    write_file_atomically(path, write).map_err(|err| DataError::io(path, "write", err))
}
