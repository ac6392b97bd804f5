//! MNIST and Fashion-MNIST: where they are looked for, and the checks that make a pair of IDX
//! files a dataset (u8 images of 28x28, one label per image, every label a class 0 to 9). Not
//! for batching (`loader.rs`) or the IDX format itself (`idx.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_tensor::{Device, Tensor};

use crate::error::{DataError, Result};
use crate::idx::{read_idx, IdxArray, IdxData};

/// The environment variable naming a data directory when `--data-dir` is not given.
pub const DATA_DIR_ENV: &str = "KILN_DATA_DIR";

/// Height and width of every image.
pub const IMAGE_SIZE: usize = 28;

/// Number of classes (labels are 0 to 9).
pub const NUM_CLASSES: usize = 10;

/// Which dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// Handwritten digits (LeCun, Cortes, Burges), committed to the repository as data/mnist.
    Mnist,
    /// Zalando's clothing images, same format and sizes (`apt-get install dataset-fashion-mnist`).
    FashionMnist,
}

impl DatasetKind {
    /// The name on the command line and in messages: `mnist` or `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// The kind whose [`DatasetKind::name`] is `name`.
    pub fn from_name(name: &str) -> Option<DatasetKind> {
        [DatasetKind::Mnist, DatasetKind::FashionMnist]
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// What each label means.
    pub fn class_names(self) -> [&'static str; NUM_CLASSES] {
        match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// Where the dataset is looked for when no directory is given (relative paths are relative
    /// to the working directory).
    pub fn default_dirs(self) -> Vec<PathBuf> {
        match self {
            DatasetKind::Mnist => vec![PathBuf::from("data/mnist")],
            DatasetKind::FashionMnist => vec![
                PathBuf::from("/usr/share/datasets/fashion-mnist"),
                PathBuf::from("data/fashion-mnist"),
            ],
        }
    }

    fn how_to_get(self) -> &'static str {
        match self {
            DatasetKind::Mnist => {
                "MNIST is committed to the kiln repository as data/mnist: run kiln from the \
                 repository root, or pass --data-dir (or set KILN_DATA_DIR to) a directory \
                 holding its four IDX files"
            }
            DatasetKind::FashionMnist => {
                "install it with `sudo apt-get install dataset-fashion-mnist` (into \
                 /usr/share/datasets/fashion-mnist), or pass --data-dir (or set KILN_DATA_DIR \
                 to) a directory holding its four IDX files"
            }
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" => Ok(DatasetKind::FashionMnist),
            _ => Err(DataError::invalid(
                "dataset",
                format!("unknown dataset {text:?}: expected mnist or fashion-mnist"),
            )),
        }
    }
}

/// The training or the test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The IDX file names' stems (each file may also carry `.gz`).
    pub fn file_stems(self) -> [&'static str; 2] {
        match self {
            Split::Train => ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
            Split::Test => ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::invalid(
                "split",
                format!("unknown split {text:?}: expected train or test"),
            )),
        }
    }
}

/// One split of a dataset, in memory: `len` images of 28x28 u8 pixels (0 background, 255 ink),
/// row-major, and their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    kind: DatasetKind,
    split: Split,
    dir: PathBuf,
    len: usize,
    images: Arc<[u8]>,
    labels: Arc<[u8]>,
}

