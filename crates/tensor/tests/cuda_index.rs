//! CUDA cat and indexing kernels (kernels/index.cu) against the CPU backend, their reference
//! (src/cpu/index.rs): cat along every dim of mixed contiguous, permuted, narrowed and
//! broadcast parts in all six dtypes; index_select and gather (all six dtypes) and index_add
//! and scatter_add (float dtypes) along every dim, with repeated indices, strided data,
//! indices and sources, empty indices, and sizes over a wave of blocks; and out-of-range
//! indices, which must give the CPU's error value (the first bad index in row-major order).
//! Inputs are made on the CPU and copied over, so the GPU side runs only these kernels (and
//! the harness's readback). Expected values are the CPU backend's on the same input bits.
//!
//! cat, index_select and gather copy elements, so they must match exactly. The adds happen in
//! the math type on both sides but in another order on the GPU (atomics): a few ulp of f32
//! (or f64) per added element, plus one rounding of the dtype. Skips without a GPU (see
//! cuda_common).

mod cuda_common;
use cuda_common::*;

use kiln_tensor::{DType, Device, Result, Tensor};

/// Values of `dtype` made on the CPU and copied to `device`: uniform in [-4, 4) for the float
/// dtypes, 0..=250 for the integer ones (so every u8 value is exact).
fn input(shape: &[usize], dtype: DType, device: Device, seed: u64) -> Result<Tensor> {
    let t = random(shape, DType::F64, Device::Cpu, seed, 4.0);
    let t = if dtype.is_float() {
        t
    } else {
        let whole = t
            .to_vec::<f64>()?
            .iter()
            .map(|x| (x * 31.25 + 125.0).floor())
            .collect();
        Tensor::from_vec::<f64>(whole, shape.to_vec(), Device::Cpu)?
    };
    t.to_dtype(dtype)?.to_device(device)
}

/// A u32 index tensor of `shape` holding `values` (row-major), on `device`.
fn indices(values: Vec<u32>, shape: &[usize], device: Device) -> Result<Tensor> {
    Tensor::from_vec(values, shape.to_vec(), device)
}

/// `n` indices below `size`, deterministic, with repeats when n > size.
fn index_values(n: usize, size: usize, seed: u64) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % size as u64) as u32
        })
        .collect()
}

#[test]
fn cat_along_every_dim_of_mixed_views_in_all_dtypes() {
    let Some(gpu) = cuda("cat_along_every_dim_of_mixed_views_in_all_dtypes") else {
        return;
    };
    for dtype in ALL_DTYPES {
        for dim in 0..3 {
            // Parts of [3, 4, 5] with dim given lengths 2, 1, 3, 4: contiguous, a permuted
            // view, a narrowed view and a broadcast view.
            let shape_with = |len: usize| {
                let mut s = vec![3, 4, 5];
                s[dim] = len;
                s
            };
            parity(&format!("cat {dtype} dim {dim}"), gpu, 0.0, 0.0, |device| {
                let contiguous = input(&shape_with(2), dtype, device, 1)?;
                let permuted = {
                    let s = shape_with(1);
                    input(&[s[2], s[0], s[1]], dtype, device, 2)?.permute(&[1, 2, 0])?
                };
                let narrowed = {
                    let mut s = shape_with(3);
                    s[dim] += 2;
                    let wider: Vec<usize> = s.iter().map(|&d| d + 1).collect();
                    let mut t = input(&wider, dtype, device, 3)?;
                    for (d, &len) in s.iter().enumerate() {
                        t = t.narrow(d, 1, len)?;
                    }
                    t.narrow(dim, 2, 3)?
                };
                let broadcast = {
                    let mut row = shape_with(4);
                    let full = row.clone();
                    row[(dim + 1) % 3] = 1;
                    input(&row, dtype, device, 4)?.broadcast_as(full)?
                };
                Ok(vec![
                    Tensor::cat(&[&contiguous, &permuted, &narrowed, &broadcast], dim)?,
                    Tensor::cat(&[&broadcast], dim)?,
                    Tensor::cat(&[&permuted, &contiguous], dim)?,
                ])
            });
        }
    }
    // Large parts, and an empty one in the middle.
    parity("cat f32 over a wave", gpu, 0.0, 0.0, |device| {
        let a = input(&[OVER_A_WAVE, 2], DType::F32, device, 5)?;
        let b = input(&[OVER_A_WAVE, 3], DType::F32, device, 6)?.narrow(1, 1, 2)?;
        let empty = input(&[OVER_A_WAVE, 0], DType::F32, device, 7)?;
        Ok(vec![
            Tensor::cat(&[&a, &empty, &b], 1)?,
            Tensor::cat(&[&a.t()?, &b.t()?], 0)?,
        ])
    });
}

