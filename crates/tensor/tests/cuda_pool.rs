//! CUDA parity of pooling and nearest upsampling, forward and backward (kernels/pool.cu)
//! against the CPU backend (src/cpu/pool.rs), the reference each kernel names. The primitives
//! are driven through the backend trait directly, so every dtype, any input layout, dilation
//! and even indices the forward could not have made reach them; the ops also run end to end
//! through the tensor API and autograd. Every backward is a gather summing in the CPU's order,
//! so results are compared bit for bit. Skips without a GPU (see cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::cpu::CpuStorage;
use kiln_tensor::cuda::CudaStorage;
use kiln_tensor::{
    BackendStorage, Conv2dGeometry, DType, Error, Layout, Operand, Pool2dOptions, Shape,
};

/// Pooling geometries: overlapping, strided, kernel 1, kernel = image, asymmetric, dilated
/// (the backend takes it though the op layer passes 1), prime sizes, and one whose output and
/// input span more than one grid wave.
fn geometries() -> Vec<(&'static str, Conv2dGeometry)> {
    vec![
        (
            "3x3 stride 2 pad 1",
            geometry([2, 3, 9, 8], [3, 3], [2, 2], [1, 1], [1, 1]),
        ),
        (
            "2x2",
            geometry([2, 2, 6, 7], [2, 2], [2, 2], [0, 0], [1, 1]),
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
            "2x3 stride (1,2) pad (1,1)",
            geometry([1, 5, 7, 11], [2, 3], [1, 2], [1, 1], [1, 1]),
        ),
        (
            "3x3 stride 1 pad 1 dilation 2",
            geometry([1, 3, 13, 7], [3, 3], [1, 1], [1, 1], [2, 2]),
        ),
        (
            "more than one grid wave",
            geometry([4, 64, 67, 67], [3, 3], [1, 1], [1, 1], [1, 1]),
        ),
    ]
}

/// `len` deterministic values in [-2, 2); when `coarse`, multiples of 0.5 (so windows tie)
/// with NaN, ±inf and ±0 sprinkled in.
fn sample(len: usize, seed: u64, coarse: bool) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = (state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0;
            if !coarse {
                return x;
            }
            match i % 37 {
                5 => f64::NAN,
                11 => f64::INFINITY,
                17 => f64::NEG_INFINITY,
                23 => -0.0,
                29 => 0.0,
                _ => (x * 2.0).round() / 2.0,
            }
        })
        .collect()
}

/// The views of a `shape` tensor the primitives are read through: contiguous, from an offset,
/// permuted (a channels-last buffer), narrowed and broadcast along the batch; each with the
/// length of the buffer it needs.
fn views(shape: [usize; 4]) -> Vec<(&'static str, Layout, usize)> {
    let [a, b, c, d] = shape;
    let len = a * b * c * d;
    let offset = Layout::contiguous([len + 5])
        .narrow(0, 5, len)
        .unwrap()
        .reshape(&Shape::from(shape))
        .expect("a contiguous run reshapes");
    vec![
        ("contiguous", Layout::contiguous(shape), len),
        ("offset 5", offset, len + 5),
        (
            "permuted",
            Layout::contiguous([a, c, d, b])
                .permute(&[0, 3, 1, 2])
                .unwrap(),
            len,
        ),
        (
            "narrowed",
            Layout::contiguous([a, b, c + 2, d + 3])
                .narrow(2, 1, c)
                .unwrap()
                .narrow(3, 2, d)
                .unwrap(),
            a * b * (c + 2) * (d + 3),
        ),
        (
            "broadcast",
            Layout::contiguous([1, b, c, d])
                .broadcast_as(&Shape::from(shape))
                .unwrap(),
            b * c * d,
        ),
    ]
}

fn upload(s: &CpuStorage) -> CudaStorage {
    kiln_tensor::upload(&cuda_device(), s).expect("upload")
}

fn download(s: kiln_tensor::Result<CudaStorage>) -> CpuStorage {
    s.and_then(|s| kiln_tensor::download(&s)).expect("cuda")
}

/// Exactly equal, NaN matching NaN (storage equality would call NaN != NaN).
fn assert_same(what: &str, expected: &CpuStorage, got: &CpuStorage) {
    let f64s = |s: &CpuStorage| {
        let n = s.len();
        match s.to_dtype(&Layout::contiguous([n]), DType::F64).unwrap() {
            CpuStorage::F64(v) => v,
            _ => unreachable!(),
        }
    };
    assert_eq!(expected.dtype(), got.dtype(), "{what}: dtypes");
    let (a, b) = (f64s(expected), f64s(got));
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits(),
            "{what}: element {i}: cpu {x} vs cuda {y}"
        );
    }
}

