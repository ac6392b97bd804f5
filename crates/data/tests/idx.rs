//! The IDX reader and writer: every element type, rank and size round-trips, raw and gzip, in
//! memory and through files; and every kind of bad input — truncation at each byte, each header
//! byte flipped, wrong magic, overflowing dimensions, garbage in and after gzip — is an error
//! naming the file, never a panic or a large allocation.

use kiln_data::idx::{ElementType, MAX_RANK};
use kiln_data::{
    encode_idx, parse_idx, read_idx, write_idx, Encoding, IdxArray, IdxData, IdxFault,
};
use proptest::prelude::*;

/// Any IdxData of `element` with `n` values. Floats are drawn as bit patterns, so NaNs with
/// payloads, infinities, -0.0 and subnormals all occur.
fn data_strategy(element: ElementType, n: usize) -> BoxedStrategy<IdxData> {
    match element {
        ElementType::U8 => prop::collection::vec(any::<u8>(), n)
            .prop_map(IdxData::U8)
            .boxed(),
        ElementType::I8 => prop::collection::vec(any::<i8>(), n)
            .prop_map(IdxData::I8)
            .boxed(),
        ElementType::I16 => prop::collection::vec(any::<i16>(), n)
            .prop_map(IdxData::I16)
            .boxed(),
        ElementType::I32 => prop::collection::vec(any::<i32>(), n)
            .prop_map(IdxData::I32)
            .boxed(),
        ElementType::F32 => prop::collection::vec(any::<u32>().prop_map(f32::from_bits), n)
            .prop_map(IdxData::F32)
            .boxed(),
        ElementType::F64 => prop::collection::vec(any::<u64>().prop_map(f64::from_bits), n)
            .prop_map(IdxData::F64)
            .boxed(),
    }
}

/// Arrays of every element type and rank 1 to 8, with at most 4096 elements.
fn array_strategy() -> impl Strategy<Value = IdxArray> {
    let element = prop::sample::select(ElementType::ALL.to_vec());
    let dims = (1..=MAX_RANK).prop_flat_map(|rank| prop::collection::vec(1usize..=6, rank));
    (element, dims)
        .prop_filter("at most 4096 elements", |(_, dims)| {
            dims.iter().product::<usize>() <= 4096
        })
        .prop_flat_map(|(element, dims)| {
            let n = dims.iter().product();
            (Just(dims), data_strategy(element, n))
        })
        .prop_map(|(dims, data)| IdxArray::new(dims, data).unwrap())
}

/// Bitwise equality: NaN payloads must survive too.
fn same_bits(a: &IdxArray, b: &IdxArray) -> bool {
    a.dims() == b.dims() && encode_idx(a, Encoding::Raw) == encode_idx(b, Encoding::Raw)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn write_then_read_gives_back_the_array(array in array_strategy()) {
        for encoding in [Encoding::Raw, Encoding::Gzip] {
            let bytes = encode_idx(&array, encoding);
            let back = parse_idx(&bytes, "mem").unwrap();
            prop_assert!(same_bits(&array, &back), "{encoding:?}: {array:?} became {back:?}");
            prop_assert_eq!(back.element_type(), array.element_type());
        }
        // The raw layout is exactly the header then the big-endian payload.
        let raw = encode_idx(&array, Encoding::Raw);
        let header_len = 4 + 4 * array.dims().len();
        let size = array.element_type().size_in_bytes();
        prop_assert_eq!(raw.len(), header_len + array.data().len() * size);
        prop_assert_eq!(&raw[..4], &[0, 0, array.element_type().code(), array.dims().len() as u8]);
    }
}

#[test]
fn files_round_trip_and_gzip_is_told_by_its_magic_not_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let array = IdxArray::new(
        vec![3, 2],
        IdxData::F64(vec![1.5, -0.0, 3.0, 1e300, -7.25, 0.1]),
    )
    .unwrap();
    // A gzip file with no .gz, and a raw one with .gz: both read by content.
    for (name, encoding) in [("a.idx", Encoding::Gzip), ("b.idx.gz", Encoding::Raw)] {
        let path = dir.path().join(name);
        write_idx(&path, &array, encoding).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(
            on_disk.starts_with(&[0x1f, 0x8b]),
            encoding == Encoding::Gzip
        );
        assert!(same_bits(&read_idx(&path).unwrap(), &array));
    }
    // The writer leaves no temporary files behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.idx", "b.idx.gz"]);
}

