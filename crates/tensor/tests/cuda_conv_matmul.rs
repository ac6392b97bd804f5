//! CUDA parity of the convolution primitives (im2col, col2im: kernels/conv.cu; pooling is
//! in cuda_pool.rs) and the matrix product (kernels/matmul.cu). Expected values come from the CPU
//! backend (src/cpu/conv.rs, src/cpu/matmul.rs), the reference each kernel names. The
//! convolution primitives are driven through the backend trait directly, so every dtype and
//! any input layout reaches them; convolutions, pooling and products also run end to end
//! through the tensor API. Skips without a GPU (see cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::cpu::CpuStorage;
use kiln_tensor::cuda::CudaStorage;
use kiln_tensor::{
    BackendStorage, Conv2dGeometry, Conv2dOptions, ConvTranspose2dOptions, DType, Error, Layout,
    Operand, Pool2dOptions, Shape, Tensor,
};

/// The geometries every conv primitive is checked over: stride 2, padding 1, dilation 2, 1x1,
/// kernel = image, asymmetric everything, and one whose columns span more than one grid wave.
fn geometries() -> Vec<(&'static str, Conv2dGeometry)> {
    vec![
        (
            "3x3 pad 1",
            geometry([2, 3, 5, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        ),
        (
            "3x3 stride 2 pad 1",
            geometry([2, 2, 9, 8], [3, 3], [2, 2], [1, 1], [1, 1]),
        ),
        (
            "3x3 dilation 2 pad 2",
            geometry([1, 3, 7, 7], [3, 3], [1, 1], [2, 2], [2, 2]),
        ),
        (
            "1x1",
            geometry([3, 4, 4, 5], [1, 1], [1, 1], [0, 0], [1, 1]),
        ),
        (
            "kernel = image",
            geometry([2, 3, 4, 6], [4, 6], [1, 1], [0, 0], [1, 1]),
        ),
        (
            "2x3 stride (2,1) pad (1,1) dilation (1,2)",
            geometry([2, 2, 6, 9], [2, 3], [2, 1], [1, 1], [1, 2]),
        ),
        (
            "4x4 stride 2 pad 1 (the DCGAN layer)",
            geometry([2, 3, 8, 8], [4, 4], [2, 2], [1, 1], [1, 1]),
        ),
        (
            "more than one grid wave",
            geometry([4, 16, 33, 33], [3, 3], [1, 1], [1, 1], [1, 1]),
        ),
    ]
}

/// `len` deterministic values: small integers for the integer dtypes, [-2, 2) otherwise.
fn sample(len: usize, dtype: DType, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if dtype.is_float() {
                (state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            } else {
                (state % 251) as f64
            }
        })
        .collect()
}

/// The views of a `shape` tensor the primitives are read through: contiguous, contiguous
/// from an offset, permuted (a channels-last buffer), narrowed (padding around each plane)
/// and broadcast along the batch; each with the length of the buffer it needs.
fn views(shape: [usize; 4]) -> Vec<(&'static str, Layout, usize)> {
    let [a, b, c, d] = shape;
    let len = a * b * c * d;
    let offset = Layout::contiguous([len + 5])
        .narrow(0, 5, len)
        .unwrap()
        .reshape(&Shape::from(shape))
        .expect("a contiguous run reshapes");
    let mut views = vec![
        ("contiguous", Layout::contiguous(shape), len),
        ("offset 5", offset, len + 5),
    ];
    views.push((
        "permuted",
        Layout::contiguous([a, c, d, b])
            .permute(&[0, 3, 1, 2])
            .unwrap(),
        len,
    ));
    views.push((
        "narrowed",
        Layout::contiguous([a, b, c + 2, d + 3])
            .narrow(2, 1, c)
            .unwrap()
            .narrow(3, 2, d)
            .unwrap(),
        a * b * (c + 2) * (d + 3),
    ));
    views.push((
        "broadcast",
        Layout::contiguous([1, b, c, d])
            .broadcast_as(&Shape::from(shape))
            .unwrap(),
        b * c * d,
    ));
    views
}

/// Runs one primitive on the CPU and on CUDA over the same buffer and layout.
fn run_cpu_and_cuda(
    input: &CpuStorage,
    layout: &Layout,
    cpu_op: impl Fn(&CpuStorage, &Layout) -> kiln_tensor::Result<CpuStorage>,
    cuda_op: impl Fn(&CudaStorage, &Layout) -> kiln_tensor::Result<CudaStorage>,
) -> (CpuStorage, CpuStorage) {
    let expected = cpu_op(input, layout).expect("cpu");
    let on_device = kiln_tensor::upload(&cuda_device(), input).expect("upload");
    let got = cuda_op(&on_device, layout)
        .and_then(|out| kiln_tensor::download(&out))
        .expect("cuda");
    (expected, got)
}

#[test]
fn im2col_matches_the_cpu_for_every_dtype_geometry_and_layout() {
    let Some(_gpu) = cuda("im2col parity") else {
        return;
    };
    for (name, g) in geometries() {
        let image = [g.batch, g.channels, g.height, g.width];
        for (view, layout, len) in views(image) {
            for dtype in ALL_DTYPES {
                let input = host_storage(&sample(len, dtype, 1), dtype);
                let (expected, got) = run_cpu_and_cuda(
                    &input,
                    &layout,
                    |s, l| s.im2col(l, &g),
                    |s, l| s.im2col(l, &g),
                );
                // A copy: equal element for element (the inputs hold no NaN).
                assert_eq!(expected, got, "im2col {name}, {view}, {dtype}");
            }
        }
    }
}

#[test]
fn col2im_matches_the_cpu_bit_for_bit() {
    let Some(_gpu) = cuda("col2im parity") else {
        return;
    };
    for (name, g) in geometries() {
        let columns = g.columns_shape();
        let [rows, cols] = [columns.dims()[0], columns.dims()[1]];
        // Columns as a [rows, cols] matrix: contiguous, transposed (read through a permuted
        // [cols, rows] buffer) and narrowed out of a wider one.
        let layouts = [
            ("contiguous", Layout::contiguous([rows, cols]), rows * cols),
            (
                "transposed",
                Layout::contiguous([cols, rows]).permute(&[1, 0]).unwrap(),
                rows * cols,
            ),
            (
                "narrowed",
                Layout::contiguous([rows + 1, cols + 3])
                    .narrow(0, 1, rows)
                    .unwrap()
                    .narrow(1, 3, cols)
                    .unwrap(),
                (rows + 1) * (cols + 3),
            ),
        ];
        for (view, layout, len) in layouts {
            for dtype in FLOATS {
                let input = host_storage(&sample(len, dtype, 2), dtype);
                let (expected, got) = run_cpu_and_cuda(
                    &input,
                    &layout,
                    |s, l| s.col2im(l, &g),
                    |s, l| s.col2im(l, &g),
                );
                // Each pixel adds its taps in the CPU's (ki, kj) order from +0 in the math
                // type, so the sums are the same roundings: exactly equal.
                assert_eq!(expected, got, "col2im {name}, {view}, {dtype}");
            }
        }
    }
}

#[test]
fn conv_primitives_reject_what_the_cpu_rejects() {
    let Some(_gpu) = cuda("conv primitive errors") else {
        return;
    };
    let g = geometry([1, 1, 4, 4], [3, 3], [1, 1], [1, 1], [1, 1]);
    let device = cuda_device();
    for dtype in [DType::U8, DType::U32] {
        let columns = kiln_tensor::upload(&device, &host_storage(&[1.0; 144], dtype)).unwrap();
        match columns.col2im(&Layout::contiguous([9, 16]), &g) {
            Err(Error::UnsupportedDType {
                op: "col2im",
                dtype: d,
            }) => assert_eq!(d, dtype),
            other => panic!("col2im of {dtype}: {other:?}"),
        }
    }
    // A layout that reaches past its buffer is an error, not an out-of-bounds read.
    let small = kiln_tensor::upload(&device, &host_storage(&[1.0; 15], DType::F32)).unwrap();
    assert!(small.im2col(&Layout::contiguous([1, 1, 4, 4]), &g).is_err());
}

#[test]
fn convolutions_and_pooling_match_the_cpu_end_to_end() {
    let Some(gpu) = cuda("conv2d / conv_transpose2d / max_pool2d parity") else {
        return;
    };
    for (dtype, tolerance) in FLOAT_DTYPES {
        // conv2d: im2col and the matrix product. [2, 3, 9, 8] * [5, 3, 3, 3], stride 2, pad 1.
        parity(
            &format!("conv2d {dtype}"),
            gpu,
            tolerance * 10.0,
            tolerance * 10.0,
            |device| {
                let x = random(&[2, 3, 9, 8], dtype, device, 10, 1.0);
                let w = random(&[5, 3, 3, 3], dtype, device, 11, 1.0);
                let options = Conv2dOptions {
                    stride: [2, 2],
                    padding: [1, 1],
                    dilation: [1, 1],
                };
                Ok(vec![x.conv2d(&w, options)?])
            },
        );
        // conv_transpose2d: the product and col2im. [2, 4, 5, 5] * [4, 3, 4, 4], stride 2.
        parity(
            &format!("conv_transpose2d {dtype}"),
            gpu,
            tolerance * 10.0,
            tolerance * 10.0,
            |device| {
                let x = random(&[2, 4, 5, 5], dtype, device, 12, 1.0);
                let w = random(&[4, 3, 4, 4], dtype, device, 13, 1.0);
                let options = ConvTranspose2dOptions {
                    stride: [2, 2],
                    padding: [1, 1],
                    output_padding: [0, 0],
                    dilation: [1, 1],
                };
                Ok(vec![x.conv_transpose2d(&w, options)?])
            },
        );
        // max_pool2d of a permuted (channels-last) input: values and indices.
        parity(&format!("max_pool2d {dtype}"), gpu, 0.0, 0.0, |device| {
            let x = random(&[2, 7, 9, 3], dtype, device, 14, 1.0).permute(&[0, 3, 1, 2])?;
            let options = Pool2dOptions {
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
            };
            let (values, indices) = x.max_pool2d_with_indices(options)?;
            Ok(vec![values, indices])
        });
    }
}

/// Per-dtype tolerances of a product with k terms (|a|, |b| <= 1): the CPU and CUDA sum in
/// different orders, so f32 and f64 differ by a few roundings of partial sums (~sqrt(k)
/// ulps), and the halves, rounded once from such f32 sums, by one ulp of the half type.
fn matmul_tolerance(dtype: DType, k: usize) -> (f64, f64) {
    let root = (k.max(1) as f64).sqrt();
    match dtype {
        DType::F32 => (1e-5 * root, 1e-5 * root),
        DType::F64 => (1e-13 * root, 1e-13 * root),
        DType::F16 => (1e-4 * root, 2e-3),
        DType::BF16 => (1e-4 * root, 1.6e-2),
        _ => unreachable!(),
    }
}

/// (m, k, n): ones, primes, tile edges (63, 64, 65), 127 x 129 x 131, long and thin.
const SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (1, 7, 1),
    (2, 3, 5),
    (13, 17, 19),
    (1, 300, 1),
    (63, 64, 65),
    (64, 64, 64),
    (65, 1, 67),
    (127, 129, 131),
    (200, 31, 1),
    (1, 37, 257),
    (97, 211, 3),
];

