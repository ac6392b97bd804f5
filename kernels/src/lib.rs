//! kiln-kernels: the CUDA C sources of kiln's CUDA backend, one file per kernel family, as
//! strings. kiln-tensor's kernel registry (`crates/tensor/src/cuda/registry.rs`) prepends
//! [`PRELUDE`] to a source, compiles it with NVRTC for the device at hand and caches the cubin.
//! Not for launching anything: this crate holds text only, so it builds without CUDA.
//! README.md beside the sources maps each file to its Rust side and its CPU reference.

/// Prepended to every source: element types, conversions, the strided-layout argument.
pub const PRELUDE: &str = include_str!("../common.cuh");

/// A kernel file: its stem (`elementwise` for elementwise.cu) and its text.
#[derive(Debug)]
pub struct Source {
    pub name: &'static str,
    pub code: &'static str,
}

macro_rules! sources {
    ($($constant:ident = $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("`", $name, ".cu`.")]
            pub const $constant: Source = Source {
                name: $name,
                code: include_str!(concat!("../", $name, ".cu")),
            };
        )*
        /// Every kernel file, in the README's order.
        pub const ALL: &[Source] = &[$($constant),*];
    };
}

sources! {
    ELEMENTWISE = "elementwise",
    REDUCE = "reduce",
    INDEX = "index",
    CONV = "conv",
    POOL = "pool",
    MATMUL = "matmul",
    GEMM = "gemm",
    GEMM_TC = "gemm_tc",
    OPTIM = "optim",
    NORM = "norm",
    LOSS = "loss",
    RNG = "rng",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cu_file_is_listed_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".cu").map(str::to_string)
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ALL.iter().map(|s| s.name.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
        assert!(ALL
            .iter()
            .all(|s| s.code.contains("extern \"C\" __global__")));
    }
}
