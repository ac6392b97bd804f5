//! The kernel registry: every `kernels/*.cu` source (the kiln-kernels crate's strings, embedded
//! in the binary), compiled by NVRTC
//! to a cubin for a device's compute capability on first use and cached in memory and on disk.
//! The disk cache (`$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/kernels`, else
//! `~/.cache/kiln/kernels`) is keyed by a hash of the source, the arch, the NVRTC version and
//! the options, so a second process starts without compiling and a changed kernel is rebuilt.
//!
//! Cubins, not PTX: a cubin runs on any driver that supports the arch, while PTX from a newer
//! NVRTC than the driver's JIT is refused (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

use super::Arch;
use crate::{Error, Result};

/// One kernel source file: its stem (`elementwise` for kernels/elementwise.cu) and its text.
pub use kiln_kernels::Source as KernelSource;

const PRELUDE: &str = kiln_kernels::PRELUDE;

macro_rules! kernel_sources {
    ($($constant:ident),* $(,)?) => {
        $(pub(crate) static $constant: KernelSource = kiln_kernels::$constant;)*
        /// Every kernel source, for compiling them all (tests, `kiln info --compile`).
        pub static ALL: &[&KernelSource] = &[$(&$constant),*];
    };
}

kernel_sources! {
    ELEMENTWISE,
    REDUCE,
    INDEX,
    CONV,
    POOL,
    MATMUL,
    GEMM,
    GEMM_TC,
    OPTIM,
    NORM,
    LOSS,
    RNG,
}

/// Options every source is compiled with. `--std=c++17` for `if constexpr`; no fast math, so
/// results stay close to the CPU reference.
fn options(arch: Arch) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
        "--device-int128".into(),
    ]
}

/// Why NVRTC cannot be used, if it cannot.
pub fn nvrtc_availability() -> std::result::Result<(), String> {
    // Safety: only probes whether the library can be opened.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("the CUDA runtime compiler library (libnvrtc) was not found".into())
    }
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(u32, u32)> {
    nvrtc_availability().map_err(|message| Error::Cuda {
        op: "nvrtc",
        message,
    })?;
    let (mut major, mut minor) = (0, 0);
    // Safety: the library is present; both pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda {
            op: "nvrtc",
            message: format!("nvrtcVersion failed: {e:?}"),
        })?;
    Ok((major as u32, minor as u32))
}

/// FNV-1a, 64-bit: a hash that stays the same across Rust versions and processes, as a cache
/// key must.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Where compiled kernels are kept between processes, if anywhere.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("kiln").join("kernels"))
}

/// The file in `dir` a compiled `source` is cached in.
fn cache_file(
    dir: &std::path::Path,
    source: &KernelSource,
    arch: Arch,
    nvrtc: (u32, u32),
) -> PathBuf {
    let version = format!("{}.{}", nvrtc.0, nvrtc.1);
    let options = options(arch).join(" ");
    let key = fnv1a(&[
        PRELUDE.as_bytes(),
        source.code.as_bytes(),
        version.as_bytes(),
        options.as_bytes(),
    ]);
    dir.join(format!(
        "{}-sm_{arch}-nvrtc{version}-{key:016x}.cubin",
        source.name
    ))
}

/// The cubin of `source` for `arch`: from memory, else from the disk cache, else compiled
/// (and then cached in both).
pub fn cubin(source: &'static KernelSource, arch: Arch) -> Result<Vec<u8>> {
    type Cache = Mutex<HashMap<(&'static str, Arch), Vec<u8>>>;
    static MEMORY: OnceLock<Cache> = OnceLock::new();
    let memory = MEMORY.get_or_init(Default::default);
    if let Some(cubin) = memory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(source.name, arch))
    {
        return Ok(cubin.clone());
    }
    let nvrtc = nvrtc_version()?;
    let path = cache_dir().map(|dir| cache_file(&dir, source, arch, nvrtc));
    let cached = path.as_ref().and_then(|p| std::fs::read(p).ok());
    let cubin = match cached {
        Some(cubin) if !cubin.is_empty() => cubin,
        _ => {
            let cubin = compile(source, arch)?;
            if let Some(path) = &path {
                // A cache that cannot be written only costs the next process a compile.
                let _ = write_atomically(path, &cubin);
            }
            cubin
        }
    };
    memory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((source.name, arch), cubin.clone());
    Ok(cubin)
}