#[test]
fn matmul_matches_the_cpu_over_shapes_and_dtypes() {
    let Some(gpu) = cuda("matmul parity") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (atol, rtol) = matmul_tolerance(dtype, k);
            let seed = 100 + 2 * i as u64;
            parity(&format!("{m}x{k}x{n} {dtype}"), gpu, atol, rtol, |device| {
                let a = random(&[m, k], dtype, device, seed, 1.0);
                let b = random(&[k, n], dtype, device, seed + 1, 1.0);
                Ok(vec![a.matmul(&b)?])
            });
        }
    }
}

#[test]
fn matmul_reads_transposed_narrowed_and_offset_operands_in_place() {
    let Some(gpu) = cuda("matmul strided parity") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        for &(m, k, n) in &[(13, 17, 19), (127, 129, 131), (1, 5, 64), (65, 2, 1)] {
            let (atol, rtol) = matmul_tolerance(dtype, k);
            // Aᵀ-stored lhs, Bᵀ-stored rhs: each operand a transposed view.
            parity(
                &format!("aT bT {m}x{k}x{n} {dtype}"),
                gpu,
                atol,
                rtol,
                |device| {
                    let a = random(&[k, m], dtype, device, 1, 1.0).t()?;
                    let b = random(&[n, k], dtype, device, 2, 1.0).t()?;
                    Ok(vec![a.matmul(&b)?])
                },
            );
            // One transposed, one not (the backward products' layouts).
            parity(
                &format!("aT b {m}x{k}x{n} {dtype}"),
                gpu,
                atol,
                rtol,
                |device| {
                    let a = random(&[k, m], dtype, device, 3, 1.0).t()?;
                    let b = random(&[k, n], dtype, device, 4, 1.0);
                    Ok(vec![a.matmul(&b)?])
                },
            );
            // Narrowed out of larger matrices: row strides wider than the rows, offsets.
            parity(
                &format!("narrowed {m}x{k}x{n} {dtype}"),
                gpu,
                atol,
                rtol,
                |device| {
                    let a = random(&[m + 2, k + 3], dtype, device, 5, 1.0)
                        .narrow(0, 1, m)?
                        .narrow(1, 2, k)?;
                    let b = random(&[k + 1, n + 5], dtype, device, 6, 1.0)
                        .narrow(0, 1, k)?
                        .narrow(1, 4, n)?;
                    Ok(vec![a.matmul(&b)?])
                },
            );
        }
    }
}

