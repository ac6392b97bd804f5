//! The host side of kernels/gemm.cu: the FP32 SIMT GEMM with a fused bias + activation
//! epilogue, and the choice of its tile configuration, operand layouts, float4 loads and
//! split-K by problem shape. Not for other dtypes or tensor cores (kernels/gemm_tc.cu).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::product::{activation_code, Epilogue, GemmOperand, GemmProblem};
use super::{driver_error, registry, CudaStorage, StridedArg};
use crate::{DType, Result};

const OP: &str = "gemm_f32";
/// The most blocks a grid may have along y and z.
const MAX_GRID_YZ: usize = 65535;
/// k steps of every configuration (`BK` in kernels/gemm.cu); split-K slices are multiples.
const K_STEP: usize = 16;
/// The shortest k slice split-K makes: shorter slices spend more on the workspace round trip
/// and the prologue of each block than they gain in parallelism.
const MIN_K_PER_SPLIT: usize = 128;

/// A block's output tile and thread count (`KILN_GEMM_LAYOUTS` in kernels/gemm.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TileConfig {
    name: &'static str,
    rows: usize,
    cols: usize,
    threads: u32,
}

const LARGE: TileConfig = TileConfig {
    name: "large",
    rows: 128,
    cols: 128,
    threads: 256,
};
const MEDIUM: TileConfig = TileConfig {
    name: "medium",
    rows: 64,
    cols: 64,
    threads: 128,
};
const SMALL: TileConfig = TileConfig {
    name: "small",
    rows: 32,
    cols: 64,
    threads: 128,
};

/// A configuration and how many k slices each output tile is split into (1: no split-K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    config: TileConfig,
    splits: usize,
    k_per_split: usize,
}

impl TileConfig {
    fn blocks(&self, problem: GemmProblem) -> usize {
        problem.m.div_ceil(self.rows) * problem.n.div_ceil(self.cols) * problem.batches
    }
}

/// The configuration for a problem on a device with `multiprocessors` SMs:
/// - the largest tile that fits in the output and still gives every SM a block (large tiles reuse each loaded element
///   most, 8 x 8 outputs per thread, but a grid smaller than the machine leaves SMs idle: a
///   4096^3 product makes 1024 large blocks, a [64, 784] x [784, 1024] one only 8; a tile
///   taller or wider than the output mostly computes padding);
/// - when even the small tile leaves SMs idle and k is long (the GAN's [64, 1024] x
///   [1024, 784], or [64, 4096] x [4096, 64]), split k into slices of at least
///   `MIN_K_PER_SPLIT` until the grid about fills the machine. The workspace is then at most
///   about (SMs + blocks) tiles, as splits <= ceil(SMs / blocks).
fn plan(problem: GemmProblem, multiprocessors: usize) -> Plan {
    let multiprocessors = multiprocessors.max(1);
    let config = [LARGE, MEDIUM]
        .into_iter()
        .find(|c| {
            c.rows <= problem.m && c.cols <= problem.n && c.blocks(problem) >= multiprocessors
        })
        .unwrap_or(SMALL);
    let blocks = config.blocks(problem);
    let wanted = multiprocessors.div_ceil(blocks);
    let most = problem.k / MIN_K_PER_SPLIT;
    let splits = wanted.min(most).max(1);
    let k_per_split = problem.k.div_ceil(splits).next_multiple_of(K_STEP);
    Plan {
        config,
        // Rounding the slice up can leave the last one empty: count the slices that remain.
        splits: problem.k.div_ceil(k_per_split),
        k_per_split,
    }
}

/// The sizes, strides and options of one launch (`struct GemmArg` in kernels/gemm.cu, field
/// for field).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GemmArg {
    m: u64,
    n: u64,
    k: u64,
    batches: u64,
    a_row_stride: u64,
    a_col_stride: u64,
    b_row_stride: u64,
    b_col_stride: u64,
    k_per_split: u64,
    splits: u64,
    a_vector: u32,
    b_vector: u32,
    epilogue: u32,
    activation: u32,
    slope: f32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for GemmArg {}

/// How the kernel reads an operand: whether its groups of 4 run along k (else along m for A,
/// n for B), and whether those groups may be float4 loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OperandRead {
    along_k: bool,
    vector: bool,
}

