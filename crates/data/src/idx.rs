//! The IDX format (LeCun's MNIST files): a strict reader and a writer for every element type and
//! rank, raw or gzip-compressed, plus conversions to and from kiln tensors. Not for datasets'
//! meaning (image sizes, label ranges): that is `dataset.rs`'s.
//!
//! Layout: a big-endian header — two zero bytes, a type code, the rank — then one big-endian
//! `u32` per dimension, then the elements row-major, big-endian. The reader trusts nothing in
//! the header: it checks the magic, the type, the rank, every dimension and the overflow-checked
//! byte count against what the file can hold *before* it reserves memory, then reads the payload
//! in bounded steps and fails as soon as the data ends early or goes on past the header's count.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use byteorder::{BigEndian, ByteOrder};
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use kiln_tensor::{DType, Device, Tensor};

use crate::error::{DataError, IdxFault, Result};

/// The most payload kiln reads from (or writes to) one IDX file: 4 GiB. MNIST's largest file
/// holds 47 MB; the limit keeps a hostile header (or a gzip bomb that really decompresses to
/// what it claims) from taking all of memory.
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 32;

/// The highest rank kiln reads or writes.
pub const MAX_RANK: usize = 8;

/// DEFLATE's best case is 258 bytes from 2 bits, so a gzip file of `n` bytes never decompresses
/// to more than `1032 n` bytes: a header claiming more is refused before anything is read.
const GZIP_MAX_RATIO: u64 = 1032;

/// What the reader reserves up front for a gzip payload at most; beyond it the buffer grows only
/// as decompressed bytes actually arrive.
const GZIP_RESERVE_CAP: u64 = 64 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An IDX element type, with its type code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    U8,
    I8,
    I16,
    I32,
    F32,
    F64,
}

impl ElementType {
    pub const ALL: [ElementType; 6] = [
        ElementType::U8,
        ElementType::I8,
        ElementType::I16,
        ElementType::I32,
        ElementType::F32,
        ElementType::F64,
    ];

    /// The header's type byte.
    pub fn code(self) -> u8 {
        match self {
            ElementType::U8 => 0x08,
            ElementType::I8 => 0x09,
            ElementType::I16 => 0x0B,
            ElementType::I32 => 0x0C,
            ElementType::F32 => 0x0D,
            ElementType::F64 => 0x0E,
        }
    }

