//! The batch loader on MNIST's test split (and a 4-image set): each epoch visits every image
//! exactly once, the order depends only on (seed, epoch), drop_last decides the short last
//! batch, pixels land exactly on the scale's ends, and the shuffle is uniform.

use std::path::{Path, PathBuf};

use kiln_data::{
    write_idx, Dataset, DatasetKind, Encoding, IdxArray, IdxData, Loader, LoaderOptions, Scale,
    Split,
};

/// The committed MNIST: beside the sources this was built from, else (a binary carried to a GPU
/// machine) where `kiln` looks, `$KILN_DATA_DIR` or data/mnist under the working directory.
fn mnist_test() -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let dir = dir.exists().then_some(dir);
    Dataset::load(DatasetKind::Mnist, Split::Test, dir.as_deref()).unwrap()
}

fn options(batch_size: usize, drop_last: bool, seed: u64) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        drop_last,
        seed,
        ..Default::default()
    }
}

#[test]
fn each_epoch_visits_every_image_once_in_a_seeded_order() {
    let dataset = mnist_test();
    let loader = Loader::new(&dataset, options(64, false, 42)).unwrap();
    let first = loader.permutation(0);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert!(sorted.iter().copied().eq(0..10000), "not a permutation");

    assert_eq!(
        first,
        loader.permutation(0),
        "same seed and epoch, same order"
    );
    assert_ne!(first, loader.permutation(1), "epochs differ");
    let other_seed = Loader::new(&dataset, options(64, false, 43)).unwrap();
    assert_ne!(first, other_seed.permutation(0), "seeds differ");
    assert_ne!(first, sorted, "shuffled");

    // The batches follow the order: labels and pixels are those of the permuted images.
    let mut seen = vec![0u32; 10000];
    let mut position = 0;
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let labels = batch.labels.to_vec::<u32>().unwrap();
        let images = batch.images.to_vec::<f32>().unwrap();
        assert_eq!(batch.images.dims()[1..], [1, 28, 28]);
        for (k, &label) in labels.iter().enumerate() {
            let index = first[position + k] as usize;
            seen[index] += 1;
            assert_eq!(label, u32::from(dataset.labels()[index]));
            let pixel = dataset.image(index)[400];
            assert_eq!(images[k * 784 + 400], pixel as f32 / 127.5 - 1.0);
        }
        position += labels.len();
    }
    assert!(seen.iter().all(|&count| count == 1));
}

#[test]
fn drop_last_decides_the_short_batch() {
    let dataset = mnist_test();
    // 10000 = 156 * 64 + 16.
    let keep = Loader::new(&dataset, options(64, false, 0)).unwrap();
    let sizes: Vec<usize> = keep.epoch(3).map(|b| b.unwrap().labels.dims()[0]).collect();
    assert_eq!((sizes.len(), keep.batches_per_epoch()), (157, 157));
    assert!(sizes[..156].iter().all(|&s| s == 64) && sizes[156] == 16);

    let drop = Loader::new(&dataset, options(64, true, 0)).unwrap();
    let epoch = drop.epoch(3);
    assert_eq!(epoch.len(), 156);
    assert!(epoch.map(|b| b.unwrap().labels.dims()[0]).all(|s| s == 64));

    // A batch larger than the dataset: one short batch, or none.
    assert_eq!(
        Loader::new(&dataset, options(20000, false, 0))
            .unwrap()
            .epoch(0)
            .count(),
        1
    );
    assert_eq!(
        Loader::new(&dataset, options(20000, true, 0))
            .unwrap()
            .epoch(0)
            .count(),
        0
    );
    assert!(Loader::new(&dataset, options(0, false, 0)).is_err());
}

#[test]
fn pixels_land_exactly_on_the_scales_ends() {
    let dataset = mnist_test();
    let all: Vec<u32> = (0..100).collect();
    for (scale, low, high) in [
        (Scale::MinusOneToOne, -1.0, 1.0),
        (Scale::ZeroToOne, 0.0, 1.0),
    ] {
        let loader = Loader::new(
            &dataset,
            LoaderOptions {
                scale,
                ..Default::default()
            },
        )
        .unwrap();
        let images = loader.batch(&all).unwrap().images.to_vec::<f32>().unwrap();
        let pixels = &dataset.images()[..100 * 784];
        for (&value, &pixel) in images.iter().zip(pixels) {
            let expected = low + (high - low) * f64::from(pixel) / 255.0;
            assert!(
                (f64::from(value) - expected).abs() < 1e-6,
                "{scale:?}: {pixel} -> {value}"
            );
            if pixel == 0 {
                assert_eq!(value, low as f32);
            }
            if pixel == 255 {
                assert_eq!(value, high as f32);
            }
        }
        assert!(pixels.contains(&0) && pixels.contains(&255));
    }
    assert!(Loader::new(&dataset, LoaderOptions::default())
        .unwrap()
        .batch(&[10000])
        .is_err());
}