/// `bytes` as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    let array = IdxArray::new(vec![4], IdxData::I16(vec![1, 2, 3, 4])).unwrap();
    let raw = encode_idx(&array, Encoding::Raw);
    let (front, back) = raw.split_at(7);
    let mut joined = gzip(front);
    joined.extend(gzip(back));
    assert!(same_bits(&parse_idx(&joined, "joined.gz").unwrap(), &array));
}

/// A small valid file: [2, 3] i16.
fn small_file() -> Vec<u8> {
    let array = IdxArray::new(vec![2, 3], IdxData::I16(vec![1, -2, 300, -400, 5, 32767])).unwrap();
    encode_idx(&array, Encoding::Raw)
}

fn fault(bytes: &[u8]) -> IdxFault {
    let err = parse_idx(bytes, "bad.idx").expect_err("bad input must fail");
    let message = err.to_string();
    assert!(
        message.starts_with("bad.idx: "),
        "error does not name the file: {message}"
    );
    assert!(!message.contains('\n'), "error is not one line: {message}");
    err.idx_fault()
        .cloned()
        .unwrap_or_else(|| panic!("not an IDX fault: {message}"))
}

#[test]
fn truncated_at_every_byte_is_an_error() {
    for encoding in [Encoding::Raw, Encoding::Gzip] {
        let array = IdxArray::new(vec![2, 3], IdxData::I16(vec![1, -2, 300, -400, 5, 32767]));
        let bytes = encode_idx(&array.unwrap(), encoding);
        for len in 0..bytes.len() {
            let fault = fault(&bytes[..len]);
            match encoding {
                Encoding::Raw => assert!(
                    matches!(
                        fault,
                        IdxFault::HeaderTruncated { .. } | IdxFault::Truncated { .. }
                    ),
                    "raw cut at {len}: {fault:?}"
                ),
                Encoding::Gzip => assert!(
                    matches!(
                        fault,
                        IdxFault::HeaderTruncated { .. }
                            | IdxFault::Truncated { .. }
                            | IdxFault::Gzip { .. }
                            | IdxFault::BadMagic { .. }
                            | IdxFault::CannotHold { .. }
                    ),
                    "gzip cut at {len}: {fault:?}"
                ),
            }
        }
    }
    // The message says what the header promised and what is there.
    let bytes = small_file();
    let message = parse_idx(&bytes[..bytes.len() - 5], "cut.idx")
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "cut.idx: header says [2, 3] i16 (12 bytes of payload) but the file holds 7 bytes \
         (1 of the 2 entries)"
    );
}

#[test]
fn a_byte_too_many_is_an_error() {
    let mut bytes = small_file();
    bytes.push(0);
    assert!(matches!(
        fault(&bytes),
        IdxFault::TooLong {
            found: Some(13),
            ..
        }
    ));
    let array = parse_idx(&small_file(), "ok").unwrap();
    let mut gzip_longer = encode_idx(&array, Encoding::Raw);
    gzip_longer.push(7);
    let gzip_longer = gzip(&gzip_longer);
    assert!(matches!(
        fault(&gzip_longer),
        IdxFault::TooLong { found: None, .. }
    ));
}

#[test]
fn every_header_byte_flipped_is_an_error_or_a_consistent_file() {
    let bytes = small_file();
    let header_len = 4 + 4 * 2;
    for position in 0..header_len {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[position] ^= flip;
            // A flip could only go unnoticed if it named another 2-byte type (there is none) or
            // kept the dims' product at 6 (no flip of 2 or 3 does), so every flip must fail.
            let fault = fault(&bad);
            let expected = match position {
                0 | 1 => matches!(fault, IdxFault::BadMagic { .. }),
                2 => matches!(
                    fault,
                    IdxFault::UnknownType { .. }
                        | IdxFault::Truncated { .. }
                        | IdxFault::TooLong { .. }
                ),
                3 => matches!(
                    fault,
                    IdxFault::BadRank { .. }
                        | IdxFault::HeaderTruncated { .. }
                        | IdxFault::Truncated { .. }
                        | IdxFault::ZeroDimension { .. }
                        | IdxFault::TooLong { .. }
                ),
                _ => matches!(
                    fault,
                    IdxFault::Truncated { .. }
                        | IdxFault::TooLong { .. }
                        | IdxFault::ZeroDimension { .. }
                        | IdxFault::TooLarge { .. }
                ),
            };
            assert!(expected, "byte {position} ^ {flip:#04x}: {fault:?}");
        }
    }
}