impl Dataset {
    /// Finds the dataset (see [`Dataset::find_dir`]) and loads it.
    pub fn load(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<Dataset> {
        let dir = Dataset::find_dir(kind, split, data_dir)?;
        Dataset::load_from_dir(kind, split, &dir)
    }

    /// The directory holding the split's two files: `data_dir` if given, else `$KILN_DATA_DIR`
    /// if set, else the kind's [default directories](DatasetKind::default_dirs). A given
    /// directory `D` may hold the files itself or in `D/mnist` (`D/fashion-mnist`), so both
    /// `--data-dir data` and `--data-dir data/mnist` work. Fails naming every directory looked
    /// in and what was missing there, and how to get the dataset.
    pub fn find_dir(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<PathBuf> {
        let from_env = std::env::var_os(DATA_DIR_ENV).filter(|dir| !dir.is_empty());
        let candidates = match data_dir
            .map(Path::to_path_buf)
            .or(from_env.map(PathBuf::from))
        {
            Some(dir) => vec![dir.clone(), dir.join(kind.name())],
            None => kind.default_dirs(),
        };
        let mut looked_in = Vec::new();
        for dir in candidates {
            let missing: Vec<&str> = split
                .file_stems()
                .into_iter()
                .filter(|stem| find_file(&dir, stem).is_none())
                .collect();
            if missing.is_empty() {
                return Ok(dir);
            }
            looked_in.push(if dir.is_dir() {
                format!("{} (no {}[.gz])", dir.display(), missing.join("[.gz] or "))
            } else {
                format!("{} (no such directory)", dir.display())
            });
        }
        Err(DataError::NotFound {
            dataset: kind.name(),
            split: split.name(),
            looked_in,
            hint: kind.how_to_get(),
        })
    }

    /// Loads and checks the split's files in `dir` (each `stem.gz` or plain `stem`).
    pub fn load_from_dir(kind: DatasetKind, split: Split, dir: &Path) -> Result<Dataset> {
        let [image_stem, label_stem] = split.file_stems();
        let locate = |stem: &str| {
            find_file(dir, stem).ok_or_else(|| DataError::NotFound {
                dataset: kind.name(),
                split: split.name(),
                looked_in: vec![format!("{} (no {stem}[.gz])", dir.display())],
                hint: kind.how_to_get(),
            })
        };
        let image_path = locate(image_stem)?;
        let label_path = locate(label_stem)?;

        let images = u8_contents(read_idx(&image_path)?, &image_path, "images")?;
        let (image_dims, images) = images;
        if image_dims.len() != 3 || image_dims[1..] != [IMAGE_SIZE, IMAGE_SIZE] {
            return Err(content_error(
                &image_path,
                format!("expected images of [N, 28, 28], found dims {image_dims:?}"),
            ));
        }
        let (label_dims, labels) = u8_contents(read_idx(&label_path)?, &label_path, "labels")?;
        if label_dims.len() != 1 {
            return Err(content_error(
                &label_path,
                format!("expected labels of [N], found dims {label_dims:?}"),
            ));
        }
        if label_dims[0] != image_dims[0] {
            return Err(content_error(
                &label_path,
                format!(
                    "holds {} labels but {} holds {} images",
                    label_dims[0],
                    image_path.display(),
                    image_dims[0]
                ),
            ));
        }
        if let Some((index, label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &label)| label as usize >= NUM_CLASSES)
        {
            return Err(content_error(
                &label_path,
                format!("label {label} at index {index} is not a class (0 to 9)"),
            ));
        }
        Ok(Dataset {
            kind,
            split,
            dir: dir.to_path_buf(),
            len: image_dims[0],
            images: images.into(),
            labels: labels.into(),
        })
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// The directory the files were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of images (never 0: IDX dimensions are at least 1).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every pixel, image after image: `len * 28 * 28` bytes.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    pub(crate) fn images_shared(&self) -> Arc<[u8]> {
        self.images.clone()
    }

    pub(crate) fn labels_shared(&self) -> Arc<[u8]> {
        self.labels.clone()
    }

    /// Every label, 0 to 9.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Image `index`'s 784 pixels, row-major. Panics if `index >= len()`, like slice indexing.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = IMAGE_SIZE * IMAGE_SIZE;
        &self.images[index * size..][..size]
    }

    /// Images `start..start + count` and their labels as a dataset of their own (same kind,
    /// split and directory): a quick subset for short trainings and tests.
    pub fn subset(&self, start: usize, count: usize) -> Result<Dataset> {
        let end = start
            .checked_add(count)
            .filter(|&end| end <= self.len && count > 0)
            .ok_or_else(|| {
                DataError::invalid(
                    "Dataset::subset",
                    format!(
                        "images {start}..{start}+{count} are not a non-empty range of the {} images",
                        self.len
                    ),
                )
            })?;
        let size = IMAGE_SIZE * IMAGE_SIZE;
        Ok(Dataset {
            kind: self.kind,
            split: self.split,
            dir: self.dir.clone(),
            len: count,
            images: self.images[start * size..end * size].into(),
            labels: self.labels[start..end].into(),
        })
    }

    /// How many images each class has.
    pub fn label_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &label in self.labels.iter() {
            counts[label as usize] += 1;
        }
        counts
    }

    /// Images `start..start + count` as a u8 tensor [count, 1, 28, 28] (what
    /// [`crate::grid`] draws as they are).
    pub fn images_tensor(&self, start: usize, count: usize, device: Device) -> Result<Tensor> {
        let end = start
            .checked_add(count)
            .filter(|&end| end <= self.len && count > 0)
            .ok_or_else(|| {
                DataError::invalid(
                    "Dataset::images_tensor",
                    format!(
                        "images {start}..{start}+{count} are not a non-empty range of the {} \
                         images",
                        self.len
                    ),
                )
            })?;
        let size = IMAGE_SIZE * IMAGE_SIZE;
        let pixels = self.images[start * size..end * size].to_vec();
        Ok(Tensor::from_vec(
            pixels,
            [count, 1, IMAGE_SIZE, IMAGE_SIZE],
            device,
        )?)
    }
}

/// `stem.gz` if it exists in `dir`, else `stem`, else none.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
}

/// The dims and bytes of a u8 IDX array, or an error saying what `what` should have been.
fn u8_contents(array: IdxArray, path: &Path, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let dims = array.dims().to_vec();
    match array.into_data() {
        IdxData::U8(bytes) => Ok((dims, bytes)),
        other => Err(content_error(
            path,
            format!(
                "expected u8 {what} (IDX type 0x08), found {}",
                other.element_type()
            ),
        )),
    }
}

fn content_error(path: &Path, message: String) -> DataError {
    DataError::Content {
        path: path.display().to_string(),
        message,
    }
}