/// Puts a `cubin` compiled for `arch` (by [`compile`]) into the disk cache, where [`cubin`]
/// finds it: the kernel compile test warms the cache so later processes skip NVRTC.
pub fn store_in_disk_cache(source: &KernelSource, arch: Arch, cubin: &[u8]) -> Result<()> {
    let Some(dir) = cache_dir() else {
        return Ok(());
    };
    let path = cache_file(&dir, source, arch, nvrtc_version()?);
    write_atomically(&path, cubin).map_err(|e| Error::Cuda {
        op: "kernel cache",
        message: format!("{}: {e}", path.display()),
    })
}

/// Writes a cache file whole or not at all (kiln-fs), so a process reading the cache never
/// sees half a cubin, and two processes compiling at once both leave a whole one.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kiln_fs::write_file_atomically(path, |out| out.write_all(bytes))
}

/// Compiles `source` (with the prelude) for `arch` with NVRTC, ignoring every cache. A compile
/// error carries NVRTC's log.
pub fn compile(source: &KernelSource, arch: Arch) -> Result<Vec<u8>> {
    nvrtc_availability().map_err(|message| Error::Cuda {
        op: "nvrtc",
        message,
    })?;
    let failed = |what: &str, e: result::NvrtcError| Error::Cuda {
        op: "nvrtc",
        message: format!("{}.cu: {what} failed: {e:?}", source.name),
    };
    let code = CString::new(format!(
        "{PRELUDE}\n#line 1 \"{}.cu\"\n{}",
        source.name, source.code
    ))
    .map_err(|_| Error::Cuda {
        op: "nvrtc",
        message: format!("{}.cu contains a NUL byte", source.name),
    })?;
    let name = CString::new(format!("{}.cu", source.name)).expect("kernel names have no NUL");
    let program = result::create_program(&code, Some(&name)).map_err(|e| failed("create", e))?;
    let output = (|| {
        // Safety: `program` is live until destroyed below; the options are valid strings.
        let compiled = unsafe { result::compile_program(program, &options(arch)) };
        if let Err(e) = compiled {
            // Safety: as above.
            let log = unsafe { result::get_program_log(program) }
                .map(|raw| {
                    // Safety: NVRTC's log is NUL-terminated.
                    unsafe { CStr::from_ptr(raw.as_ptr()) }
                        .to_string_lossy()
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            return Err(Error::Cuda {
                op: "nvrtc",
                message: format!(
                    "{}.cu failed to compile for sm_{arch} ({e:?}): {}",
                    source.name,
                    log.replace('\n', " | ")
                ),
            });
        }
        let mut size = 0usize;
        // Safety: as above; `size` and the buffer are valid for the calls.
        unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }
            .result()
            .map_err(|e| failed("nvrtcGetCUBINSize", e))?;
        let mut cubin = vec![0u8; size];
        unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr() as *mut std::ffi::c_char) }
            .result()
            .map_err(|e| failed("nvrtcGetCUBIN", e))?;
        Ok(cubin)
    })();
    // Safety: created above and not yet destroyed.
    let _ = unsafe { result::destroy_program(program) };
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_change_with_every_part() {
        let a = KernelSource {
            name: "a",
            code: "x",
        };
        let b = KernelSource {
            name: "a",
            code: "y",
        };
        let sm90 = Arch { major: 9, minor: 0 };
        let sm80 = Arch { major: 8, minor: 0 };
        let dir = std::path::Path::new("/tmp/kiln-key-test");
        let key = |s, arch, v| cache_file(dir, s, arch, v);
        assert_ne!(key(&a, sm90, (13, 0)), key(&b, sm90, (13, 0)));
        assert_ne!(key(&a, sm90, (13, 0)), key(&a, sm80, (13, 0)));
        assert_ne!(key(&a, sm90, (13, 0)), key(&a, sm90, (13, 2)));
        assert_eq!(key(&a, sm90, (13, 0)), key(&a, sm90, (13, 0)));
        assert!(key(&a, sm90, (13, 0))
            .to_string_lossy()
            .starts_with("/tmp/kiln-key-test/a-sm_90-nvrtc13.0-"));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