#[test]
fn cat_errors_match_the_cpu() {
    let Some(gpu) = cuda("cat_errors_match_the_cpu") else {
        return;
    };
    let run = |device| {
        let a = Tensor::zeros([2, 3], DType::F32, device).unwrap();
        let b = Tensor::zeros([2, 3], DType::F16, device).unwrap();
        (
            Tensor::cat(&[], 0).unwrap_err(),
            Tensor::cat(&[&a, &b], 0).unwrap_err(),
        )
    };
    assert_eq!(run(Device::Cpu), run(gpu));
}

/// Data views of [4, 5, 6] by name (for every dim's index ops).
type View = (&'static str, Vec<usize>, fn(Tensor) -> Result<Tensor>);

fn data_views() -> Vec<View> {
    vec![
        ("contiguous [4, 5, 6]", vec![4, 5, 6], Ok),
        ("permuted [4, 5, 6] of [6, 4, 5]", vec![6, 4, 5], |t| {
            t.permute(&[1, 2, 0])
        }),
        ("narrowed [4, 5, 6] of [5, 7, 6]", vec![5, 7, 6], |t| {
            t.narrow(0, 1, 4)?.narrow(1, 2, 5)
        }),
        ("broadcast [4, 5, 6] of [4, 1, 6]", vec![4, 1, 6], |t| {
            t.broadcast_as([4, 5, 6])
        }),
    ]
}

#[test]
fn index_select_and_gather_along_every_dim_in_all_dtypes() {
    let Some(gpu) = cuda("index_select_and_gather_along_every_dim_in_all_dtypes") else {
        return;
    };
    let dims = [4, 5, 6];
    for dtype in ALL_DTYPES {
        for (seed, (name, shape, view)) in data_views().into_iter().enumerate() {
            for dim in 0..3 {
                let size = dims[dim];
                let what = format!("{dtype} {name} dim {dim}");
                parity(&format!("index_select {what}"), gpu, 0.0, 0.0, |device| {
                    let data = view(input(&shape, dtype, device, seed as u64)?)?;
                    // Repeated indices, a single one, none, and strided index tensors (a
                    // narrowed one with an offset, a column of a matrix).
                    let repeated =
                        indices(index_values(2 * size + 1, size, 1), &[2 * size + 1], device)?;
                    let single = indices(vec![size as u32 - 1], &[1], device)?;
                    let none = indices(vec![], &[0], device)?;
                    let strided = indices(index_values(2 * size, size, 2), &[2 * size], device)?
                        .narrow(0, 1, size)?;
                    let column =
                        indices(index_values(12, size, 3), &[4, 3], device)?.narrow(1, 1, 1)?;
                    let column = column.squeeze(1)?;
                    Ok(vec![
                        data.index_select(dim, &repeated)?,
                        data.index_select(dim, &single)?,
                        data.index_select(dim, &none)?,
                        data.index_select(dim, &strided)?,
                        data.index_select(dim, &column)?,
                    ])
                });
                parity(&format!("gather {what}"), gpu, 0.0, 0.0, |device| {
                    let data = view(input(&shape, dtype, device, seed as u64)?)?;
                    // An index as large as the data outside dim, one smaller (and longer
                    // along dim, with repeats), and a permuted one.
                    let mut full = dims.to_vec();
                    full[dim] = 7;
                    let mut small = vec![2, 3, 4];
                    small[dim] = 9;
                    let index_full =
                        indices(index_values(full.iter().product(), size, 4), &full, device)?;
                    let index_small = indices(
                        index_values(small.iter().product(), size, 5),
                        &small,
                        device,
                    )?;
                    let mut reversed = full.clone();
                    reversed.reverse();
                    let index_permuted = indices(
                        index_values(full.iter().product(), size, 6),
                        &reversed,
                        device,
                    )?
                    .permute(&[2, 1, 0])?;
                    Ok(vec![
                        data.gather(dim, &index_full)?,
                        data.gather(dim, &index_small)?,
                        data.gather(dim, &index_permuted)?,
                    ])
                });
            }
        }
    }
    // Large: rows of an embedding table, and a gather over a wave.
    parity(
        "index_select f32 rows over a wave",
        gpu,
        0.0,
        0.0,
        |device| {
            let table = input(&[100_003, 3], DType::F32, device, 9)?;
            let index = indices(
                index_values(OVER_A_WAVE / 3, 100_003, 10),
                &[OVER_A_WAVE / 3],
                device,
            )?;
            Ok(vec![table.index_select(0, &index)?])
        },
    );
    parity("gather bf16 over a wave", gpu, 0.0, 0.0, |device| {
        let data = input(&[OVER_A_WAVE, 4], DType::BF16, device, 11)?;
        let index = indices(
            index_values(OVER_A_WAVE * 2, 4, 12),
            &[OVER_A_WAVE, 2],
            device,
        )?;
        Ok(vec![data.gather(1, &index)?])
    });
}

#[test]
fn index_add_and_scatter_add_along_every_dim() {
    let Some(gpu) = cuda("index_add_and_scatter_add_along_every_dim") else {
        return;
    };
    let dims = [4, 5, 6];
    // A few additions of values in [-4, 4) per slot, in another order: some ulp of partial
    // sums up to ~30, whose differences survive cancellation.
    for (dtype, tol) in FLOAT_DTYPES {
        for (seed, (name, shape, view)) in data_views().into_iter().enumerate() {
            for dim in 0..3 {
                let size = dims[dim];
                let what = format!("{dtype} {name} dim {dim}");
                parity(
                    &format!("index_add {what}"),
                    gpu,
                    32.0 * tol,
                    tol,
                    |device| {
                        let data = view(input(&shape, dtype, device, seed as u64)?)?;
                        let n = 2 * size + 1;
                        let index = indices(index_values(n, size, 20), &[n], device)?;
                        let mut source_dims = dims.to_vec();
                        source_dims[dim] = n;
                        let source = input(&source_dims, dtype, device, 21)?;
                        // A transposed source of the same shape.
                        let mut swapped = source_dims.clone();
                        let other = (dim + 1) % 3;
                        swapped.swap(dim, other);
                        let source_t = input(&swapped, dtype, device, 22)?.transpose(dim, other)?;
                        let none = indices(vec![], &[0], device)?;
                        let mut empty_dims = dims.to_vec();
                        empty_dims[dim] = 0;
                        let empty = input(&empty_dims, dtype, device, 23)?;
                        Ok(vec![
                            data.index_add(dim, &index, &source)?,
                            data.index_add(dim, &index, &source_t)?,
                            data.index_add(dim, &none, &empty)?,
                        ])
                    },
                );
                parity(
                    &format!("scatter_add {what}"),
                    gpu,
                    32.0 * tol,
                    tol,
                    |device| {
                        let data = view(input(&shape, dtype, device, seed as u64)?)?;
                        let mut small = vec![2, 3, 4];
                        small[dim] = 9;
                        let index = indices(
                            index_values(small.iter().product(), size, 24),
                            &small,
                            device,
                        )?;
                        let source = input(&small, dtype, device, 25)?;
                        let mut reversed = small.clone();
                        reversed.reverse();
                        let source_permuted =
                            input(&reversed, dtype, device, 26)?.permute(&[2, 1, 0])?;
                        let index_permuted = indices(
                            index_values(small.iter().product(), size, 27),
                            &reversed,
                            device,
                        )?
                        .permute(&[2, 1, 0])?;
                        Ok(vec![
                            data.scatter_add(dim, &index, &source)?,
                            data.scatter_add(dim, &index_permuted, &source_permuted)?,
                        ])
                    },
                );
            }
        }
    }
    // Many additions into few slots: the atomics' order differs from the CPU's index order,
    // so allow f32 (f64) rounding per added element.
    for (dtype, tol) in FLOAT_DTYPES {
        let per_slot = (OVER_A_WAVE / 7) as f64;
        let accumulate = if dtype == DType::F64 { 1e-13 } else { 1e-6 };
        parity(
            &format!("scatter_add {dtype} of a wave into 7 slots"),
            gpu,
            accumulate * per_slot,
            tol,
            |device| {
                let data = input(&[7, 3], dtype, device, 30)?;
                let index = indices(
                    index_values(OVER_A_WAVE * 3, 7, 31),
                    &[OVER_A_WAVE, 3],
                    device,
                )?;
                let source = input(&[OVER_A_WAVE, 3], dtype, device, 32)?;
                Ok(vec![data.scatter_add(0, &index, &source)?])
            },
        );
        parity(
            &format!("index_add {dtype} of a wave of rows into 7"),
            gpu,
            accumulate * per_slot,
            tol,
            |device| {
                let data = input(&[7, 2], dtype, device, 33)?;
                let index = indices(index_values(OVER_A_WAVE, 7, 34), &[OVER_A_WAVE], device)?;
                let source = input(&[OVER_A_WAVE, 2], dtype, device, 35)?;
                Ok(vec![data.index_add(0, &index, &source)?])
            },
        );
    }
}

/// The error an op's result gives by its readback: on the CPU the op itself fails; on CUDA
/// the kernel records the bad index and the next readback reports it (src/cuda/faults.rs).
fn error_at_readback(result: kiln_tensor::Result<Tensor>) -> kiln_tensor::Error {
    result
        .and_then(|t| t.to_device(Device::Cpu))
        .expect_err("an index out of range must be an error")
}

#[test]
fn out_of_range_indices_give_the_cpu_error() {
    let Some(gpu) = cuda("out_of_range_indices_give_the_cpu_error") else {
        return;
    };
    // Bad indices 9 (row-major position 1) and 12 (position 3) for a dim of size 5; stored
    // transposed, so storage order meets 12 before 9.
    let run = |device: Device| -> Vec<kiln_tensor::Error> {
        let data = input(&[5, 5], DType::F32, device, 40).unwrap();
        let index_1d = indices(vec![1, 9, 2, 12], &[4], device).unwrap();
        let index_2d = indices(vec![1, 12, 9, 0], &[2, 2], device)
            .unwrap()
            .t()
            .unwrap();
        let source_rows = input(&[4, 5], DType::F32, device, 41).unwrap();
        let source_2d = input(&[2, 2], DType::F32, device, 42).unwrap();
        // Every index bad, the last one too (size 0 along the dim).
        let no_columns = input(&[5, 0], DType::F32, device, 43).unwrap();
        let zero = indices(vec![0], &[1], device).unwrap();
        // A long index whose only bad value is near its end.
        let mut long = index_values(OVER_A_WAVE, 5, 44);
        long[OVER_A_WAVE - 2] = 77;
        let long = indices(long, &[OVER_A_WAVE], device).unwrap();
        vec![
            error_at_readback(data.index_select(0, &index_1d)),
            error_at_readback(data.index_select(1, &long)),
            error_at_readback(data.gather(1, &index_2d)),
            error_at_readback(data.index_add(0, &index_1d, &source_rows)),
            error_at_readback(data.scatter_add(1, &index_2d, &source_2d)),
            error_at_readback(no_columns.index_select(1, &zero)),
        ]
    };
    assert_eq!(run(Device::Cpu), run(gpu));
}

#[test]
fn a_bad_index_is_reported_once_at_the_next_readback_and_the_first_one_wins() {
    let Some(gpu) = cuda("bad index reported at the next readback") else {
        return;
    };
    let data = input(&[5, 3], DType::F32, gpu, 50).unwrap();
    let good = indices(vec![4, 0], &[2], gpu).unwrap();
    let bad_rows = indices(vec![0, 7], &[2], gpu).unwrap();
    let bad_columns = indices(vec![3], &[1], gpu).unwrap();
    // The CPU's copies and error first: a copy to the host is a readback too, and would
    // report the faults below.
    let cpu = data.to_device(Device::Cpu).unwrap();
    let expected = cpu
        .index_select(0, &bad_rows.to_device(Device::Cpu).unwrap())
        .unwrap_err();
    // No synchronisation at the ops: both return, and the readback names the first fault.
    let first = data.index_select(0, &bad_rows).unwrap();
    let second = data.index_select(1, &bad_columns).unwrap();
    assert_eq!(second.to_vec::<f32>().unwrap_err(), expected);
    // Reported once: the next readbacks succeed, and a bad index reads as zero.
    assert_eq!(first.to_vec::<f32>().unwrap()[3..], [0.0; 3]);
    let selected = data.index_select(0, &good).unwrap();
    let want = cpu
        .index_select(0, &good.to_device(Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(
        selected.to_vec::<f32>().unwrap(),
        want.to_vec::<f32>().unwrap()
    );
}

#[test]
fn index_add_rejects_integer_data_as_the_cpu_does() {
    let Some(gpu) = cuda("index_add_rejects_integer_data_as_the_cpu_does") else {
        return;
    };
    for dtype in [DType::U8, DType::U32] {
        let run = |device| {
            let data = Tensor::zeros([3, 2], dtype, device).unwrap();
            let index = indices(vec![0, 2], &[2], device).unwrap();
            let source = Tensor::zeros([2, 2], dtype, device).unwrap();
            let gather_index = indices(vec![0, 1], &[1, 2], device).unwrap();
            let gather_source = Tensor::zeros([1, 2], dtype, device).unwrap();
            (
                data.index_add(0, &index, &source).unwrap_err(),
                data.scatter_add(0, &gather_index, &gather_source)
                    .unwrap_err(),
            )
        };
        assert_eq!(run(Device::Cpu), run(gpu), "{dtype}");
    }
}