    pub fn from_code(code: u8) -> Option<ElementType> {
        ElementType::ALL.into_iter().find(|t| t.code() == code)
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            ElementType::U8 | ElementType::I8 => 1,
            ElementType::I16 => 2,
            ElementType::I32 | ElementType::F32 => 4,
            ElementType::F64 => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ElementType::U8 => "u8",
            ElementType::I8 => "i8",
            ElementType::I16 => "i16",
            ElementType::I32 => "i32",
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of an IDX file, in their own type (kiln tensors have no i8/i16/i32, so the
/// file's values are kept exactly here and converted by [`IdxArray::into_tensor`]).
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl IdxData {
    pub fn element_type(&self) -> ElementType {
        match self {
            IdxData::U8(_) => ElementType::U8,
            IdxData::I8(_) => ElementType::I8,
            IdxData::I16(_) => ElementType::I16,
            IdxData::I32(_) => ElementType::I32,
            IdxData::F32(_) => ElementType::F32,
            IdxData::F64(_) => ElementType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            IdxData::U8(v) => v.len(),
            IdxData::I8(v) => v.len(),
            IdxData::I16(v) => v.len(),
            IdxData::I32(v) => v.len(),
            IdxData::F32(v) => v.len(),
            IdxData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of `element` type held big-endian in `bytes` (whose length is a multiple
    /// of the element size).
    fn from_be_bytes(element: ElementType, bytes: Vec<u8>) -> IdxData {
        let n = bytes.len() / element.size_in_bytes();
        match element {
            ElementType::U8 => IdxData::U8(bytes),
            ElementType::I8 => IdxData::I8(bytes.into_iter().map(|b| b as i8).collect()),
            ElementType::I16 => {
                let mut out = vec![0; n];
                BigEndian::read_i16_into(&bytes, &mut out);
                IdxData::I16(out)
            }
            ElementType::I32 => {
                let mut out = vec![0; n];
                BigEndian::read_i32_into(&bytes, &mut out);
                IdxData::I32(out)
            }
            ElementType::F32 => {
                let mut out = vec![0.0; n];
                BigEndian::read_f32_into(&bytes, &mut out);
                IdxData::F32(out)
            }
            ElementType::F64 => {
                let mut out = vec![0.0; n];
                BigEndian::read_f64_into(&bytes, &mut out);
                IdxData::F64(out)
            }
        }
    }

    /// The elements big-endian, as the file holds them.
    fn to_be_bytes(&self) -> Vec<u8> {
        let mut out = vec![0; self.len() * self.element_type().size_in_bytes()];
        match self {
            IdxData::U8(v) => out.copy_from_slice(v),
            IdxData::I8(v) => out.iter_mut().zip(v).for_each(|(o, &x)| *o = x as u8),
            IdxData::I16(v) => BigEndian::write_i16_into(v, &mut out),
            IdxData::I32(v) => BigEndian::write_i32_into(v, &mut out),
            IdxData::F32(v) => BigEndian::write_f32_into(v, &mut out),
            IdxData::F64(v) => BigEndian::write_f64_into(v, &mut out),
        }
        out
    }
}

/// An IDX file's contents: its dimensions and its elements. Every `IdxArray` is one the format
/// can hold (rank 1 to 8, dimensions 1 to `u32::MAX`, at most [`MAX_PAYLOAD_BYTES`]), so what
/// is written can always be read back.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    dims: Vec<usize>,
    data: IdxData,
}

impl IdxArray {
    /// Checks that `data` fills `dims` and that the IDX format can hold them.
    pub fn new(dims: Vec<usize>, data: IdxData) -> Result<IdxArray> {
        let invalid = |message: String| Err(DataError::invalid("IdxArray::new", message));
        if dims.is_empty() || dims.len() > MAX_RANK {
            return invalid(format!(
                "dims {dims:?} have rank {}; IDX holds rank 1 to {MAX_RANK}",
                dims.len()
            ));
        }
        if let Some(dim) = dims.iter().position(|&d| d == 0 || d > u32::MAX as usize) {
            return invalid(format!(
                "dims {dims:?}: dimension {dim} is {}; IDX holds 1 to {}",
                dims[dim],
                u32::MAX
            ));
        }
        let element = data.element_type();
        let bytes = dims
            .iter()
            .try_fold(element.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
            .filter(|&bytes| bytes <= MAX_PAYLOAD_BYTES);
        let Some(bytes) = bytes else {
            return invalid(format!(
                "dims {dims:?} of {element} exceed the {MAX_PAYLOAD_BYTES} bytes kiln writes to \
                 one IDX file"
            ));
        };
        if bytes / element.size_in_bytes() as u64 != data.len() as u64 {
            return invalid(format!(
                "{} {element} values cannot fill dims {dims:?}",
                data.len()
            ));
        }
        Ok(IdxArray { dims, data })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn data(&self) -> &IdxData {
        &self.data
    }

    pub fn into_data(self) -> IdxData {
        self.data
    }

    pub fn element_type(&self) -> ElementType {
        self.data.element_type()
    }

    /// A tensor of the same shape on `device`. u8 stays U8 and f32/f64 stay F32/F64; i8 and
    /// i16 become F32 and i32 becomes F64, each exactly (kiln has no signed integer dtypes, and
    /// F32 would round i32 values beyond 2^24).
    pub fn into_tensor(self, device: Device) -> Result<Tensor> {
        let dims = self.dims;
        let tensor = match self.data {
            IdxData::U8(v) => Tensor::from_vec(v, dims, device),
            IdxData::I8(v) => {
                Tensor::from_vec(v.into_iter().map(f32::from).collect(), dims, device)
            }
            IdxData::I16(v) => {
                Tensor::from_vec(v.into_iter().map(f32::from).collect(), dims, device)
            }
            IdxData::I32(v) => {
                Tensor::from_vec(v.into_iter().map(f64::from).collect(), dims, device)
            }
            IdxData::F32(v) => Tensor::from_vec(v, dims, device),
            IdxData::F64(v) => Tensor::from_vec(v, dims, device),
        }?;
        Ok(tensor)
    }

    /// The IDX form of a tensor: U8, F32 and F64 are written as they are, F16/BF16 widen
    /// exactly to f32, and U32 (labels, indices) becomes i32 when every value fits.
    pub fn from_tensor(tensor: &Tensor) -> Result<IdxArray> {
        let data = match tensor.dtype() {
            DType::U8 => IdxData::U8(tensor.to_vec()?),
            DType::F32 => IdxData::F32(tensor.to_vec()?),
            DType::F16 | DType::BF16 => IdxData::F32(tensor.to_dtype(DType::F32)?.to_vec()?),
            DType::F64 => IdxData::F64(tensor.to_vec()?),
            DType::U32 => {
                let values = tensor.to_vec::<u32>()?;
                let signed: Option<Vec<i32>> =
                    values.iter().map(|&v| i32::try_from(v).ok()).collect();
                IdxData::I32(signed.ok_or_else(|| {
                    DataError::invalid(
                        "IdxArray::from_tensor",
                        "u32 values above i32::MAX do not fit IDX's i32; convert to f64 first",
                    )
                })?)
            }
        };
        IdxArray::new(tensor.dims().to_vec(), data)
    }
}

/// How the writer stores an IDX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Gzip,
}

/// Reads an IDX file, raw or gzip-compressed (told apart by gzip's magic bytes, not the name).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| DataError::io(path, "open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| DataError::io(path, "read the size of", e))?
        .len();
    read_idx_from(BufReader::new(file), file_len, &path.display().to_string())
}

/// Parses IDX bytes held in memory, raw or gzip-compressed; `name` stands for the file in
/// errors.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<IdxArray> {
    read_idx_from(bytes, bytes.len() as u64, name)
}

/// The IDX bytes of `array`, raw or gzip-compressed.
pub fn encode_idx(array: &IdxArray, encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::new();
    write_encoded(&mut out, array, encoding).expect("writing to a Vec cannot fail");
    out
}

/// Writes `array` to `path` as an IDX file. The file appears whole or not at all: it is written
/// beside `path` under a temporary name and renamed into place.
pub fn write_idx(path: impl AsRef<Path>, array: &IdxArray, encoding: Encoding) -> Result<()> {
    crate::write_atomically(path.as_ref(), |out| write_encoded(out, array, encoding))
}

fn write_encoded(out: &mut impl Write, array: &IdxArray, encoding: Encoding) -> io::Result<()> {
    let mut header = vec![0, 0, array.element_type().code(), array.dims.len() as u8];
    for &dim in &array.dims {
        // IdxArray::new checked every dim fits in u32.
        header.extend_from_slice(&(dim as u32).to_be_bytes());
    }
    let payload = array.data.to_be_bytes();
    match encoding {
        Encoding::Raw => {
            out.write_all(&header)?;
            out.write_all(&payload)
        }
        Encoding::Gzip => {
            let mut encoder = GzEncoder::new(out, flate2::Compression::default());
            encoder.write_all(&header)?;
            encoder.write_all(&payload)?;
            encoder.finish().map(drop)
        }
    }
}

/// What the bytes after the first two are, and how many the source holds in all.
#[derive(Clone, Copy)]
enum Source {
    Raw { len: u64 },
    Gzip { len: u64 },
}

fn read_idx_from(mut input: impl BufRead, len: u64, name: &str) -> Result<IdxArray> {
    let mut first = [0u8; 2];
    let got = read_up_to(&mut input, &mut first).map_err(|e| io_error(name, e))?;
    let input = (&first[..got]).chain(input);
    if first[..got] == GZIP_MAGIC {
        decode(MultiGzDecoder::new(input), Source::Gzip { len }, name)
    } else {
        decode(input, Source::Raw { len }, name)
    }
}

fn io_error(name: &str, source: io::Error) -> DataError {
    DataError::Io {
        path: name.to_string(),
        action: "read",
        source,
    }
}

/// Reads and validates the header, then the payload, from `reader` (already decompressed).
fn decode(mut reader: impl Read, source: Source, name: &str) -> Result<IdxArray> {
    let fault = |fault| DataError::idx(name, fault);
    // Read errors inside a gzip stream are the stream's faults; in a raw file, the system's.
    let read_fault = |decoded: u64, err: io::Error| match source {
        Source::Gzip { .. } => fault(IdxFault::Gzip {
            decoded,
            message: err.to_string(),
        }),
        Source::Raw { .. } => io_error(name, err),
    };

    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(|e| read_fault(0, e))?;
    if got < 4 {
        return Err(fault(IdxFault::HeaderTruncated {
            len: got as u64,
            needed: 4,
        }));
    }
    if magic[..2] != [0, 0] {
        return Err(fault(IdxFault::BadMagic { magic }));
    }
    let element = ElementType::from_code(magic[2])
        .ok_or_else(|| fault(IdxFault::UnknownType { code: magic[2] }))?;
    let rank = magic[3];
    if rank == 0 || rank as usize > MAX_RANK {
        return Err(fault(IdxFault::BadRank { rank }));
    }

    let header_len = 4 + 4 * u64::from(rank);
    let mut dim_bytes = [0u8; 4 * MAX_RANK];
    let dim_bytes = &mut dim_bytes[..4 * rank as usize];
    let got = read_up_to(&mut reader, dim_bytes).map_err(|e| read_fault(4, e))?;
    if got < dim_bytes.len() {
        return Err(fault(IdxFault::HeaderTruncated {
            len: 4 + got as u64,
            needed: header_len,
        }));
    }
    let dims: Vec<u32> = dim_bytes.chunks_exact(4).map(BigEndian::read_u32).collect();
    if let Some(dim) = dims.iter().position(|&d| d == 0) {
        return Err(fault(IdxFault::ZeroDimension { dims, dim }));
    }
    let bytes = dims
        .iter()
        .try_fold(element.size_in_bytes() as u64, |acc, &d| {
            acc.checked_mul(u64::from(d))
        });
    let bytes = match bytes {
        Some(bytes) if bytes <= MAX_PAYLOAD_BYTES => bytes,
        _ => {
            return Err(fault(IdxFault::TooLarge {
                dims,
                element: element.as_str(),
                bytes,
            }))
        }
    };

    // Check the claim against what the source can hold before reserving anything for it.
    let reserve = match source {
        Source::Raw { len } => {
            let found = len.saturating_sub(header_len);
            if found < bytes {
                return Err(fault(IdxFault::Truncated {
                    dims,
                    element: element.as_str(),
                    expected: bytes,
                    found,
                }));
            }
            if found > bytes {
                return Err(fault(IdxFault::TooLong {
                    dims,
                    element: element.as_str(),
                    expected: bytes,
                    found: Some(found),
                }));
            }
            bytes
        }
        Source::Gzip { len } => {
            let max_bytes = len.saturating_mul(GZIP_MAX_RATIO);
            if header_len + bytes > max_bytes {
                return Err(fault(IdxFault::CannotHold {
                    dims,
                    element: element.as_str(),
                    bytes,
                    file_len: len,
                    max_bytes,
                }));
            }
            bytes.min(GZIP_RESERVE_CAP)
        }
    };

    let mut payload = Vec::new();
    payload
        .try_reserve_exact(reserve as usize)
        .map_err(|_| io_error(name, io::Error::from(io::ErrorKind::OutOfMemory)))?;
    if let Err(err) = reader.by_ref().take(bytes).read_to_end(&mut payload) {
        return Err(read_fault(header_len + payload.len() as u64, err));
    }
    if (payload.len() as u64) < bytes {
        return Err(fault(IdxFault::Truncated {
            dims,
            element: element.as_str(),
            expected: bytes,
            found: payload.len() as u64,
        }));
    }
    // One more byte must not exist. For gzip this read also reaches the end of the stream,
    // which is where the decoder checks the CRC and length in each member's trailer.
    match read_up_to(&mut reader, &mut [0u8; 1]) {
        Ok(0) => {}
        Ok(_) => {
            return Err(fault(IdxFault::TooLong {
                dims,
                element: element.as_str(),
                expected: bytes,
                found: None,
            }))
        }
        Err(err) => return Err(read_fault(header_len + bytes, err)),
    }

    let dims = dims.into_iter().map(|d| d as usize).collect();
    Ok(IdxArray {
        dims,
        data: IdxData::from_be_bytes(element, payload),
    })
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_codes_round_trip() {
        for element in ElementType::ALL {
            assert_eq!(ElementType::from_code(element.code()), Some(element));
        }
        assert_eq!(ElementType::from_code(0x0A), None);
    }

    #[test]
    fn hand_written_header_parses() {
        // [2, 3] i16, big-endian: 1, -2, 3, -4, 5, -6.
        let mut bytes = vec![0, 0, 0x0B, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        for v in [1i16, -2, 3, -4, 5, -6] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let array = parse_idx(&bytes, "mem").unwrap();
        assert_eq!(array.dims(), &[2, 3]);
        assert_eq!(array.data(), &IdxData::I16(vec![1, -2, 3, -4, 5, -6]));
        assert_eq!(encode_idx(&array, Encoding::Raw), bytes);
    }

    #[test]
    fn tensor_conversions_are_exact() {
        let big = IdxArray::new(vec![3], IdxData::I32(vec![i32::MIN, 16_777_217, i32::MAX]));
        let tensor = big.unwrap().into_tensor(Device::Cpu).unwrap();
        assert_eq!(tensor.dtype(), DType::F64);
        assert_eq!(
            tensor.to_vec::<f64>().unwrap(),
            vec![-2147483648.0, 16777217.0, 2147483647.0]
        );
        let small = IdxArray::new(vec![1, 2], IdxData::I8(vec![-128, 127])).unwrap();
        let tensor = small.into_tensor(Device::Cpu).unwrap();
        assert_eq!((tensor.dtype(), tensor.dims()), (DType::F32, &[1, 2][..]));
        assert_eq!(tensor.to_vec::<f32>().unwrap(), vec![-128.0, 127.0]);

        let labels = Tensor::from_vec(vec![0u32, 9, 5], [3], Device::Cpu).unwrap();
        let array = IdxArray::from_tensor(&labels).unwrap();
        assert_eq!(array.data(), &IdxData::I32(vec![0, 9, 5]));
        let too_big = Tensor::from_vec(vec![u32::MAX], [1], Device::Cpu).unwrap();
        assert!(IdxArray::from_tensor(&too_big).is_err());
        let scalar = Tensor::scalar(1.0f32, Device::Cpu).unwrap();
        assert!(IdxArray::from_tensor(&scalar).is_err());
    }

    #[test]
    fn new_refuses_what_idx_cannot_hold() {
        let data = || IdxData::U8(vec![0; 6]);
        assert!(IdxArray::new(vec![], data()).is_err());
        assert!(IdxArray::new(vec![6, 0], data()).is_err());
        assert!(IdxArray::new(vec![1; 9], IdxData::U8(vec![0])).is_err());
        assert!(IdxArray::new(vec![2, 2], data()).is_err());
        assert!(IdxArray::new(vec![1 << 33], data()).is_err());
        assert!(IdxArray::new(vec![2, 3], data()).is_ok());
    }
}
