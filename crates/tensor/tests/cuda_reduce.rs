//! CUDA reductions and softmax (kernels/reduce.cu) against the CPU backend, their reference
//! (src/cpu/reduce.rs): sum and max over every subset of dims of rank-3 and rank-4 tensors
//! through contiguous, permuted, narrowed and broadcast views; long reductions (over a wave of
//! blocks, so the split-and-join path) and many short ones (the thread-, warp- and block-per-
//! output paths); NaN, infinities and signed zeros in max; empty reductions; softmax and
//! log-softmax on every dim, rows of 1 and of 10000, rows with -inf, NaN and large logits.
//! Inputs are made on the CPU and copied over, so the GPU side runs only these kernels (and
//! the harness's readback). Expected values are the CPU backend's on the same input bits.
//!
//! Tolerances: max is exact. The GPU sums in f64 and the CPU adds blocks of 1024 in the math
//! type first, so sums may differ by the CPU's rounding: `tol * sqrt(count)` absolute plus one
//! rounding of the dtype. Softmax sums its exponentials in the math type in a different order
//! and uses CUDA's exp/log: a few ulp. Skips without a GPU (see cuda_common).

mod cuda_common;
use cuda_common::*;

use kiln_tensor::{DType, Device, Result, Tensor};

/// Uniform values in [-scale, scale) of `dtype`, made on the CPU and copied to `device`.
fn input(shape: &[usize], dtype: DType, device: Device, seed: u64, scale: f64) -> Result<Tensor> {
    random(shape, dtype, Device::Cpu, seed, scale).to_device(device)
}