#[test]
fn header_faults_are_named() {
    assert_eq!(
        fault(&[0x50, 0x4b, 3, 4, 0, 0, 0, 1, 9]),
        IdxFault::BadMagic {
            magic: [0x50, 0x4b, 3, 4]
        }
    );
    assert_eq!(
        fault(&[0, 0, 0x0A, 1, 0, 0, 0, 1, 9]),
        IdxFault::UnknownType { code: 0x0A }
    );
    assert_eq!(fault(&[0, 0, 8, 0]), IdxFault::BadRank { rank: 0 });
    assert_eq!(fault(&[0, 0, 8, 9]), IdxFault::BadRank { rank: 9 });
    assert_eq!(
        fault(&[0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 0]),
        IdxFault::ZeroDimension {
            dims: vec![3, 0],
            dim: 1
        }
    );
    assert_eq!(
        fault(&[0, 0, 8]),
        IdxFault::HeaderTruncated { len: 3, needed: 4 }
    );
    assert_eq!(
        fault(&[0, 0, 8, 2, 0, 0, 0, 3, 0]),
        IdxFault::HeaderTruncated { len: 9, needed: 12 }
    );
    assert_eq!(
        parse_idx(&[0, 0, 0x0A, 1], "x.idx")
            .unwrap_err()
            .to_string(),
        "x.idx: unknown IDX element type 0x0a (expected 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, \
         0x0d f32 or 0x0e f64)"
    );
}

#[test]
fn overflowing_and_huge_dimensions_fail_before_allocating() {
    // 8 dims of u32::MAX f64s: the product overflows 64 bits.
    let mut overflowing = vec![0, 0, 0x0E, 8];
    overflowing.extend([0xff; 32]);
    assert!(matches!(
        fault(&overflowing),
        IdxFault::TooLarge { bytes: None, .. }
    ));
    // 2^40 u8 elements in a 100-byte raw file: more than kiln reads at all.
    let mut huge = vec![0, 0, 8, 2, 0, 0x10, 0, 0, 0, 0x10, 0, 0];
    huge.resize(100, 0);
    assert!(matches!(fault(&huge), IdxFault::TooLarge { bytes: Some(b), .. } if b == 1 << 40));
    // 2^31 bytes (under the cap) in a 100-byte raw file: truncated, known from the length alone.
    let mut claims = vec![0, 0, 8, 2, 0x80, 0, 0, 0, 0, 0, 0, 1];
    claims.resize(100, 0);
    assert!(matches!(
        fault(&claims),
        IdxFault::Truncated { found: 88, .. }
    ));
    // The same claim in a gzip file of a few dozen bytes: more than DEFLATE can expand to.
    assert!(matches!(fault(&gzip(&claims)), IdxFault::CannotHold { .. }));
}

#[test]
fn garbage_in_or_after_a_gzip_stream_is_an_error() {
    let gzip = encode_idx(&parse_idx(&small_file(), "ok").unwrap(), Encoding::Gzip);
    // A gzip header followed by bytes that are not DEFLATE.
    let mut garbage = gzip[..10].to_vec();
    garbage.extend([0xff; 40]);
    assert!(matches!(fault(&garbage), IdxFault::Gzip { .. }));
    // Just the gzip magic.
    assert!(matches!(
        fault(&gzip[..2]),
        IdxFault::Gzip { .. } | IdxFault::HeaderTruncated { .. }
    ));
    // Trailing bytes after a complete member are not silently ignored.
    let mut trailing = gzip.clone();
    trailing.extend(b"junk");
    assert!(matches!(fault(&trailing), IdxFault::Gzip { .. }));
    // Each payload byte flipped: the CRC-32 in the trailer catches what DEFLATE does not.
    for position in 10..gzip.len() {
        let mut bad = gzip.clone();
        bad[position] ^= 0x55;
        if let Ok(array) = parse_idx(&bad, "flip.gz") {
            panic!("byte {position} flipped still parsed: {array:?}");
        }
    }
}

#[test]
fn missing_files_name_the_path() {
    let err = read_idx("/nonexistent/kiln/train-images-idx3-ubyte.gz").unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("/nonexistent/kiln/train-images-idx3-ubyte.gz: cannot open: "),
        "{message}"
    );
}