/// `outer` is the operand's other dim (m for A, n for B) and `outer_stride`, `k_stride` the
/// strides along it and along k. Reads go along whichever dim has unit stride (along k when
/// both do or neither does: any strides are correct on the scalar path). float4 loads need
/// that unit stride, a 16-byte-aligned start of every line along it (the other stride and
/// every batch entry's offset multiples of 4 floats; the buffer's own start is checked by the
/// caller, `GemmOperand::buffer_is_16_byte_aligned`).
fn operand_read(
    outer: usize,
    k: usize,
    outer_stride: usize,
    k_stride: usize,
    batch: &StridedArg,
) -> OperandRead {
    let unit_k = k_stride == 1 || k == 1;
    let unit_outer = outer_stride == 1 || outer == 1;
    // A column ([m, 1]) with unit stride along m reads best along m even if k's stride is 1.
    let along_k = if unit_k && unit_outer {
        k > 1 || outer == 1
    } else {
        !unit_outer
    };
    let (unit, other_stride, other_extent) = if along_k {
        (k_stride == 1, outer_stride, outer)
    } else {
        (outer_stride == 1, k_stride, k)
    };
    let batch_aligned = batch.offset.is_multiple_of(4)
        && batch.strides[..batch.rank as usize]
            .iter()
            .all(|stride| stride.is_multiple_of(4));
    OperandRead {
        along_k,
        vector: unit && (other_stride.is_multiple_of(4) || other_extent == 1) && batch_aligned,
    }
}