/// `values` (rounded to `dtype` on the CPU) copied to `device`.
fn exact(values: Vec<f64>, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
    Tensor::from_vec(values, shape.to_vec(), Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Every subset of `0..rank`, as sorted dim lists (the empty one included).
fn subsets(rank: usize) -> Vec<Vec<usize>> {
    (0..1u32 << rank)
        .map(|mask| (0..rank).filter(|d| mask & (1 << d) != 0).collect())
        .collect()
}

/// Views of one shape family, by name: each closure takes a fresh device tensor and returns
/// the view to reduce.
type View = (&'static str, Vec<usize>, fn(Tensor) -> Result<Tensor>);

fn views() -> Vec<View> {
    vec![
        ("contiguous [3, 5, 7]", vec![3, 5, 7], Ok),
        ("permuted [7, 3, 5] of [5, 7, 3]", vec![5, 7, 3], |t| {
            t.permute(&[1, 2, 0])
        }),
        ("narrowed [3, 3, 7] of [3, 6, 8]", vec![3, 6, 8], |t| {
            t.narrow(1, 2, 3)?.narrow(2, 1, 7)
        }),
        ("broadcast [4, 5, 6] of [4, 1, 6]", vec![4, 1, 6], |t| {
            t.broadcast_as([4, 5, 6])
        }),
        ("contiguous [2, 3, 4, 5]", vec![2, 3, 4, 5], Ok),
        (
            "permuted [5, 3, 2, 4] of [2, 3, 4, 5]",
            vec![2, 3, 4, 5],
            |t| t.permute(&[3, 1, 0, 2]),
        ),
        (
            "narrowed, transposed [4, 3, 3, 2] of [2, 5, 3, 4]",
            vec![2, 5, 3, 4],
            |t| t.narrow(1, 1, 3)?.permute(&[3, 1, 2, 0]),
        ),
        ("broadcast [3, 2, 4, 5] of [2, 1, 5]", vec![2, 1, 5], |t| {
            t.broadcast_as([3, 2, 4, 5])
        }),
    ]
}

#[test]
fn sum_and_max_over_every_subset_of_dims() {
    let Some(gpu) = cuda("sum_and_max_over_every_subset_of_dims") else {
        return;
    };
    for (dtype, tol) in FLOAT_DTYPES {
        for (seed, (name, shape, view)) in views().into_iter().enumerate() {
            let rank = view(Tensor::zeros(shape.clone(), dtype, Device::Cpu).unwrap())
                .unwrap()
                .rank();
            for dims in subsets(rank) {
                for keepdim in [true, false] {
                    let what = format!("{dtype} {name} over {dims:?} keepdim {keepdim}");
                    let make = |device| view(input(&shape, dtype, device, seed as u64, 1.0)?);
                    let count: usize = {
                        let t = make(Device::Cpu).unwrap();
                        dims.iter().map(|&d| t.dims()[d]).product()
                    };
                    parity(
                        &format!("sum {what}"),
                        gpu,
                        tol * (count as f64).sqrt(),
                        tol,
                        |device| Ok(vec![make(device)?.sum(&dims, keepdim)?]),
                    );
                    parity(&format!("max {what}"), gpu, 0.0, 0.0, |device| {
                        Ok(vec![make(device)?.max(&dims, keepdim)?])
                    });
                }
            }
        }
    }
}

#[test]
fn long_reductions_and_many_short_ones() {
    let Some(gpu) = cuda("long_reductions_and_many_short_ones") else {
        return;
    };
    // (shape, dims, what it exercises)
    let cases: [(&[usize], &[usize], &str); 9] = [
        (
            &[OVER_A_WAVE],
            &[0],
            "one long contiguous row: split and join",
        ),
        (&[3, OVER_A_WAVE], &[1], "three long rows"),
        (&[OVER_A_WAVE, 2], &[0], "two long strided columns"),
        (&[5, 5000], &[1], "block per row"),
        (&[4099, 33], &[1], "warp per row"),
        (&[100_003, 7], &[1], "thread per row, rows of 7"),
        (&[7, 100_003], &[0], "thread per column, columns of 7"),
        (&[300, 1031], &[0], "thread per column, long columns: split"),
        (&[1, 1, 1], &[0, 2], "a single element"),
    ];
    for (dtype, tol) in FLOAT_DTYPES {
        for (seed, &(shape, dims, what)) in cases.iter().enumerate() {
            let count: usize = dims.iter().map(|&d| shape[d]).product();
            let make = |device| input(shape, dtype, device, 100 + seed as u64, 1.0);
            parity(
                &format!("sum {dtype} {shape:?} over {dims:?}: {what}"),
                gpu,
                tol * (count as f64).sqrt(),
                tol,
                |device| Ok(vec![make(device)?.sum(dims, true)?]),
            );
            parity(
                &format!("max {dtype} {shape:?} over {dims:?}: {what}"),
                gpu,
                0.0,
                0.0,
                |device| Ok(vec![make(device)?.max(dims, false)?]),
            );
        }
        // A transposed long reduction: the reduced dim has stride 2.
        parity(
            &format!("sum {dtype} of a transposed [2, {OVER_A_WAVE}]"),
            gpu,
            tol * (OVER_A_WAVE as f64).sqrt(),
            tol,
            |device| {
                let t = input(&[OVER_A_WAVE, 2], dtype, device, 7, 1.0)?.t()?;
                Ok(vec![t.sum(&[1], false)?, t.max(&[1], false)?])
            },
        );
    }
}

#[test]
fn max_propagates_nan_and_keeps_infinities_and_zeros() {
    let Some(gpu) = cuda("max_propagates_nan_and_keeps_infinities_and_zeros") else {
        return;
    };
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    // [4, 5]: a NaN first, a NaN last, all -inf, signed zeros only.
    let rows = vec![
        nan, 1.0, 2.0, 3.0, -1.0, //
        1.0, 2.0, inf, 3.0, nan, //
        -inf, -inf, -inf, -inf, -inf, //
        -0.0, 0.0, -0.0, -0.0, -0.0,
    ];
    for (dtype, _) in FLOAT_DTYPES {
        for dims in subsets(2) {
            parity(
                &format!("max {dtype} with NaN over {dims:?}"),
                gpu,
                0.0,
                0.0,
                |device| {
                    let t = exact(rows.clone(), &[4, 5], dtype, device)?;
                    Ok(vec![t.max(&dims, true)?, t.t()?.max(&dims, true)?])
                },
            );
            parity(
                &format!("sum {dtype} with NaN and inf over {dims:?}"),
                gpu,
                0.0,
                0.0,
                |device| {
                    Ok(vec![
                        exact(rows.clone(), &[4, 5], dtype, device)?.sum(&dims, true)?
                    ])
                },
            );
        }
        // One NaN at the very end of a long row: the last split's partial carries it.
        for at in [0, OVER_A_WAVE - 1] {
            parity(
                &format!("max {dtype} of a long row with NaN at {at}"),
                gpu,
                0.0,
                0.0,
                |device| {
                    let mut values: Vec<f64> = (0..OVER_A_WAVE)
                        .map(|i| (i % 1000) as f64 - 500.0)
                        .collect();
                    values[at] = nan;
                    let t = exact(values, &[OVER_A_WAVE], dtype, device)?;
                    Ok(vec![t.max_all()?])
                },
            );
        }
    }
}

#[test]
fn empty_reductions_and_empty_outputs() {
    let Some(gpu) = cuda("empty_reductions_and_empty_outputs") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        // Sums over an empty dim are 0; reductions of an empty kept dim are empty.
        parity(
            &format!("sum {dtype} over an empty dim"),
            gpu,
            0.0,
            0.0,
            |device| {
                let t = Tensor::zeros([3, 0, 4], dtype, device)?;
                Ok(vec![
                    t.sum(&[1], true)?,
                    t.sum(&[0, 1], false)?,
                    t.sum(&[2], true)?,
                ])
            },
        );
        parity(
            &format!("max {dtype} keeping an empty dim"),
            gpu,
            0.0,
            0.0,
            |device| {
                Ok(vec![
                    Tensor::zeros([3, 0, 4], dtype, device)?.max(&[2], true)?
                ])
            },
        );
    }
}

#[test]
fn reductions_reject_integer_dtypes_as_the_cpu_does() {
    let Some(gpu) = cuda("reductions_reject_integer_dtypes_as_the_cpu_does") else {
        return;
    };
    for dtype in [DType::U8, DType::U32] {
        let run = |device| {
            let t = Tensor::zeros([2, 3], dtype, device).unwrap();
            (
                t.sum(&[1], true).unwrap_err(),
                t.max(&[0], true).unwrap_err(),
                t.softmax(1).unwrap_err(),
            )
        };
        assert_eq!(run(Device::Cpu), run(gpu), "{dtype}");
    }
}

/// Softmax tolerances (absolute, relative) per dtype for rows of `row_len`: a few ulp of the
/// math type or one rounding of the half types, plus the CPU's own error, which grows with the
/// row: it sums the exponentials left to right in the math type (measured on a row of
/// 1 << 20 uniforms in [-5, 5): 1.6e-3 relative in f32 against f64), the GPU as a tree.
fn softmax_tolerance(dtype: DType, row_len: usize) -> (f64, f64) {
    let (rounding, sequential) = match dtype {
        DType::F32 => (1e-5, 4e-9),
        DType::F64 => (1e-12, 1e-17),
        DType::F16 => (2e-3, 4e-9),
        _ => (1.6e-2, 4e-9),
    };
    let relative = rounding + sequential * row_len as f64;
    (relative / 10.0, relative)
}

#[test]
fn softmax_and_log_softmax_on_every_dim() {
    let Some(gpu) = cuda("softmax_and_log_softmax_on_every_dim") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        let (atol, rtol) = softmax_tolerance(dtype, 8);
        for (seed, (name, shape, view)) in views().into_iter().enumerate() {
            let make = |device| view(input(&shape, dtype, device, 50 + seed as u64, 5.0)?);
            for dim in 0..make(Device::Cpu).unwrap().rank() {
                parity(
                    &format!("softmax {dtype} {name} dim {dim}"),
                    gpu,
                    atol,
                    rtol,
                    |device| {
                        let t = make(device)?;
                        Ok(vec![t.softmax(dim)?, t.log_softmax(dim)?])
                    },
                );
            }
        }
    }
}

#[test]
fn softmax_of_long_rows_rows_of_one_and_edge_values() {
    let Some(gpu) = cuda("softmax_of_long_rows_rows_of_one_and_edge_values") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        let cases: [(&[usize], usize, &str); 6] = [
            (&[3, 10000], 1, "rows of 10000: a block a row"),
            (&[10000, 3], 0, "strided rows of 10000"),
            (&[2, OVER_A_WAVE], 1, "two rows over a wave"),
            (&[7, 1], 1, "rows of one"),
            (&[1, 9], 0, "rows of one along dim 0"),
            (&[20000, 5], 1, "many short rows"),
        ];
        for (seed, &(shape, dim, what)) in cases.iter().enumerate() {
            let (atol, rtol) = softmax_tolerance(dtype, shape[dim]);
            parity(
                &format!("softmax {dtype} {shape:?} dim {dim}: {what}"),
                gpu,
                atol,
                rtol,
                |device| {
                    let t = input(shape, dtype, device, 80 + seed as u64, 5.0)?;
                    Ok(vec![t.softmax(dim)?, t.log_softmax(dim)?])
                },
            );
        }
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        // A -inf among finite logits, a row of -inf (NaN out, as on the CPU), a NaN, a +inf,
        // large logits where the max shift matters, and signed zeros.
        let rows = vec![
            1.0, -inf, 2.0, 0.5, //
            -inf, -inf, -inf, -inf, //
            1.0, nan, 2.0, 3.0, //
            1.0, inf, 2.0, 3.0, //
            1000.0, 999.0, 1001.0, 998.5, //
            -0.0, 0.0, -0.0, 0.0,
        ];
        let (atol, rtol) = softmax_tolerance(dtype, 6);
        for dim in [0, 1] {
            parity(
                &format!("softmax {dtype} edge values dim {dim}"),
                gpu,
                atol,
                rtol,
                |device| {
                    let t = exact(rows.clone(), &[6, 4], dtype, device)?;
                    Ok(vec![t.softmax(dim)?, t.log_softmax(dim)?])
                },
            );
        }
    }
}
