//! Checkpoints: every dtype round-trips bit for bit, saving is atomic, damaged files are
//! errors (never panics), and loading into a model or optimizer that does not fit names the
//! checkpoint, the entry and both shapes or dtypes. Expected values are the inputs themselves
//! (a round trip must give them back) or what a run that never stopped gives.

use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use kiln_nn::checkpoint::{Checkpoint, CHECKSUM_KEY};
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::{Init, NnError, ParamStore};
use kiln_tensor::{DType, Device, Generator, Tensor, WithDType};

fn tensor<T: WithDType>(values: Vec<T>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, Device::Cpu).unwrap()
}

/// The files in `directory`, sorted.
fn listing(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A checkpoint with one entry of every kiln dtype, holding the values that are easiest to
/// get wrong: signed zeros, infinities, NaNs with payloads, subnormals, extremes.
fn every_dtype() -> Checkpoint {
    let mut checkpoint = Checkpoint::new();
    let entries = [
        ("u8", tensor(vec![0u8, 1, 127, 128, 255, 42], &[2, 3])),
        ("u32", tensor(vec![0u32, 1, u32::MAX, 0xDEAD_BEEF], &[4])),
        (
            "f16",
            tensor(
                [
                    0x0000u16, 0x8000, 0x7C00, 0xFC00, 0x7E01, 0x0001, 0x7BFF, 0x3C00,
                ]
                .map(f16::from_bits)
                .to_vec(),
                &[2, 2, 2],
            ),
        ),
        (
            "bf16",
            tensor(
                [
                    0x0000u16, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x7F7F, 0x3F80,
                ]
                .map(bf16::from_bits)
                .to_vec(),
                &[8],
            ),
        ),
        (
            "f32",
            tensor(
                [
                    0x0000_0000u32,
                    0x8000_0000,
                    0x7F80_0000,
                    0x7FC0_1234,
                    0x0000_0001,
                    0x3F80_0000,
                ]
                .map(f32::from_bits)
                .to_vec(),
                &[3, 2],
            ),
        ),
        (
            "f64",
            tensor(
                [
                    0x8000_0000_0000_0000u64,
                    0x7FF8_0000_0000_0ABC,
                    0x0000_0000_0000_0001,
                ]
                .map(f64::from_bits)
                .to_vec(),
                &[3],
            ),
        ),
        ("scalar", Tensor::scalar(2.5f32, Device::Cpu).unwrap()),
        ("empty", tensor(Vec::<f32>::new(), &[0, 4])),
    ];
    for (name, tensor) in &entries {
        checkpoint.insert(*name, tensor).unwrap();
    }
    checkpoint.set_meta("note", "every dtype");
    checkpoint
}

/// The raw bits of a tensor's elements, whatever its dtype.
fn bits(tensor: &Tensor) -> Vec<u64> {
    match tensor.dtype() {
        DType::U8 => tensor
            .to_vec::<u8>()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect(),
        DType::U32 => tensor
            .to_vec::<u32>()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect(),
        DType::F16 => tensor
            .to_vec::<f16>()
            .unwrap()
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::BF16 => tensor
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::F32 => tensor
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::F64 => tensor
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    }
}

fn assert_same_contents(got: &Checkpoint, expected: &Checkpoint) {
    assert_eq!(got.len(), expected.len());
    for (name, want) in expected.tensors() {
        let have = got
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` is missing"));
        assert_eq!(have.dtype(), want.dtype(), "{name}");
        assert_eq!(have.shape(), want.shape(), "{name}");
        assert_eq!(bits(have), bits(want), "{name}");
    }
    assert_eq!(got.metadata(), expected.metadata());
}

#[test]
fn every_dtype_round_trips_bit_for_bit() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("all.safetensors");
    let original = every_dtype();
    original.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    assert_same_contents(&loaded, &original);
    assert_eq!(loaded.meta("note"), Some("every dtype"));
    assert_eq!(listing(directory.path()), ["all.safetensors"]);
}

#[test]
fn the_file_is_safetensors_as_the_reference_crate_reads_it() {
    // Read back with the `safetensors` crate itself: dtype names, shapes and little-endian bytes.
    let bytes = every_dtype().to_bytes().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let u32s = file.tensor("u32").unwrap();
    assert_eq!(u32s.dtype(), safetensors::Dtype::U32);
    assert_eq!(u32s.shape(), [4]);
    assert_eq!(&u32s.data()[12..16], &0xDEAD_BEEFu32.to_le_bytes());
    let f16s = file.tensor("f16").unwrap();
    assert_eq!(
        (f16s.dtype(), f16s.shape()),
        (safetensors::Dtype::F16, &[2usize, 2, 2][..])
    );
    assert_eq!(
        file.tensor("bf16").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    assert_eq!(file.tensor("scalar").unwrap().shape(), [0usize; 0]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().as_ref().unwrap();
    assert_eq!(
        metadata.get("note").map(String::as_str),
        Some("every dtype")
    );
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_and_no_temporary() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("model.safetensors");
    let mut previous = Checkpoint::new();
    previous
        .insert("w", &tensor(vec![1.0f32, 2.0], &[2]))
        .unwrap();
    previous.set_step(10);
    previous.save(&path).unwrap();
    let previous_bytes = std::fs::read(&path).unwrap();

    // The same writer `save` uses, failing after the whole new checkpoint is written.
    let mut next = Checkpoint::new();
    next.insert("w", &tensor(vec![3.0f32, 4.0], &[2])).unwrap();
    next.set_step(20);
    let next_bytes = next.to_bytes().unwrap();
    let err = kiln_fs::write_file_atomically(&path, |out| {
        out.write_all(&next_bytes)?;
        Err(std::io::Error::other("disk full (injected)"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("injected"));
    assert_eq!(std::fs::read(&path).unwrap(), previous_bytes);
    assert_eq!(Checkpoint::load(&path).unwrap().step().unwrap(), 10);
    assert_eq!(listing(directory.path()), ["model.safetensors"]);

    // A save that fails at the rename (the target is a non-empty directory) removes its
    // temporary file too, and says which path it could not write.
    let blocked = directory.path().join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let err = next.save(&blocked).unwrap_err();
    assert!(
        matches!(
            err,
            NnError::Io {
                action: "write",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("blocked.safetensors"), "{err}");
    assert_eq!(
        listing(directory.path()),
        ["blocked.safetensors", "model.safetensors"]
    );

    // And a save that succeeds replaces the file whole.
    next.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap().step().unwrap(), 20);
    assert_eq!(
        listing(directory.path()),
        ["blocked.safetensors", "model.safetensors"]
    );
}

/// Issue 24: a bit flipped in a tensor's bytes leaves a well-formed safetensors file that loads
/// into a silently different run; the checksum saved in the metadata makes it an error naming
/// the file. A file without a checksum (another tool's, or kiln's before it kept one) loads.
#[test]
fn a_flipped_bit_in_a_tensor_is_a_checksum_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("all.safetensors");
    every_dtype().save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let (header_len, _) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let data_start = 8 + header_len;
    for at in [data_start, (data_start + good.len()) / 2, good.len() - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let error = Checkpoint::load(&path).unwrap_err();
        assert!(matches!(error, NnError::Format { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("all.safetensors") && message.contains("checksum"),
            "{message}"
        );
    }
    // The same tensors written by the reference crate, with no checksum: they load.
    let file = safetensors::SafeTensors::deserialize(&good).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = file.tensors();
    let plain = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, plain).unwrap();
    assert_same_contents(
        &Checkpoint::load(&path).unwrap(),
        &strip_metadata(every_dtype()),
    );
}

/// Issue 24: a flipped bit anywhere in the header (the size field, and the JSON of names,
/// dtypes, shapes, offsets and metadata, a model's config among them) is an error naming the
/// file, because the checksum covers the metadata too. The one exception is a flip in the
/// checksum's own key: the file then loads unchecked, with every tensor and metadata entry as
/// saved and the checksum under the damaged key.
#[test]
fn a_flipped_bit_anywhere_in_the_header_is_an_error_or_changes_nothing() {
    let mut original = every_dtype();
    original.set_meta("kiln.config", r#"{"hidden": 256, "lr": 0.0002}"#);
    let bytes = original.to_bytes().unwrap();
    let (header_len, _) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let (mut refused, mut unchecked) = (0, 0);
    for at in 0..8 + header_len {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            match Checkpoint::from_bytes(&flipped, "flipped.safetensors") {
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("flipped.safetensors") && !message.contains('\n'),
                        "byte {at} bit {bit}: {message}"
                    );
                    refused += 1;
                }
                Ok(loaded) => {
                    let mut metadata = loaded.metadata().clone();
                    let stray: Vec<String> = metadata
                        .keys()
                        .filter(|key| !original.metadata().contains_key(*key))
                        .cloned()
                        .collect();
                    assert!(
                        stray.len() == 1 && stray[0].len() == CHECKSUM_KEY.len(),
                        "byte {at} bit {bit} loaded with metadata {metadata:?}"
                    );
                    metadata.remove(&stray[0]);
                    assert_eq!(&metadata, original.metadata(), "byte {at} bit {bit}");
                    assert_same_contents(
                        &strip_metadata(loaded),
                        &strip_metadata(original.clone()),
                    );
                    unchecked += 1;
                }
            }
        }
    }
    // The checksum's key: 13 bytes, and not every flip of them leaves valid JSON.
    assert!(
        unchecked <= 8 * CHECKSUM_KEY.len(),
        "{unchecked} flips loaded, {refused} refused"
    );
}

/// A file whose checksum covers its tensors alone (the form kiln wrote before the checksum
/// took in the metadata) still loads; its checksum is still checked.
#[test]
fn a_tensors_only_checksum_still_loads_and_is_checked() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensors_only_checksum.safetensors");
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.meta("kiln.model"), Some("gan"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let error = Checkpoint::from_bytes(&bytes, &path).unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
}

/// The checkpoint fuzzer's seeds (fuzz/make_checkpoint_seeds.py computes the checksum on its
/// own) load: the script and the loader agree on the checksum.
#[test]
fn the_fuzz_seeds_load() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds-checkpoint");
    for name in ["kiln.safetensors", "plain.safetensors", "empty.safetensors"] {
        let loaded = Checkpoint::load(seeds.join(name));
        assert!(loaded.is_ok(), "{name}: {:?}", loaded.err());
    }
}

/// `checkpoint`'s tensors without its metadata.
fn strip_metadata(checkpoint: Checkpoint) -> Checkpoint {
    let mut plain = Checkpoint::new();
    for (name, tensor) in checkpoint.tensors() {
        plain.insert(name.clone(), tensor).unwrap();
    }
    plain
}

#[test]
fn a_missing_file_names_the_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("nowhere.safetensors");
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(matches!(err, NnError::Io { action: "read", .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("nowhere.safetensors"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn truncated_and_corrupt_files_are_format_errors() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("damaged.safetensors");
    let bytes = every_dtype().to_bytes().unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Every cut: in the size field, in the header, in the data, one byte short.
    for cut in [
        0,
        4,
        8,
        9,
        8 + header_len / 2,
        8 + header_len,
        bytes.len() - 1,
    ] {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    let mut appended = bytes.clone();
    appended.extend_from_slice(b"extra");
    cases.push(("appended bytes".into(), appended));
    cases.push(("text".into(), b"this is not a checkpoint at all".to_vec()));
    let mut bad_json = bytes.clone();
    bad_json[8] = b'[';
    cases.push(("header not an object".into(), bad_json));
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("huge header size".into(), huge));
    for (what, contents) in cases {
        std::fs::write(&path, &contents).unwrap();
        match Checkpoint::load(&path) {
            Err(err @ NnError::Format { .. }) => {
                let message = err.to_string();
                assert!(message.contains("damaged.safetensors"), "{what}: {message}");
                assert!(!message.contains('\n'), "{what}: one line: {message}");
            }
            other => panic!("{what}: expected a format error, got {other:?}"),
        }
    }
    // Every truncation is caught, not only the chosen ones.
    for cut in 0..bytes.len() {
        assert!(
            Checkpoint::from_bytes(&bytes[..cut], "cut").is_err(),
            "cut at {cut}"
        );
    }
}

/// A `View` over raw bytes, for writing files kiln itself would not.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

#[test]
fn an_unsupported_dtype_names_the_entry_and_dtype() {
    let raw = Raw {
        dtype: safetensors::Dtype::I64,
        shape: vec![2],
        data: [-1i64, 7].iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let bytes = safetensors::serialize([("indices", &raw)], None).unwrap();
    let err = Checkpoint::from_bytes(&bytes, "torch.safetensors").unwrap_err();
    assert!(matches!(err, NnError::UnsupportedDType { .. }), "{err:?}");
    let message = err.to_string();
    for needle in ["torch.safetensors", "`indices`", "I64"] {
        assert!(message.contains(needle), "`{message}` lacks {needle}");
    }
}

/// A two-layer model's store: `fc.weight` [out, 3], `fc.bias` [out], a buffer `bn.count`.
fn model(seed: u64, dtype: DType, out: usize) -> ParamStore {
    let store = ParamStore::new(Device::Cpu, dtype, seed);
    let root = store.root();
    let fc = root.sub("fc");
    fc.parameter(
        "weight",
        [out, 3],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
        },
    )
    .unwrap();
    fc.parameter(
        "bias",
        [out],
        Init::Uniform {
            low: -1.0,
            high: 1.0,
        },
    )
    .unwrap();
    root.sub("bn")
        .buffer("count", &Tensor::scalar(3.0f32, Device::Cpu).unwrap())
        .unwrap();
    store
}

fn values(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    store
        .state_dict()
        .into_iter()
        .map(|(name, tensor)| (name, tensor.to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn a_store_round_trips_under_a_prefix_and_bare() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("model.safetensors");
    let trained = model(1, DType::F32, 2);
    for prefix in ["model", ""] {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store(prefix, &trained).unwrap();
        let names: Vec<&str> = checkpoint
            .tensors()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        if prefix.is_empty() {
            // Bare names: what PyTorch's load_state_dict wants.
            assert_eq!(names, ["fc.weight", "fc.bias", "bn.count"]);
        } else {
            assert_eq!(
                names,
                ["model.fc.weight", "model.fc.bias", "model.bn.count"]
            );
        }
        checkpoint.save(&path).unwrap();
        let fresh = model(2, DType::F32, 2);
        assert_ne!(values(&fresh), values(&trained));
        Checkpoint::load(&path)
            .unwrap()
            .load_store(prefix, &fresh)
            .unwrap();
        assert_eq!(values(&fresh), values(&trained));
    }
}

#[test]
fn the_checkpoint_is_a_snapshot_not_a_view() {
    let store = model(1, DType::F32, 2);
    let mut checkpoint = Checkpoint::new();
    checkpoint.insert_store("", &store).unwrap();
    let before = checkpoint.get("fc.bias").unwrap().to_vec::<f32>().unwrap();
    let bias = store.get("fc.bias").unwrap();
    bias.set(&Tensor::zeros([2], DType::F32, Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(
        checkpoint.get("fc.bias").unwrap().to_vec::<f32>().unwrap(),
        before
    );
}

#[test]
fn loading_into_a_model_that_does_not_fit_names_entry_and_both_shapes() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("fit.safetensors");
    let mut checkpoint = Checkpoint::new();
    checkpoint
        .insert_store("model", &model(1, DType::F32, 2))
        .unwrap();
    checkpoint.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();

    let wider = model(2, DType::F32, 5);
    let before = values(&wider);
    let message = loaded.load_store("model", &wider).unwrap_err().to_string();
    for needle in ["fit.safetensors", "`fc.weight`", "[2, 3] f32", "[5, 3] f32"] {
        assert!(message.contains(needle), "`{message}` lacks {needle}");
    }
    assert_eq!(values(&wider), before, "nothing is loaded on an error");

    let double = model(2, DType::F64, 2);
    let message = loaded.load_store("model", &double).unwrap_err().to_string();
    for needle in ["fit.safetensors", "`fc.weight`", "[2, 3] f32", "[2, 3] f64"] {
        assert!(message.contains(needle), "`{message}` lacks {needle}");
    }

    // A prefix the checkpoint does not have: the first entry is missing.
    let message = loaded
        .load_store("generator", &model(2, DType::F32, 2))
        .unwrap_err()
        .to_string();
    for needle in [
        "fit.safetensors",
        "generator",
        "missing `fc.weight`",
        "[2, 3] f32",
    ] {
        assert!(message.contains(needle), "`{message}` lacks {needle}");
    }
    let message = loaded.tensor("model.fc.gamma").unwrap_err().to_string();
    assert!(message.contains("fit.safetensors") && message.contains("`model.fc.gamma`"));
}

#[test]
fn step_generators_and_metadata_round_trip() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("meta.safetensors");
    let mut noise = Generator::new(0xFEED_F00D_1234_5678);
    let _ = noise.normal_f32(1001, 0.0, 1.0);
    let mut checkpoint = Checkpoint::new();
    checkpoint.set_step(u64::MAX - 1);
    checkpoint.insert_generator("noise", &noise);
    checkpoint.set_meta("model", "dcgan");
    checkpoint.save(&path).unwrap();

    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.step().unwrap(), u64::MAX - 1);
    assert_eq!(loaded.meta("model"), Some("dcgan"));
    assert_eq!(
        loaded.meta("generator.noise.seed"),
        Some("18369602394044782200") // 0xFEED_F00D_1234_5678
    );
    let mut restored = loaded.generator("noise").unwrap();
    assert_eq!(restored, noise);
    // The restored generator goes on with the same draws.
    assert_eq!(restored.uniform_f64(17), noise.uniform_f64(17));

    let message = loaded.generator("data").unwrap_err().to_string();
    assert!(message.contains("meta.safetensors") && message.contains("generator.data.seed"));
    let mut bad = Checkpoint::new();
    bad.set_meta("step", "twelve");
    let message = bad.step().unwrap_err().to_string();
    assert!(
        message.contains("`step`") && message.contains("twelve"),
        "{message}"
    );
    assert!(Checkpoint::new().step().is_err());
}

/// Trains a model with Adam; a run that saves at step 3 and resumes in a fresh process
/// (fresh store, fresh optimizer, everything from the file) takes the same 4th step, bit for
/// bit, as the run that never stopped.
#[test]
fn training_resumes_from_a_checkpoint_bit_for_bit() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("train.safetensors");
    let config = AdamConfig {
        lr: 0.01,
        weight_decay: 0.01,
        ..Default::default()
    };
    // loss = sum((W x + b - target)^2) with x and target drawn from `data`.
    let train_step = |store: &ParamStore, adam: &mut Adam, data: &mut Generator| {
        let x = Tensor::randn([3, 4], 0.0, 1.0, DType::F32, Device::Cpu, data).unwrap();
        let target = Tensor::randn([2, 4], 0.0, 1.0, DType::F32, Device::Cpu, data).unwrap();
        let weight = store.get("fc.weight").unwrap(); // [2, 3]
        let bias = store.get("fc.bias").unwrap().reshape([2, 1]).unwrap();
        let output = weight.matmul(&x).unwrap().add(&bias).unwrap(); // [2, 4]
        let loss = output
            .sub(&target)
            .unwrap()
            .square()
            .unwrap()
            .sum_all()
            .unwrap();
        adam.step(&loss.backward().unwrap()).unwrap();
    };

    let store = model(1, DType::F32, 2);
    let mut adam = Adam::new(store.parameters(), config).unwrap();
    let mut data = Generator::new(99);
    for _ in 0..3 {
        train_step(&store, &mut adam, &mut data);
    }
    let mut checkpoint = Checkpoint::new();
    checkpoint.insert_store("model", &store).unwrap();
    checkpoint.insert_optimizer("optimizer", &adam).unwrap();
    checkpoint.insert_generator("data", &data);
    checkpoint.set_step(3);
    checkpoint.save(&path).unwrap();
    train_step(&store, &mut adam, &mut data);

    let loaded = Checkpoint::load(&path).unwrap();
    let resumed = model(2, DType::F32, 2);
    loaded.load_store("model", &resumed).unwrap();
    let mut resumed_adam = Adam::new(resumed.parameters(), config).unwrap();
    loaded
        .load_optimizer("optimizer", &mut resumed_adam)
        .unwrap();
    let mut resumed_data = loaded.generator("data").unwrap();
    assert_eq!(loaded.step().unwrap(), 3);
    train_step(&resumed, &mut resumed_adam, &mut resumed_data);

    let bits_of = |store: &ParamStore| -> Vec<Vec<u32>> {
        values(store)
            .into_iter()
            .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits_of(&resumed), bits_of(&store));

    // The optimizer state must fit too: a model of another width is refused by name.
    let wider = model(3, DType::F32, 5);
    let mut wider_adam = Adam::new(wider.parameters(), config).unwrap();
    let message = loaded
        .load_optimizer("optimizer", &mut wider_adam)
        .unwrap_err()
        .to_string();
    // The first mismatch in file order (safetensors sorts by dtype, then name): fc.bias.
    for needle in [
        "train.safetensors",
        "`exp_avg.fc.bias`",
        "[2] f32",
        "[5] f32",
    ] {
        assert!(message.contains(needle), "`{message}` lacks {needle}");
    }
}