/// A dataset of `n` blank images in `dir`.
fn tiny_dataset(dir: &Path, n: usize) -> Dataset {
    let images = IdxArray::new(vec![n, 28, 28], IdxData::U8(vec![0; n * 784])).unwrap();
    let labels = IdxArray::new(vec![n], IdxData::U8(vec![0; n])).unwrap();
    write_idx(dir.join("t10k-images-idx3-ubyte"), &images, Encoding::Raw).unwrap();
    write_idx(dir.join("t10k-labels-idx1-ubyte"), &labels, Encoding::Raw).unwrap();
    Dataset::load(DatasetKind::Mnist, Split::Test, Some(dir)).unwrap()
}

#[test]
fn every_order_of_four_images_is_equally_likely() {
    let dir = tempfile::tempdir().unwrap();
    let loader = Loader::new(&tiny_dataset(dir.path(), 4), options(4, false, 5)).unwrap();
    let epochs = 24_000;
    let mut counts = std::collections::HashMap::new();
    for epoch in 0..epochs {
        *counts.entry(loader.permutation(epoch)).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), 24, "all 4! orders occur");
    // Chi-square with 23 degrees of freedom: P(X > 49.7) = 0.001 for a uniform shuffle.
    let expected = epochs as f64 / 24.0;
    let chi_square: f64 = counts
        .values()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    assert!(chi_square < 49.7, "chi-square {chi_square}: {counts:?}");
    // One image: one order, and no draws.
    let single = tempfile::tempdir().unwrap();
    let loader = Loader::new(&tiny_dataset(single.path(), 1), options(4, true, 5)).unwrap();
    assert_eq!(loader.permutation(7), [0]);
    assert_eq!(loader.epoch(7).count(), 0);
}

#[test]
fn a_device_that_is_not_there_fails_at_construction() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = tiny_dataset(dir.path(), 2);
    let cuda = LoaderOptions {
        device: kiln_tensor::Device::Cuda(1000),
        ..Default::default()
    };
    let message = Loader::new(&dataset, cuda).unwrap_err().to_string();
    assert!(message.contains("cuda:1000"), "{message}");
}

#[test]
fn skipping_batches_lands_where_taking_them_would() {
    let dataset = mnist_test();
    let loader = Loader::new(&dataset, options(64, false, 3)).unwrap();
    let all: Vec<_> = loader.epoch(2).map(|b| b.unwrap()).collect();
    for skip in [0, 1, 5, all.len() - 1] {
        let mut epoch = loader.epoch(2).skip(skip);
        let batch = epoch.next().unwrap().unwrap();
        assert_eq!(
            batch.labels.to_vec::<u32>().unwrap(),
            all[skip].labels.to_vec::<u32>().unwrap(),
            "skip {skip}"
        );
        assert_eq!(epoch.count(), all.len() - skip - 1, "skip {skip}");
    }
    assert!(loader.epoch(2).nth(all.len()).is_none());
    assert_eq!(loader.epoch(2).skip(all.len() + 3).count(), 0);
}

/// On a GPU the dataset is held on the device and batches are gathered there: the same
/// batches as the CPU's. Skipped without a GPU; with KILN_REQUIRE_CUDA=1, fails instead.
#[test]
fn batches_gathered_on_a_gpu_equal_the_cpu_batches() {
    let Some(device) =
        kiln_tensor::cuda::test_device("batches_gathered_on_a_gpu_equal_the_cpu_batches")
    else {
        return;
    };
    let dataset = mnist_test();
    for scale in [Scale::MinusOneToOne, Scale::ZeroToOne] {
        let make = |device| {
            let options = LoaderOptions {
                scale,
                device,
                ..options(100, false, 9)
            };
            Loader::new(&dataset, options).unwrap()
        };
        let (cpu, gpu) = (make(kiln_tensor::Device::Cpu), make(device));
        for (a, b) in cpu.epoch(1).zip(gpu.epoch(1)).step_by(13) {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(b.images.device(), device);
            assert_eq!(a.images.shape(), b.images.shape());
            assert_eq!(
                a.images.to_vec::<f32>().unwrap(),
                b.images.to_vec::<f32>().unwrap()
            );
            assert_eq!(
                a.labels.to_vec::<u32>().unwrap(),
                b.labels.to_vec::<u32>().unwrap()
            );
        }
    }
}