#[test]
fn matmul_handles_batches_broadcast_and_permuted_batch_layouts() {
    let Some(gpu) = cuda("matmul batch parity") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        let (atol, rtol) = matmul_tolerance(dtype, 29);
        // [3, 13, 29] x [3, 29, 11].
        parity(&format!("batched {dtype}"), gpu, atol, rtol, |device| {
            let a = random(&[3, 13, 29], dtype, device, 20, 1.0);
            let b = random(&[3, 29, 11], dtype, device, 21, 1.0);
            Ok(vec![a.matmul(&b)?])
        });
        // Two batch dims, lhs transposed per matrix: [2, 3, 13, 29] x [2, 3, 29, 70].
        parity(&format!("4-d {dtype}"), gpu, atol, rtol, |device| {
            let a = random(&[2, 3, 29, 13], dtype, device, 22, 1.0).transpose(2, 3)?;
            let b = random(&[2, 3, 29, 70], dtype, device, 23, 1.0);
            Ok(vec![a.matmul(&b)?])
        });
        // A broadcast lhs (batch stride 0): [13, 29] x [5, 29, 11].
        parity(
            &format!("broadcast lhs {dtype}"),
            gpu,
            atol,
            rtol,
            |device| {
                let a = random(&[13, 29], dtype, device, 24, 1.0);
                let b = random(&[5, 29, 11], dtype, device, 25, 1.0);
                Ok(vec![a.matmul(&b)?])
            },
        );
        // A broadcast rhs and a batch dim of size 1 on the lhs: [4, 1, 13, 29] x [3, 29, 11].
        parity(
            &format!("broadcast both {dtype}"),
            gpu,
            atol,
            rtol,
            |device| {
                let a = random(&[4, 1, 13, 29], dtype, device, 26, 1.0);
                let b = random(&[3, 29, 11], dtype, device, 27, 1.0);
                Ok(vec![a.matmul(&b)?])
            },
        );
        // Batch dim in the middle of the buffer: [13, 3, 29] permuted to [3, 13, 29].
        parity(
            &format!("permuted batch {dtype}"),
            gpu,
            atol,
            rtol,
            |device| {
                let a = random(&[13, 3, 29], dtype, device, 28, 1.0).permute(&[1, 0, 2])?;
                let b = random(&[29, 3, 11], dtype, device, 29, 1.0).permute(&[1, 0, 2])?;
                Ok(vec![a.matmul(&b)?])
            },
        );
    }
}

