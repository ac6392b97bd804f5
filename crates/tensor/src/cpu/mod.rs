//! The CPU backend: storage as typed `Vec`s (storage.rs), the backend trait over it
//! (backend.rs), and kernels over strided layouts. Elementwise kernels share one loop
//! (loops.rs: `fill`/`map1`/`map2`/`map3`), split over rayon's threads above measured sizes
//! (`Work`) and compiled for AVX-512 or AVX2+FMA where the CPU has them; exp, log, tanh,
//! sigmoid and softplus are straight-line f32 code those loops vectorize (vmath.rs); the matrix
//! product is the packed SIMD GEMM in gemm.rs.

mod allocator;
mod backend;
mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_direct;
mod elementwise;
pub(crate) mod gemm;
mod index;
mod loops;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod reduce;
mod storage;
pub mod vmath;
mod workers;

pub use allocator::{tune_allocator, MemoryGuard};
#[cfg(target_arch = "x86_64")]
pub(crate) use loops::simd;
pub(crate) use loops::{
    filled, map1, map1_work, map2, map2_work, map3, map3_work, Elementwise, Elementwise2,
    Elementwise3, Work,
};
pub use storage::CpuStorage;
pub use workers::on_worker;
