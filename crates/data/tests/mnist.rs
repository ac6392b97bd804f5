//! The committed MNIST (data/mnist): both splits parse, each file's uncompressed bytes have the
//! MD5 that data/README.md gives, the label histograms are MNIST's published counts, and a PNG
//! grid of the first 64 training digits decodes back to exactly their pixels. Fashion-MNIST gets
//! the same structural checks when it is installed (apt-get install dataset-fashion-mnist).

use std::path::{Path, PathBuf};

use kiln_data::dataset::IMAGE_SIZE;
use kiln_data::{
    encode_idx, read_idx, Dataset, DatasetKind, Encoding, Grid, Loader, LoaderOptions, Scale, Split,
};
use kiln_tensor::Device;
use md5::{Digest, Md5};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mnist_dir() -> PathBuf {
    repo_root().join("data/mnist")
}

/// The MD5 data/README.md lists for `file` (its "Checksums" table: `| `file` | `md5` |`).
fn readme_md5(file: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("data/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|line| line.starts_with(&format!("| `{file}`")))
        .unwrap_or_else(|| panic!("data/README.md has no checksum row for {file}"));
    row.split('`').nth(3).unwrap().to_string()
}

#[test]
fn every_file_matches_the_readme_checksum() {
    for stem in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let array = read_idx(mnist_dir().join(format!("{stem}.gz"))).unwrap();
        // The reader accepts only exact files, so re-encoding gives back the uncompressed bytes.
        let bytes = encode_idx(&array, Encoding::Raw);
        let digest: String = Md5::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, readme_md5(stem), "{stem}");
    }
}

#[test]
fn both_splits_have_mnists_counts() {
    // LeCun et al.'s published per-digit counts (also torchvision's MNIST.targets.bincount()).
    let expected = [
        (
            Split::Train,
            60000,
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        ),
        (
            Split::Test,
            10000,
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
    ];
    for (split, len, counts) in expected {
        let dataset = Dataset::load(DatasetKind::Mnist, split, Some(&mnist_dir())).unwrap();
        assert_eq!(dataset.len(), len);
        assert_eq!(dataset.images().len(), len * IMAGE_SIZE * IMAGE_SIZE);
        assert_eq!(dataset.label_counts(), counts, "{split}");
    }
}

#[test]
fn a_grid_of_the_first_64_digits_decodes_to_their_pixels() {
    let train = Dataset::load(DatasetKind::Mnist, Split::Train, Some(&mnist_dir())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid {
        columns: 8,
        padding: 2,
        range: Scale::MinusOneToOne,
    };
    // The same 64 digits twice: as u8, and as the loader's f32 in [-1, 1].
    let as_u8 = train.images_tensor(0, 64, Device::Cpu).unwrap();
    let loader = Loader::new(&train, LoaderOptions::default()).unwrap();
    let first_64: Vec<u32> = (0..64).collect();
    let as_f32 = loader.batch(&first_64).unwrap().images;
    for (name, images) in [("u8.png", as_u8), ("f32.png", as_f32)] {
        let path = dir.path().join(name);
        grid.save(&images, &path).unwrap();

        let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale, "{name}");
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "{name}");
        // 8 tiles of 28 and 9 strips of 2 padding each way.
        let side = 8 * 28 + 9 * 2;
        assert_eq!((info.width, info.height), (side, side), "{name}");
        let side = side as usize;

        for n in 0..64 {
            let (x0, y0) = (2 + (n % 8) * 30, 2 + (n / 8) * 30);
            for y in 0..28 {
                let row = &pixels[(y0 + y) * side + x0..][..28];
                assert_eq!(
                    row,
                    &train.image(n)[y * 28..][..28],
                    "{name}: digit {n} row {y}"
                );
            }
        }
        // Padding is gray: the first row and the column left of each tile.
        assert!(pixels[..side]
            .iter()
            .all(|&p| p == kiln_data::grid::PADDING_GRAY));
        assert!((0..side).all(|y| pixels[y * side] == kiln_data::grid::PADDING_GRAY));
    }
}

#[test]
fn fashion_mnist_when_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.is_dir() {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    for (split, len) in [(Split::Train, 60000), (Split::Test, 10000)] {
        let dataset = Dataset::load(DatasetKind::FashionMnist, split, None).unwrap();
        assert_eq!(dataset.dir(), dir);
        assert_eq!(dataset.len(), len);
        // Fashion-MNIST is balanced: every class has a tenth of the images.
        assert_eq!(dataset.label_counts(), [len / 10; 10], "{split}");
    }
}
