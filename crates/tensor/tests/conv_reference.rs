//! Convolution, transposed convolution, pooling and upsampling against direct loops written
//! from their definitions (PyTorch's docs for `conv2d`, `conv_transpose2d`, `max_pool2d`,
//! `avg_pool2d` with `count_include_pad=True`, and `interpolate(mode="nearest")`), over random
//! configurations, in f64 and f32; and the errors for shapes that do not fit. The gradients are
//! checked in gradcheck.rs beside this file, and PyTorch's own numbers in the root package's
//! tests/nn_parity.rs.

use kiln_tensor::{
    Conv2dOptions, ConvTranspose2dOptions, DType, Device, Pool2dOptions, Result, Tensor,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Row-major index into a 4-D array of `dims`.
fn at(dims: [usize; 4], [a, b, c, d]: [usize; 4]) -> usize {
    ((a * dims[1] + b) * dims[2] + c) * dims[3] + d
}

/// The input coordinate a tap reads, if it lies inside `0..size`.
fn tap(
    position: usize,
    stride: usize,
    k: usize,
    dilation: usize,
    padding: usize,
    size: usize,
) -> Option<usize> {
    (position * stride + k * dilation)
        .checked_sub(padding)
        .filter(|&i| i < size)
}

fn out_size(size: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> usize {
    (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1
}

/// out[n, o, y, x] = Σ_{c, i, j} input[n, c, y·s + i·d - p, x·s + j·d - p] · weight[o, c, i, j].
fn direct_conv2d(
    input: &[f64],
    x: [usize; 4],
    weight: &[f64],
    w: [usize; 4],
    o: Conv2dOptions,
) -> (Vec<f64>, [usize; 4]) {
    let (oh, ow) = (
        out_size(x[2], w[2], o.stride[0], o.padding[0], o.dilation[0]),
        out_size(x[3], w[3], o.stride[1], o.padding[1], o.dilation[1]),
    );
    let dims = [x[0], w[0], oh, ow];
    let mut out = vec![0.0; dims.iter().product()];
    for n in 0..x[0] {
        for oc in 0..w[0] {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut sum = 0.0;
                    for c in 0..x[1] {
                        for i in 0..w[2] {
                            for j in 0..w[3] {
                                let (Some(iy), Some(ix)) = (
                                    tap(y, o.stride[0], i, o.dilation[0], o.padding[0], x[2]),
                                    tap(xx, o.stride[1], j, o.dilation[1], o.padding[1], x[3]),
                                ) else {
                                    continue;
                                };
                                sum += input[at(x, [n, c, iy, ix])] * weight[at(w, [oc, c, i, j])];
                            }
                        }
                    }
                    out[at(dims, [n, oc, y, xx])] = sum;
                }
            }
        }
    }
    (out, dims)
}

/// Each input pixel scatters input[n, c, y, x] · weight[c, o, i, j] to
/// out[n, o, y·s + i·d - p, x·s + j·d - p], over an output of
/// (H - 1)·s - 2p + d·(k - 1) + output_padding + 1 rows (likewise columns).
fn direct_conv_transpose2d(
    input: &[f64],
    x: [usize; 4],
    weight: &[f64],
    w: [usize; 4],
    o: ConvTranspose2dOptions,
) -> (Vec<f64>, [usize; 4]) {
    let size = |axis: usize| {
        (x[2 + axis] - 1) * o.stride[axis]
            + o.dilation[axis] * (w[2 + axis] - 1)
            + o.output_padding[axis]
            + 1
            - 2 * o.padding[axis]
    };
    let dims = [x[0], w[1], size(0), size(1)];
    let mut out = vec![0.0; dims.iter().product()];
    for n in 0..x[0] {
        for c in 0..x[1] {
            for y in 0..x[2] {
                for xx in 0..x[3] {
                    for oc in 0..w[1] {
                        for i in 0..w[2] {
                            for j in 0..w[3] {
                                let (Some(oy), Some(ox)) = (
                                    tap(y, o.stride[0], i, o.dilation[0], o.padding[0], dims[2]),
                                    tap(xx, o.stride[1], j, o.dilation[1], o.padding[1], dims[3]),
                                ) else {
                                    continue;
                                };
                                out[at(dims, [n, oc, oy, ox])] +=
                                    input[at(x, [n, c, y, xx])] * weight[at(w, [c, oc, i, j])];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, dims)
}

/// Max and mean (padding counted as zeros in the divisor) of each window.
fn direct_pool(input: &[f64], x: [usize; 4], o: Pool2dOptions, max: bool) -> Vec<f64> {
    let (oh, ow) = (
        out_size(x[2], o.kernel[0], o.stride[0], o.padding[0], 1),
        out_size(x[3], o.kernel[1], o.stride[1], o.padding[1], 1),
    );
    let mut out = Vec::new();
    for n in 0..x[0] {
        for c in 0..x[1] {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut values = Vec::new();
                    for i in 0..o.kernel[0] {
                        for j in 0..o.kernel[1] {
                            if let (Some(iy), Some(ix)) = (
                                tap(y, o.stride[0], i, 1, o.padding[0], x[2]),
                                tap(xx, o.stride[1], j, 1, o.padding[1], x[3]),
                            ) {
                                values.push(input[at(x, [n, c, iy, ix])]);
                            }
                        }
                    }
                    out.push(if max {
                        values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        values.iter().sum::<f64>() / (o.kernel[0] * o.kernel[1]) as f64
                    });
                }
            }
        }
    }
    out
}

fn tensor(values: &[f64], dims: [usize; 4]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims, Device::Cpu).unwrap()
}

fn assert_close(
    actual: &Tensor,
    expected: &[f64],
    tolerance: f64,
) -> std::result::Result<(), TestCaseError> {
    let actual = actual
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    prop_assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        prop_assert!(
            (a - e).abs() <= tolerance * (1.0 + e.abs()),
            "element {}: {} vs {}",
            i,
            a,
            e
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Case {
    input: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    out_channels: usize,
    values: Vec<f64>,
    weights: Vec<f64>,
}

fn pair(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = [usize; 2]> {
    (range.clone(), range).prop_map(|(a, b)| [a, b])
}

/// Cases of 1 to 4 channels on each side: the GEMM-based kernels (im2col, col2im).
fn case() -> impl Strategy<Value = Case> {
    case_with(1..=3, 1..=4, 1..=4)
}

/// Cases of 16 to 40 channels on each side: f32 takes the direct kernels' register tiles
/// (cpu/conv_direct.rs), their padding-skipping groups and an input gradient's phases
/// included.
fn wide_case() -> impl Strategy<Value = Case> {
    case_with(1..=2, 16..=40, 16..=40)
}

fn case_with(
    batch: std::ops::RangeInclusive<usize>,
    channels: std::ops::RangeInclusive<usize>,
    out_channels: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Case> {
    let most_values = batch.end() * channels.end() * 81;
    let most_weights = out_channels.end().max(channels.end()) * channels.end() * 16;
    (
        (batch, channels, pair(1..=9)),
        (
            pair(1..=4),
            pair(1..=3),
            pair(0..=2),
            pair(1..=3),
            out_channels,
        ),
        vec(-1.0..1.0f64, most_values),
        vec(-1.0..1.0f64, most_weights),
    )
        .prop_map(
            |(
                (n, c, [h, w]),
                (kernel, stride, padding, dilation, out_channels),
                values,
                weights,
            )| Case {
                input: [n, c, h, w],
                kernel,
                stride,
                padding,
                dilation,
                out_channels,
                values,
                weights,
            },
        )
        .prop_filter("the window must fit", |c| {
            (0..2).all(|a| c.input[2 + a] + 2 * c.padding[a] > c.dilation[a] * (c.kernel[a] - 1))
        })
}

impl Case {
    fn input(&self) -> Vec<f64> {
        self.values[..self.input.iter().product::<usize>()].to_vec()
    }

    fn weight(&self, dims: [usize; 4]) -> Vec<f64> {
        self.weights[..dims.iter().product::<usize>()].to_vec()
    }

    fn conv2d_options(&self) -> Conv2dOptions {
        Conv2dOptions {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    /// The transposed convolution's options with `extra` output padding (cut below the
    /// stride or dilation), or `None` where its output would have no pixels.
    fn transpose_options(&self, extra: [usize; 2]) -> Option<ConvTranspose2dOptions> {
        let output_padding = [0, 1].map(|a| extra[a] % self.stride[a].max(self.dilation[a]));
        let full = |a: usize| {
            (self.input[2 + a] - 1) * self.stride[a]
                + self.dilation[a] * (self.kernel[a] - 1)
                + output_padding[a]
                + 1
        };
        (full(0) > 2 * self.padding[0] && full(1) > 2 * self.padding[1]).then_some(
            ConvTranspose2dOptions {
                stride: self.stride,
                padding: self.padding,
                output_padding,
                dilation: self.dilation,
            },
        )
    }
}

/// `c`'s conv2d in f32 and its conv_transpose2d (the direct kernels' input gradient) in f32,
/// against the definitions in f64.
fn check_in_f32(c: &Case, extra: [usize; 2]) -> std::result::Result<(), TestCaseError> {
    let f32_tensor = |values: &[f64], dims| tensor(values, dims).to_dtype(DType::F32).unwrap();
    let w = [c.out_channels, c.input[1], c.kernel[0], c.kernel[1]];
    let options = c.conv2d_options();
    let (expected, _) = direct_conv2d(&c.input(), c.input, &c.weight(w), w, options);
    let out = f32_tensor(&c.input(), c.input)
        .conv2d(&f32_tensor(&c.weight(w), w), options)
        .unwrap();
    // Sums of up to 640 products of values below 1.
    assert_close(&out, &expected, 1e-4)?;
    let w = [c.input[1], c.out_channels, c.kernel[0], c.kernel[1]];
    if let Some(options) = c.transpose_options(extra) {
        let (expected, _) = direct_conv_transpose2d(&c.input(), c.input, &c.weight(w), w, options);
        let out = f32_tensor(&c.input(), c.input)
            .conv_transpose2d(&f32_tensor(&c.weight(w), w), options)
            .unwrap();
        assert_close(&out, &expected, 1e-4)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn wide_convolutions_in_f32_match_the_definitions(c in wide_case(), extra in pair(0..=2)) {
        check_in_f32(&c, extra)?;
    }
}

/// A 1x1 transposed convolution between 16 channels, stride 1, with output padding (which a
/// dilation of 2 allows): its output is a column wider than its input, so the direct kernels'
/// pointwise products, which take the two planes to be one, must not run it (they once read
/// past the gradient). Forward and both gradients in f32 (the direct kernels) against f64
/// (the GEMM path).
#[test]
fn a_pointwise_transposed_convolution_with_output_padding_matches_f64() -> Result<()> {
    let (x_dims, w_dims) = ([2, 16, 3, 2], [16, 16, 1, 1]);
    let values = |len: usize, seed: usize| -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 23) as f64 / 11.0 - 1.0)
            .collect()
    };
    let x = values(x_dims.iter().product(), 1);
    let w = values(w_dims.iter().product(), 2);
    let options = ConvTranspose2dOptions {
        stride: [1, 1],
        padding: [0, 0],
        output_padding: [1, 1],
        dilation: [2, 2],
    };
    let expected = direct_conv_transpose2d(&x, x_dims, &w, w_dims, options).0;
    let run = |dtype: DType| -> Result<Vec<Vec<f64>>> {
        let x = tensor(&x, x_dims).to_dtype(dtype)?.track()?;
        let w = tensor(&w, w_dims).to_dtype(dtype)?.track()?;
        let out = x.conv_transpose2d(&w, options)?;
        assert_eq!(out.dims(), &[2, 16, 4, 3]);
        let r = Tensor::from_vec(values(out.elem_count(), 3), out.dims(), Device::Cpu)?
            .to_dtype(dtype)?;
        let grads = out.mul(&r)?.sum_all()?.backward()?;
        [&out, grads.get(&x).unwrap(), grads.get(&w).unwrap()]
            .map(|t| t.to_dtype(DType::F64)?.to_vec::<f64>())
            .into_iter()
            .collect()
    };
    let (f32s, f64s) = (run(DType::F32)?, run(DType::F64)?);
    assert_close(&tensor(&f32s[0], [2, 16, 4, 3]), &expected, 1e-5).unwrap();
    for (a, e) in f32s.iter().zip(&f64s) {
        assert_eq!(a.len(), e.len());
        for (a, e) in a.iter().zip(e) {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{a} vs {e}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conv2d_matches_the_definition(c in case()) {
        let w = [c.out_channels, c.input[1], c.kernel[0], c.kernel[1]];
        let options = c.conv2d_options();
        let (expected, dims) = direct_conv2d(&c.input(), c.input, &c.weight(w), w, options);
        let out = tensor(&c.input(), c.input).conv2d(&tensor(&c.weight(w), w), options).unwrap();
        prop_assert_eq!(out.dims(), &dims[..]);
        assert_close(&out, &expected, 1e-12)?;
        // f32 goes through the SIMD GEMM.
        let out = tensor(&c.input(), c.input).to_dtype(DType::F32).unwrap()
            .conv2d(&tensor(&c.weight(w), w).to_dtype(DType::F32).unwrap(), options).unwrap();
        assert_close(&out, &expected, 1e-5)?;
    }

    #[test]
    fn conv_transpose2d_matches_the_definition(c in case(), extra in pair(0..=2)) {
        let w = [c.input[1], c.out_channels, c.kernel[0], c.kernel[1]];
        let options = c.transpose_options(extra);
        prop_assume!(options.is_some());
        let options = options.unwrap();
        let (expected, dims) = direct_conv_transpose2d(&c.input(), c.input, &c.weight(w), w, options);
        let out = tensor(&c.input(), c.input).conv_transpose2d(&tensor(&c.weight(w), w), options).unwrap();
        prop_assert_eq!(out.dims(), &dims[..]);
        assert_close(&out, &expected, 1e-12)?;
    }

    #[test]
    fn pooling_matches_the_definition(c in case()) {
        let padding = [c.padding[0].min(c.kernel[0] / 2), c.padding[1].min(c.kernel[1] / 2)];
        prop_assume!((0..2).all(|a| c.input[2 + a] + 2 * padding[a] >= c.kernel[a]));
        let options = Pool2dOptions { kernel: c.kernel, stride: c.stride, padding };
        let x = tensor(&c.input(), c.input);
        assert_close(&x.max_pool2d(options).unwrap(), &direct_pool(&c.input(), c.input, options, true), 0.0)?;
        assert_close(&x.avg_pool2d(options).unwrap(), &direct_pool(&c.input(), c.input, options, false), 1e-12)?;
    }

    #[test]
    fn upsample_nearest2d_matches_the_definition(c in case(), out in pair(1..=20)) {
        let x = tensor(&c.input(), c.input);
        let [n, ch, h, w] = c.input;
        let mut expected = Vec::new();
        for plane in 0..n * ch {
            for i in 0..out[0] {
                for j in 0..out[1] {
                    // PyTorch: src = min(floor(dst * (in / out)), in - 1), in f32.
                    let si = ((i as f32 * (h as f32 / out[0] as f32)).floor() as usize).min(h - 1);
                    let sj = ((j as f32 * (w as f32 / out[1] as f32)).floor() as usize).min(w - 1);
                    expected.push(c.values[plane * h * w + si * w + sj]);
                }
            }
        }
        assert_close(&x.upsample_nearest2d(out[0], out[1]).unwrap(), &expected, 0.0)?;
    }
}

#[test]
fn max_pool2d_indices_name_the_maxima() -> Result<()> {
    // A 4x4 plane with values 0..16: each 2x2 window's maximum is its bottom-right pixel.
    let x = Tensor::arange(16, DType::F32, Device::Cpu)?.reshape([1, 1, 4, 4])?;
    let (values, indices) = x.max_pool2d_with_indices(Pool2dOptions::new([2, 2]))?;
    assert_eq!(values.to_vec::<f32>()?, vec![5.0, 7.0, 13.0, 15.0]);
    assert_eq!(indices.to_vec::<u32>()?, vec![5, 7, 13, 15]);
    assert_eq!(indices.dims(), &[1, 1, 2, 2]);
    Ok(())
}

#[test]
fn max_pool2d_propagates_nan() -> Result<()> {
    let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 3.0, 2.0], [1, 1, 2, 2], Device::Cpu)?;
    assert!(x.max_pool2d(Pool2dOptions::new([2, 2]))?.to_vec::<f32>()?[0].is_nan());
    Ok(())
}

#[test]
fn shapes_that_do_not_fit_are_errors_naming_them() {
    let x = Tensor::zeros([2, 3, 5, 5], DType::F32, Device::Cpu).unwrap();
    let message = |r: Result<Tensor>| r.unwrap_err().to_string();
    let wrong_channels = Tensor::zeros([4, 2, 3, 3], DType::F32, Device::Cpu).unwrap();
    let m = message(x.conv2d(&wrong_channels, Conv2dOptions::default()));
    assert!(
        m.contains("[2, 3, 5, 5]") && m.contains("[4, 2, 3, 3]"),
        "{m}"
    );
    let too_big = Tensor::zeros([4, 3, 7, 7], DType::F32, Device::Cpu).unwrap();
    let m = message(x.conv2d(&too_big, Conv2dOptions::default()));
    assert!(m.contains("does not fit"), "{m}");
    let flat = Tensor::zeros([2, 75], DType::F32, Device::Cpu).unwrap();
    let m = message(flat.conv2d(&too_big, Conv2dOptions::default()));
    assert!(m.contains("rank 4") && m.contains("[2, 75]"), "{m}");
    let zero_stride = Conv2dOptions {
        stride: [0, 1],
        ..Conv2dOptions::default()
    };
    assert!(message(x.conv2d(&wrong_channels, zero_stride)).contains("positive"));
    let weight = Tensor::zeros([3, 4, 4, 4], DType::F32, Device::Cpu).unwrap();
    let bad_output_padding = ConvTranspose2dOptions {
        stride: [2, 2],
        output_padding: [2, 0],
        ..Default::default()
    };
    let m = message(x.conv_transpose2d(&weight, bad_output_padding));
    assert!(m.contains("output padding"), "{m}");
    let m = message(x.max_pool2d(Pool2dOptions {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [2, 0],
    }));
    assert!(m.contains("half the kernel"), "{m}");
    let m = message(x.upsample_nearest2d(0, 4));
    assert!(m.contains("positive"), "{m}");
    let ints = Tensor::zeros([2, 3, 5, 5], DType::U8, Device::Cpu).unwrap();
    assert!(ints.max_pool2d(Pool2dOptions::new([2, 2])).is_err());
}

#[test]
fn dcgan_shapes() -> Result<()> {
    // DCGAN's generator doubles 7x7 to 14x14 to 28x28 with ConvT(4, 2, 1); its discriminator
    // halves back with Conv(4, 2, 1).
    let z = Tensor::zeros([2, 128, 7, 7], DType::F32, Device::Cpu)?;
    let up = ConvTranspose2dOptions {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let x = z.conv_transpose2d(
        &Tensor::zeros([128, 64, 4, 4], DType::F32, Device::Cpu)?,
        up,
    )?;
    assert_eq!(x.dims(), &[2, 64, 14, 14]);
    let down = Conv2dOptions {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let y = x.conv2d(
        &Tensor::zeros([32, 64, 4, 4], DType::F32, Device::Cpu)?,
        down,
    )?;
    assert_eq!(y.dims(), &[2, 32, 7, 7]);
    Ok(())
}