#[test]
fn max_pool2d_and_its_backward_match_the_cpu_bit_for_bit() {
    let Some(_gpu) = cuda("max_pool2d parity") else {
        return;
    };
    for (name, g) in geometries() {
        let image = [g.batch, g.channels, g.height, g.width];
        let pooled = [g.batch, g.channels, g.out_height, g.out_width];
        for (view, layout, len) in views(image) {
            for dtype in FLOATS {
                let what = format!("max_pool2d {name}, {view}, {dtype}");
                let input = host_storage(&sample(len, 3, true), dtype);
                let (values, indices) = input.max_pool2d(&layout, &g).expect("cpu");
                let (cuda_values, cuda_indices) = upload(&input).max_pool2d(&layout, &g).unwrap();
                assert_same(&what, &values, &download(Ok(cuda_values)));
                assert_eq!(indices, download(Ok(cuda_indices)), "{what}: indices");
                // The backward from a grad in each view, with the forward's indices and with
                // some replaced by indices no window can hold (out of the plane, or of another
                // window), which both backends ignore.
                let CpuStorage::U32(mut corrupt) = indices.clone() else {
                    unreachable!()
                };
                let plane = (g.height * g.width) as u32;
                for (i, index) in corrupt.iter_mut().enumerate() {
                    match i % 7 {
                        2 => *index = plane + i as u32 % 3,
                        4 => *index = (*index + 1 + i as u32) % plane,
                        _ => {}
                    }
                }
                for (grad_view, grad_layout, grad_len) in views(pooled) {
                    let grad = host_storage(&sample(grad_len, 4, false), dtype);
                    for (kind, index) in [
                        ("forward", &indices),
                        ("corrupted", &CpuStorage::U32(corrupt.clone())),
                    ] {
                        let index_layout = Layout::contiguous(pooled);
                        let expected = grad
                            .max_pool2d_backward(
                                &grad_layout,
                                Operand::new(index, &index_layout),
                                &g,
                            )
                            .expect("cpu");
                        let index = upload(index);
                        let got = download(upload(&grad).max_pool2d_backward(
                            &grad_layout,
                            Operand::new(&index, &index_layout),
                            &g,
                        ));
                        assert_same(
                            &format!("{what}: backward, {grad_view} grad, {kind} indices"),
                            &expected,
                            &got,
                        );
                    }
                }
            }
        }
    }
    // A plane of all -inf: the first pixel of the window wins, never the padding.
    let g = geometry([1, 1, 3, 3], [3, 3], [1, 1], [1, 1], [1, 1]);
    let input = host_storage(&[f64::NEG_INFINITY; 9], DType::F32);
    let layout = Layout::contiguous([1, 1, 3, 3]);
    let (_, expected) = input.max_pool2d(&layout, &g).unwrap();
    let (_, got) = upload(&input).max_pool2d(&layout, &g).unwrap();
    assert_eq!(expected, download(Ok(got)), "all -inf");
}

#[test]
fn avg_pool2d_and_its_backward_match_the_cpu_bit_for_bit() {
    let Some(_gpu) = cuda("avg_pool2d parity") else {
        return;
    };
    for (name, g) in geometries() {
        let image = [g.batch, g.channels, g.height, g.width];
        let pooled = [g.batch, g.channels, g.out_height, g.out_width];
        for dtype in FLOATS {
            for (view, layout, len) in views(image) {
                let what = format!("avg_pool2d {name}, {view}, {dtype}");
                let input = host_storage(&sample(len, 5, view == "offset 5"), dtype);
                let expected = input.avg_pool2d(&layout, &g).expect("cpu");
                let got = download(upload(&input).avg_pool2d(&layout, &g));
                // Both sum in f64 in (ki, kj) order and scale the same way.
                assert_same(&what, &expected, &got);
            }
            for (view, layout, len) in views(pooled) {
                let what = format!("avg_pool2d_backward {name}, {view}, {dtype}");
                let grad = host_storage(&sample(len, 6, false), dtype);
                let expected = grad.avg_pool2d_backward(&layout, &g).expect("cpu");
                let got = download(upload(&grad).avg_pool2d_backward(&layout, &g));
                assert_same(&what, &expected, &got);
            }
        }
    }
}

