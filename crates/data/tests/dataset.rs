//! Dataset discovery and validation on small files made here: where a dataset is looked for,
//! what a missing one says, and that mislabelled or mismatched files are refused with the file
//! and the fault named.

use std::path::Path;

use kiln_data::{write_idx, DataError, Dataset, DatasetKind, Encoding, IdxArray, IdxData, Split};

/// Writes an MNIST-shaped test split of `n` images (image i filled with i) into `dir`.
fn write_split(dir: &Path, n: usize, labels: Vec<u8>) {
    let pixels = (0..n).flat_map(|i| [i as u8; 784]).collect();
    let images = IdxArray::new(vec![n, 28, 28], IdxData::U8(pixels)).unwrap();
    let labels = IdxArray::new(vec![labels.len()], IdxData::U8(labels)).unwrap();
    write_idx(
        dir.join("t10k-images-idx3-ubyte.gz"),
        &images,
        Encoding::Gzip,
    )
    .unwrap();
    // Raw, without .gz: either form is found.
    write_idx(dir.join("t10k-labels-idx1-ubyte"), &labels, Encoding::Raw).unwrap();
}

fn load(dir: &Path) -> kiln_data::Result<Dataset> {
    Dataset::load(DatasetKind::Mnist, Split::Test, Some(dir))
}

#[test]
fn a_small_split_loads_from_the_dir_or_its_dataset_subdir() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mnist");
    std::fs::create_dir(&dir).unwrap();
    write_split(&dir, 3, vec![7, 0, 9]);
    for given in [&dir, &root.path().to_path_buf()] {
        let dataset = load(given).unwrap();
        assert_eq!(dataset.dir(), dir);
        assert_eq!((dataset.len(), dataset.labels()), (3, &[7, 0, 9][..]));
        assert_eq!(dataset.image(2), &[2; 784][..]);
        assert_eq!(dataset.label_counts(), [1, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
    }
    // The train split is not there, and the error says where it looked and for what.
    let err = Dataset::load(DatasetKind::Mnist, Split::Train, Some(&dir)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(
        message.starts_with(&format!(
            "mnist train set not found: looked in {} (no train-images-idx3-ubyte[.gz] or \
             train-labels-idx1-ubyte[.gz]), {}/mnist (no such directory); ",
            dir.display(),
            dir.display()
        )),
        "{message}"
    );
    assert!(!message.contains('\n'));
}

#[test]
fn a_missing_dataset_says_how_to_get_it() {
    let nowhere = Path::new("/nonexistent/kiln-data");
    let message = Dataset::load(DatasetKind::FashionMnist, Split::Train, Some(nowhere))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("/nonexistent/kiln-data (no such directory)"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install dataset-fashion-mnist"),
        "{message}"
    );
    let message = load(nowhere).unwrap_err().to_string();
    assert!(message.contains("data/mnist"), "{message}");
}

#[test]
fn bad_contents_are_refused_naming_the_file() {
    /// What is wrong, how to make the files, what the error says.
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 4] = [
        (
            "a label that is not a class",
            |dir| write_split(dir, 3, vec![1, 10, 2]),
            "t10k-labels-idx1-ubyte: label 10 at index 1 is not a class (0 to 9)",
        ),
        (
            "fewer labels than images",
            |dir| write_split(dir, 3, vec![1, 2]),
            "t10k-labels-idx1-ubyte: holds 2 labels but ",
        ),
        (
            "images that are not 28x28",
            |dir| {
                write_split(dir, 1, vec![1]);
                let images = IdxArray::new(vec![1, 28, 27], IdxData::U8(vec![0; 756])).unwrap();
                write_idx(
                    dir.join("t10k-images-idx3-ubyte.gz"),
                    &images,
                    Encoding::Raw,
                )
                .unwrap();
            },
            "t10k-images-idx3-ubyte.gz: expected images of [N, 28, 28], found dims [1, 28, 27]",
        ),
        (
            "float images",
            |dir| {
                write_split(dir, 1, vec![1]);
                let images = IdxArray::new(vec![1, 28, 28], IdxData::F32(vec![0.0; 784])).unwrap();
                write_idx(
                    dir.join("t10k-images-idx3-ubyte.gz"),
                    &images,
                    Encoding::Raw,
                )
                .unwrap();
            },
            "t10k-images-idx3-ubyte.gz: expected u8 images (IDX type 0x08), found f32",
        ),
    ];
    for (what, make, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path());
        let message = load(dir.path()).unwrap_err().to_string();
        assert!(message.contains(expected), "{what}: {message}");
        assert!(
            message.starts_with(&dir.path().display().to_string()),
            "{what}: {message}"
        );
    }
}

#[test]
fn a_truncated_dataset_file_names_itself_and_the_shortfall() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), 10, vec![0; 10]);
    let path = dir.path().join("t10k-labels-idx1-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}: header says [10] u8 (10 bytes of payload) but the file holds 6 bytes (6 of the \
             10 entries)",
            path.display()
        )
    );
}

#[test]
fn names_parse() {
    assert_eq!("mnist".parse::<DatasetKind>().unwrap(), DatasetKind::Mnist);
    assert_eq!(
        "fashion-mnist".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
    let message = "cifar".parse::<DatasetKind>().unwrap_err().to_string();
    assert_eq!(
        message,
        "dataset: unknown dataset \"cifar\": expected mnist or fashion-mnist"
    );
}

#[test]
fn a_subset_holds_its_images_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), 6, vec![5, 4, 3, 2, 1, 0]);
    let all = load(dir.path()).unwrap();
    let part = all.subset(2, 3).unwrap();
    assert_eq!(part.len(), 3);
    assert_eq!(part.labels(), &[3, 2, 1]);
    // Image i is filled with i.
    assert_eq!(part.image(0), &[2u8; 784][..]);
    assert_eq!(part.image(2), &[4u8; 784][..]);
    assert_eq!(part.kind(), all.kind());
    for (start, count) in [(4, 3), (0, 0), (7, 1)] {
        let message = all.subset(start, count).unwrap_err().to_string();
        assert!(message.contains("6 images"), "{message}");
    }
}