/// `act(A·B + bias)` in f32 for every batch entry, out contiguous `[batches, m, n]` f32.
pub(crate) fn gemm_f32(
    a: &GemmOperand,
    b: &GemmOperand,
    problem: GemmProblem,
    epilogue: &Epilogue,
) -> Result<CudaStorage> {
    let GemmProblem { m, n, k, batches } = problem;
    let device = a.storage.device.clone();
    let mut out = device.alloc(DType::F32, batches * m * n)?;
    let plan = plan(problem, device.multiprocessors as usize);
    let a_read = operand_read(m, k, a.row_stride, a.col_stride, &a.batch);
    let b_read = operand_read(n, k, b.col_stride, b.row_stride, &b.batch);
    let (activation, slope) = activation_code(epilogue.activation);
    let split = plan.splits > 1;
    let arg = GemmArg {
        m: m as u64,
        n: n as u64,
        k: k as u64,
        batches: batches as u64,
        a_row_stride: a.row_stride as u64,
        a_col_stride: a.col_stride as u64,
        b_row_stride: b.row_stride as u64,
        b_col_stride: b.col_stride as u64,
        k_per_split: plan.k_per_split as u64,
        splits: plan.splits as u64,
        a_vector: (a_read.vector && a.buffer_is_16_byte_aligned()) as u32,
        b_vector: (b_read.vector && b.buffer_is_16_byte_aligned()) as u32,
        epilogue: !split as u32,
        activation,
        slope,
    };
    let name = format!(
        "gemm_f32_{}_a{}_b{}",
        plan.config.name,
        if a_read.along_k { "k" } else { "m" },
        if b_read.along_k { "k" } else { "n" }
    );
    // Output column tiles along x (up to 2^31 - 1 blocks), row tiles along y and (split,
    // batch) pairs along z, whose 65535-block limits the kernel's loops go past.
    let config = LaunchConfig {
        grid_dim: (
            n.div_ceil(plan.config.cols) as u32,
            m.div_ceil(plan.config.rows).min(MAX_GRID_YZ) as u32,
            (batches * plan.splits).min(MAX_GRID_YZ) as u32,
        ),
        block_dim: (plan.config.threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut workspace = if split {
        Some(device.alloc(DType::F32, plan.splits * batches * m * n)?)
    } else {
        None
    };
    let function = device.function(&registry::GEMM, &name)?;
    let mut builder = device.stream().launch_builder(&function);
    match &mut workspace {
        Some(partial) => builder.arg(&mut partial.buffer),
        None => builder.arg(&mut out.buffer),
    };
    builder.arg(&a.storage.buffer).arg(&b.storage.buffer);
    let no_bias = 0u64;
    match epilogue.bias {
        Some(bias) if !split => builder.arg(&bias.buffer),
        _ => builder.arg(&no_bias),
    };
    builder.arg(&arg).arg(&a.batch).arg(&b.batch);
    // Safety: the arguments match `gemm_f32_<config>_a<k|m>_b<n|k>(float* out, const float*
    // lhs, const float* rhs, const float* bias, GemmArg arg, Strided a_batch, Strided
    // b_batch)`; the output (or workspace) holds splits * batches * m * n floats, the operands'
    // layouts were checked against their buffers by the dispatch, a null bias is skipped.
    unsafe { builder.launch(config) }.map_err(driver_error(OP))?;

    if let Some(partial) = &workspace {
        let function = device.function(&registry::GEMM, "gemm_split_k_reduce")?;
        let mut builder = device.stream().launch_builder(&function);
        builder.arg(&mut out.buffer).arg(&partial.buffer);
        match epilogue.bias {
            Some(bias) => builder.arg(&bias.buffer),
            None => builder.arg(&no_bias),
        };
        builder.arg(&arg);
        // Safety: matches `gemm_split_k_reduce(float* out, const float* partial, const float*
        // bias, GemmArg s)`; the workspace was fully written by the launch before it on the
        // same stream (every slice stores its whole tile), `out` holds batches * m * n floats.
        unsafe { builder.launch(device.launch_config_for(batches * m * n)) }
            .map_err(driver_error(OP))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(m: usize, n: usize, k: usize, batches: usize) -> GemmProblem {
        GemmProblem { m, n, k, batches }
    }

    #[test]
    fn plans_follow_the_shape() {
        let sms = 132;
        // Big square: large tiles, no split.
        let p = plan(problem(4096, 4096, 4096, 1), sms);
        assert_eq!((p.config, p.splits), (LARGE, 1));
        // The GAN's backward dW = Xᵀ·G [1024, 64] x [64, 784]: 208 medium blocks.
        let p = plan(problem(1024, 784, 64, 1), sms);
        assert_eq!((p.config, p.splits), (MEDIUM, 1));
        // [64, 784] x [784, 1024]: 32 small blocks, k split in 5 slices of 160.
        let p = plan(problem(64, 1024, 784, 1), sms);
        assert_eq!((p.config, p.splits, p.k_per_split), (SMALL, 5, 160));
        // [64, 100] x [100, 256]: too short a k to split.
        let p = plan(problem(64, 256, 100, 1), sms);
        assert_eq!((p.config, p.splits), (SMALL, 1));
        // [64, 4096] x [4096, 64]: 2 blocks, 32 slices of 128.
        let p = plan(problem(64, 64, 4096, 1), sms);
        assert_eq!((p.config, p.splits, p.k_per_split), (SMALL, 32, 128));
        // Many batch entries fill the machine without a split.
        let p = plan(problem(64, 64, 4096, 200), sms);
        assert_eq!((p.config, p.splits), (MEDIUM, 1));
        // Slices cover k exactly once, none empty.
        for k in [1, 15, 16, 17, 255, 256, 257, 1000, 4097] {
            let p = plan(problem(1, 1, k, 1), sms);
            assert!(p.splits * p.k_per_split >= k && (p.splits - 1) * p.k_per_split < k);
            assert_eq!(p.k_per_split % K_STEP, 0);
        }
    }

    #[test]
    fn operand_reads_take_the_unit_stride() -> Result<()> {
        // One batch entry at offset 0 (a rank-0 batch layout).
        let contiguous = StridedArg::new("t", &crate::Layout::contiguous([1]))?;
        // Row-major A [m, k] = [8, 12]: along k, float4.
        let r = operand_read(8, 12, 12, 1, &contiguous);
        assert_eq!(
            r,
            OperandRead {
                along_k: true,
                vector: true
            }
        );
        // Transposed A (stride 1 along m): along m.
        let r = operand_read(8, 12, 1, 8, &contiguous);
        assert_eq!(
            r,
            OperandRead {
                along_k: false,
                vector: true
            }
        );
        // A leading stride that is not a multiple of 4: scalar.
        let r = operand_read(8, 13, 13, 1, &contiguous);
        assert_eq!(
            r,
            OperandRead {
                along_k: true,
                vector: false
            }
        );
        // A column [m, 1] with unit stride along m: along m.
        let r = operand_read(8, 1, 1, 1, &contiguous);
        assert!(!r.along_k);
        // An offset of one element: scalar.
        let shifted = StridedArg::new("t", &crate::Layout::contiguous([4, 3]).narrow(0, 1, 1)?)?;
        assert!(!operand_read(8, 12, 12, 1, &shifted).vector);
        Ok(())
    }
}