#[test]
fn upsample_nearest2d_and_its_backward_match_the_cpu_bit_for_bit() {
    let Some(_gpu) = cuda("upsample_nearest2d parity") else {
        return;
    };
    // Up, down, mixed, by one, to 1, primes, and one past a grid wave.
    let cases: [([usize; 4], [usize; 2]); 8] = [
        ([2, 3, 4, 5], [8, 10]),
        ([2, 3, 7, 9], [3, 4]),
        ([1, 2, 5, 5], [13, 2]),
        ([1, 1, 1, 1], [7, 3]),
        ([2, 2, 6, 6], [1, 1]),
        ([1, 3, 3, 7], [17, 29]),
        ([3, 1, 9, 9], [9, 9]),
        ([2, 16, 64, 64], [129, 131]),
    ];
    for (shape, [out_height, out_width]) in cases {
        let [n, c, h, w] = shape;
        for (view, layout, len) in views(shape) {
            for dtype in [DType::U8, DType::U32].into_iter().chain(FLOATS) {
                let what =
                    format!("upsample {shape:?} -> {out_height}x{out_width}, {view}, {dtype}");
                let values: Vec<f64> = sample(len, 7, true)
                    .into_iter()
                    .map(|x| {
                        if dtype.is_float() {
                            x
                        } else if x.is_finite() {
                            (x * 60.0).abs()
                        } else {
                            3.0
                        }
                    })
                    .collect();
                let input = host_storage(&values, dtype);
                let expected = input
                    .upsample_nearest2d(&layout, out_height, out_width)
                    .expect("cpu");
                let got =
                    download(upload(&input).upsample_nearest2d(&layout, out_height, out_width));
                assert_same(&what, &expected, &got);
            }
        }
        for (view, layout, len) in views([n, c, out_height, out_width]) {
            for dtype in FLOATS {
                let what = format!(
                    "upsample backward {shape:?} <- {out_height}x{out_width}, {view}, {dtype}"
                );
                let grad = host_storage(&sample(len, 8, false), dtype);
                let expected = grad
                    .upsample_nearest2d_backward(&layout, h, w)
                    .expect("cpu");
                let got = download(upload(&grad).upsample_nearest2d_backward(&layout, h, w));
                assert_same(&what, &expected, &got);
            }
        }
    }
}

#[test]
fn pooling_and_upsampling_match_the_cpu_end_to_end_with_gradients() {
    let Some(gpu) = cuda("pooling end to end") else {
        return;
    };
    let options = Pool2dOptions {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
    };
    for (dtype, _) in FLOAT_DTYPES {
        // Through the tensor API and autograd, from a permuted (channels-last) input: values,
        // indices and the input gradient of sum(y * w) of each op.
        parity(&format!("pooling {dtype}"), gpu, 0.0, 0.0, |device| {
            let x = random(&[2, 7, 9, 3], dtype, device, 14, 1.0)
                .permute(&[0, 3, 1, 2])?
                .track()?;
            let (max, indices) = x.max_pool2d_with_indices(options)?;
            let avg = x.avg_pool2d(options)?;
            let up = x.upsample_nearest2d(13, 5)?;
            let loss = max
                .mul(&random(max.dims(), dtype, device, 15, 1.0))?
                .sum_all()?
                .add(
                    &avg.mul(&random(avg.dims(), dtype, device, 16, 1.0))?
                        .sum_all()?,
                )?
                .add(
                    &up.mul(&random(up.dims(), dtype, device, 17, 1.0))?
                        .sum_all()?,
                )?;
            let grad = loss.backward()?.get(&x).cloned().expect("x's gradient");
            Ok(vec![max, indices, avg, up, grad])
        });
    }
}

#[test]
fn pool_primitives_reject_what_the_cpu_rejects() {
    let Some(_gpu) = cuda("pool primitive errors") else {
        return;
    };
    let g = geometry([1, 1, 4, 4], [3, 3], [1, 1], [1, 1], [1, 1]);
    let layout = Layout::contiguous([1, 1, 4, 4]);
    for dtype in [DType::U8, DType::U32] {
        let image = upload(&host_storage(&[1.0; 16], dtype));
        for (op, result) in [
            ("max_pool2d", image.max_pool2d(&layout, &g).map(|(v, _)| v)),
            ("avg_pool2d", image.avg_pool2d(&layout, &g)),
            (
                "avg_pool2d_backward",
                image.avg_pool2d_backward(&layout, &g),
            ),
            (
                "upsample_nearest2d_backward",
                image.upsample_nearest2d_backward(&layout, 2, 2),
            ),
        ] {
            match result {
                Err(Error::UnsupportedDType { op: o, dtype: d }) => {
                    assert_eq!((o, d), (op, dtype))
                }
                other => panic!("{op} of {dtype}: {other:?}"),
            }
        }
    }
    // A layout that reaches past its buffer is an error, not an out-of-bounds read.
    let small = upload(&host_storage(&[1.0; 15], DType::F32));
    assert!(small.max_pool2d(&layout, &g).is_err());
    assert!(small.avg_pool2d(&layout, &g).is_err());
    assert!(small.upsample_nearest2d(&layout, 8, 8).is_err());
    // Indices of the wrong dtype, and a resize to nothing.
    let grad = upload(&host_storage(&[1.0; 16], DType::F32));
    assert!(grad
        .max_pool2d_backward(&layout, Operand::new(&grad, &layout), &g)
        .is_err());
    assert!(grad.upsample_nearest2d(&layout, 0, 3).is_err());
}