#[test]
fn matmul_covers_grids_past_the_y_and_z_limits_and_empty_products() {
    let Some(gpu) = cuda("matmul grid limits") else {
        return;
    };
    let (atol, rtol) = matmul_tolerance(DType::F32, 3);
    // More batch entries than the 65535 blocks of grid z.
    parity("70001 batches", gpu, atol, rtol, |device| {
        let a = random(&[70_001, 2, 3], DType::F32, device, 30, 1.0);
        let b = random(&[70_001, 3, 2], DType::F32, device, 31, 1.0);
        Ok(vec![a.matmul(&b)?])
    });
    // More row tiles than the 65535 blocks of grid y.
    let m = 65_535 * 64 + 5;
    parity("4M rows", gpu, atol, rtol, |device| {
        let a = random(&[m, 3], DType::F32, device, 32, 1.0);
        let b = random(&[3, 3], DType::F32, device, 33, 1.0);
        Ok(vec![a.matmul(&b)?])
    });
    // k = 0: zeros; m = 0 and n = 0: empty.
    for (m, k, n) in [(3, 0, 4), (0, 5, 4), (3, 5, 0)] {
        parity(&format!("{m}x{k}x{n}"), gpu, 0.0, 0.0, |device| {
            let a = Tensor::ones([m, k], DType::F32, device)?;
            let b = Tensor::ones([k, n], DType::F32, device)?;
            Ok(vec![a.matmul(&b)?])
        });
    }
}

#[test]
fn matmul_keeps_infinities_and_nan_where_the_cpu_does() {
    let Some(gpu) = cuda("matmul special values") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        // Row 0 of A holds an inf, row 1 a NaN, and B's last element an inf (k = 70, n = 67
        // end in partial tiles): infinities and NaN propagate as on the CPU, and the zero
        // padding of the partial tiles adds nothing (0 * 0, never 0 * inf).
        parity(&format!("inf and nan {dtype}"), gpu, 1e-2, 1e-2, |device| {
            let mut a = vec![0.5f64; 3 * 70];
            a[5] = f64::INFINITY;
            a[70 + 9] = f64::NAN;
            let mut b = vec![1.0f64; 70 * 67];
            b[70 * 67 - 1] = f64::INFINITY;
            let a = Tensor::from_vec(a, [3, 70], device)?.to_dtype(dtype)?;
            let b = Tensor::from_vec(b, [70, 67], device)?.to_dtype(dtype)?;
            Ok(vec![a.matmul(&b)?])
        });
    }
}

#[test]
fn matmul_rejects_what_the_cpu_rejects() {
    let Some(_gpu) = cuda("matmul errors") else {
        return;
    };
    let device = cuda_device();
    let layout = Layout::contiguous([2, 2]);
    for dtype in [DType::U8, DType::U32] {
        let a = kiln_tensor::upload(&device, &host_storage(&[1.0; 4], dtype)).unwrap();
        match a.matmul(&layout, Operand::new(&a, &layout)) {
            Err(Error::UnsupportedDType {
                op: "matmul",
                dtype: d,
            }) => assert_eq!(d, dtype),
            other => panic!("matmul of {dtype}: {other:?}"),
        }
    }
    let a = kiln_tensor::upload(&device, &host_storage(&[1.0; 4], DType::F32)).unwrap();
    let b = kiln_tensor::upload(&device, &host_storage(&[1.0; 4], DType::F64)).unwrap();
    match a.matmul(&layout, Operand::new(&b, &layout)) {
        Err(Error::DTypeMismatch {
            op: "matmul",
            lhs: DType::F32,
            rhs: DType::F64,
        }) => {}
        other => panic!("f32 x f64: {other:?}"),
    }
    // Shapes that do not chain, and a layout past its buffer, are errors, not bad reads.
    assert!(a
        .matmul(&layout, Operand::new(&a, &Layout::contiguous([1, 4])))
        .is_err());
    assert!(a
        .matmul(
            &Layout::contiguous([2, 3]),
            Operand::new(&a, &Layout::contiguous([3, 1]))
        )
        .is_err());
}
