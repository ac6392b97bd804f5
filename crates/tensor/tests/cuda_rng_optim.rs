//! CUDA parity of the Philox draws (kernels/rng.cu, `Tensor::rand`/`randn` on a CUDA device)
//! and the fused Adam step (kernels/optim.cu). Expected values come from the CPU: src/rng.rs's
//! fills and src/cpu/optim.rs, the references the kernels name. Skips without a GPU (see
//! cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::{AdamStep, DType, Device, Generator, Result, Tensor};

/// Offsets that start mid-block, at a block start, and 7 words before the 2^64 wrap (so a
/// draw crosses it).
const OFFSETS: [u64; 5] = [0, 1, 3, 4001, u64::MAX - 6];
/// Odd and even lengths.
const LENGTHS: [usize; 6] = [1, 2, 7, 33, 101, 1000];
/// Past one pass of the grid: `launch_config_for` caps it at 8 blocks of 256 threads per SM,
/// which on a 132-SM GPU at 4 draws a thread is about 1.1M 32-bit draws.
const LONG: usize = (1 << 22) + 3;

/// A tensor's elements as f64 on the host (exact for every float dtype).
fn host_f64(t: &Tensor) -> Vec<f64> {
    t.to_device(Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec::<f64>())
        .expect("readback")
}

/// The bits of each element (of its dtype, widened exactly to f64 and read back as bits, so
/// two equal bit vectors mean equal elements of the original dtype).
fn bits(t: &Tensor) -> Vec<u64> {
    host_f64(t).into_iter().map(f64::to_bits).collect()
}

/// How many representable f64s lie between `a` and `b` (same-signed, finite).
fn ulps(a: f64, b: f64) -> u64 {
    let key = |x: f64| {
        let bits = x.to_bits() as i64;
        if bits < 0 {
            i64::MIN - bits
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

/// Whether `a` and `b` are equal or adjacent values of a binary format with `precision`
/// significand bits (normal numbers).
fn neighbours(a: f64, b: f64, precision: i32) -> bool {
    let larger = a.abs().max(b.abs());
    a == b || (a - b).abs() <= 2f64.powi(larger.log2().floor() as i32 - (precision - 1))
}

/// One draw on the CPU and on CUDA from generators at `offset`: both results, after checking
/// that the two generators moved to the same offset.
fn draw_both(
    gpu: Device,
    offset: u64,
    draw: impl Fn(Device, &mut Generator) -> Result<Tensor>,
) -> (Tensor, Tensor) {
    let mut cpu_generator = Generator::new(0x5eed_0123_4567_89ab);
    cpu_generator.set_offset(offset);
    let mut gpu_generator = cpu_generator.clone();
    let cpu = draw(Device::Cpu, &mut cpu_generator).expect("cpu draw");
    let cuda = draw(gpu, &mut gpu_generator).expect("cuda draw");
    assert_eq!(cuda.device(), gpu);
    assert_eq!(
        gpu_generator.offset(),
        cpu_generator.offset(),
        "generator offset after the draw (from {offset})"
    );
    assert_eq!(cuda.shape(), cpu.shape());
    assert_eq!(cuda.dtype(), cpu.dtype());
    (cpu, cuda)
}

/// Every offset with every short length, and `LONG` draws from `long_offsets`.
fn cases(long_offsets: &[u64]) -> Vec<(u64, usize)> {
    let mut cases: Vec<(u64, usize)> = OFFSETS
        .iter()
        .flat_map(|&offset| LENGTHS.iter().map(move |&len| (offset, len)))
        .collect();
    cases.extend(long_offsets.iter().map(|&offset| (offset, LONG)));
    cases
}

#[test]
fn rand_equals_the_cpu_bit_for_bit() {
    let Some(gpu) = cuda("rand parity") else {
        return;
    };
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (offset, len) in cases(&[0, 3, u64::MAX - 6]) {
            let (cpu, cuda) = draw_both(gpu, offset, |device, generator| {
                Tensor::rand([len], dtype, device, generator)
            });
            assert!(
                bits(&cpu) == bits(&cuda),
                "rand {dtype}, offset {offset}, length {len}: first difference at element {:?}",
                bits(&cpu)
                    .iter()
                    .zip(bits(&cuda))
                    .position(|(a, b)| *a != b)
            );
        }
    }
}

#[test]
fn randn_equals_the_cpu_in_f32_and_the_halves_but_for_rare_neighbours() {
    // The f32 draw is Box-Muller in double rounded to f32 once, so CUDA's and the host libm's
    // double log/sin/cos (CUDA's within 1 and 2 ulps, the host's within about 1) give the same
    // f32 except when a value lies within a few double ulps of an f32 rounding boundary:
    // about one draw in 2^27, so a 4M draw meets one now and then (the H200's first run did,
    // at offset 2^64 - 7). Such a value then differs by one ulp of its dtype, and differences
    // must stay that rare: at most one per 2^20 draws, each a neighbour. The halves are those
    // f32 draws rounded.
    let Some(gpu) = cuda("randn parity") else {
        return;
    };
    for (dtype, precision) in [(DType::F32, 24), (DType::F16, 11), (DType::BF16, 8)] {
        for (offset, len) in cases(&[u64::MAX - 6]) {
            let (cpu, cuda) = draw_both(gpu, offset, |device, generator| {
                Tensor::randn([len], 0.5, 2.0, dtype, device, generator)
            });
            let (cpu, cuda) = (host_f64(&cpu), host_f64(&cuda));
            let differing: Vec<usize> = (0..len).filter(|&i| cpu[i] != cuda[i]).collect();
            for &i in &differing {
                assert!(
                    neighbours(cpu[i], cuda[i], precision),
                    "randn {dtype}, offset {offset}, length {len}: element {i} is {} on the cpu and {} on cuda",
                    cpu[i],
                    cuda[i]
                );
            }
            assert!(
                differing.len() <= len >> 20,
                "randn {dtype}, offset {offset}, length {len}: {} elements differ by an ulp (at {:?})",
                differing.len(),
                &differing[..differing.len().min(8)]
            );
        }
    }
    // A mean and std that f32 cannot hold exactly: both sides round them to f32 first.
    let (cpu, cuda) = draw_both(gpu, 5, |device, generator| {
        Tensor::randn([999], 0.1, 0.3, DType::F32, device, generator)
    });
    assert_eq!(bits(&cpu), bits(&cuda), "randn f32 with mean 0.1, std 0.3");
}

#[test]
fn randn_f64_is_within_four_ulps_of_the_cpu() {
    // Double-precision log/sin/cos round differently on the device and in the host libm.
    let Some(gpu) = cuda("randn f64 parity") else {
        return;
    };
    for (offset, len) in cases(&[3]) {
        let (cpu, cuda) = draw_both(gpu, offset, |device, generator| {
            Tensor::randn([len], 0.5, 2.0, DType::F64, device, generator)
        });
        for (i, (a, b)) in host_f64(&cpu).into_iter().zip(host_f64(&cuda)).enumerate() {
            // Near zero (z·std ≈ -mean) the sum's cancellation magnifies the relative error,
            // so 4 ulps of the term z·std also pass: |z| < 8.6 and std = 2 keep it below 32,
            // where an ulp is 16·EPSILON.
            let close = ulps(a, b) <= 4 || (a - b).abs() <= 4.0 * 16.0 * f64::EPSILON;
            assert!(
                close,
                "randn f64, offset {offset}, length {len}, element {i}: cpu {a:e} vs cuda {b:e}"
            );
        }
    }
}

#[test]
fn draws_continue_the_stream_across_calls() {
    let Some(gpu) = cuda("rand stream continuation") else {
        return;
    };
    // Three CUDA draws from one generator equal one CPU draw of all their elements, and leave
    // the generator where the CPU's is.
    let mut cuda_generator = Generator::new(77);
    let parts = [5usize, 8, 1001]
        .map(|len| Tensor::rand([len], DType::F32, gpu, &mut cuda_generator).expect("draw"));
    let mut cpu_generator = Generator::new(77);
    let whole = Tensor::rand([1014], DType::F32, Device::Cpu, &mut cpu_generator).unwrap();
    let joined: Vec<u64> = parts.iter().flat_map(bits).collect();
    assert_eq!(joined, bits(&whole));
    assert_eq!(cuda_generator.offset(), cpu_generator.offset());
    // Integer dtypes are refused on CUDA as on the CPU.
    assert!(Tensor::rand([3], DType::U8, gpu, &mut cuda_generator).is_err());
    assert!(Tensor::randn([3], 0.0, 1.0, DType::U32, gpu, &mut cuda_generator).is_err());
}

/// The Adam settings checked: Adam and AdamW, with and without weight decay, both lerp
/// branches (β1 = 0.9 lerps from the start, β1 = 0.3 from the end), first and later steps.
fn adam_steps() -> Vec<AdamStep> {
    let base = AdamStep {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        step: 1.0,
    };
    vec![
        base,
        AdamStep { step: 10.0, ..base },
        AdamStep {
            weight_decay: 0.01,
            ..base
        },
        AdamStep {
            weight_decay: 0.01,
            decoupled: true,
            step: 3.0,
            ..base
        },
        AdamStep {
            lr: 2e-4,
            betas: (0.3, 0.99),
            eps: 1e-6,
            weight_decay: 0.1,
            decoupled: true,
            step: 1000.0,
        },
        AdamStep {
            betas: (0.3, 0.9),
            weight_decay: 0.05,
            step: 7.0,
            ..base
        },
    ]
}

/// The four inputs of a step with `shape` on `device`: parameter, gradient, exp_avg and a
/// nonnegative exp_avg_sq; contiguous, or (for a 2-d `shape`, when `strided`) four
/// different views.
fn adam_inputs(
    shape: &[usize],
    dtype: DType,
    device: Device,
    strided: bool,
) -> Result<[Tensor; 4]> {
    let p = random(shape, dtype, device, 1, 1.0);
    let g = random(shape, dtype, device, 2, 0.1);
    let m = random(shape, dtype, device, 3, 0.01);
    let v = random(shape, dtype, device, 4, 1e-3).abs()?;
    if !strided || shape.len() != 2 {
        return Ok([p, g, m, v]);
    }
    // A transposed parameter, a narrowed gradient, a broadcast exp_avg (one row repeated), a
    // permuted exp_avg_sq: four different layouts of one [rows, cols] shape.
    let (rows, cols) = (shape[0], shape[1]);
    let p = random(&[cols, rows], dtype, device, 5, 1.0).t()?;
    let g = random(&[rows + 2, cols + 1], dtype, device, 6, 0.1)
        .narrow(0, 2, rows)?
        .narrow(1, 1, cols)?;
    let m = random(&[1, cols], dtype, device, 7, 0.01).broadcast_as([rows, cols])?;
    let v = random(&[cols, rows], dtype, device, 8, 1e-3)
        .abs()?
        .permute(&[1, 0])?;
    Ok([p, g, m, v])
}

#[test]
fn adam_step_equals_the_cpu_bit_for_bit_in_f32_and_f64() {
    let Some(gpu) = cuda("adam_step parity") else {
        return;
    };
    let shapes: [(&[usize], bool); 5] = [
        (&[1], false),
        (&[7], false),
        (&[33, 65], false),
        (&[33, 65], true),
        (&[(1 << 20) + 3], false),
    ];
    for dtype in [DType::F32, DType::F64] {
        for step in adam_steps() {
            for (shape, strided) in shapes {
                let run = |device: Device| -> Result<Vec<Tensor>> {
                    let [p, g, m, v] = adam_inputs(shape, dtype, device, strided)?;
                    let (p, m, v) = p.adam_step(&g, &m, &v, &step)?;
                    Ok(vec![p, m, v])
                };
                let cpu = run(Device::Cpu).expect("cpu");
                let cuda_out = run(gpu).expect("cuda");
                for (k, (a, b)) in cpu.iter().zip(&cuda_out).enumerate() {
                    assert_eq!(b.device(), gpu);
                    assert_eq!(a.shape(), b.shape());
                    assert!(
                        bits(a) == bits(b),
                        "adam_step {dtype} {shape:?} strided {strided} {step:?}: output {k} \
                         first differs at {:?}",
                        bits(a).iter().zip(bits(b)).position(|(x, y)| *x != y)
                    );
                }
            }
        }
    }
}

#[test]
fn adam_step_matches_the_cpu_in_the_half_types() {
    // The same operations in f32 with the same roundings to the half type: expected equal,
    // checked within one rounding of the type.
    let Some(gpu) = cuda("adam_step half parity") else {
        return;
    };
    for (dtype, tolerance) in FLOAT_DTYPES {
        if !matches!(dtype, DType::F16 | DType::BF16) {
            continue;
        }
        for step in adam_steps() {
            for (shape, strided) in [(&[101usize][..], false), (&[33, 65][..], true)] {
                parity(
                    &format!("adam_step {dtype} {step:?}"),
                    gpu,
                    tolerance,
                    tolerance,
                    |device| {
                        let [p, g, m, v] = adam_inputs(shape, dtype, device, strided)?;
                        let (p, m, v) = p.adam_step(&g, &m, &v, &step)?;
                        Ok(vec![p, m, v])
                    },
                );
            }
        }
    }
}

#[test]
fn adam_step_from_zero_moments_and_zero_gradients() {
    // The first step of a fresh optimizer (m = v = 0) and a parameter with no gradient.
    let Some(gpu) = cuda("adam_step zeros") else {
        return;
    };
    for (dtype, _) in FLOAT_DTYPES {
        for step in adam_steps() {
            parity(
                &format!("adam_step zeros {dtype}"),
                gpu,
                0.0,
                0.0,
                |device| {
                    let p = random(&[257], dtype, device, 9, 1.0);
                    let zeros = Tensor::zeros([257], dtype, device)?;
                    let (p1, m1, v1) = p.adam_step(
                        &random(&[257], dtype, device, 10, 1.0),
                        &zeros,
                        &zeros,
                        &step,
                    )?;
                    let (p2, m2, v2) = p.adam_step(&zeros, &zeros, &zeros, &step)?;
                    Ok(vec![p1, m1, v1, p2, m2, v2])
                },
            );
        }
    }
}

#[test]
fn adam_step_many_updates_forty_parameters_as_the_cpu_does() {
    let Some(gpu) = cuda("adam_step_many parity") else {
        return;
    };
    // 40 parameters, so two tables of at most 32; sizes around the 4096-element chunk, an
    // empty one, and strided views (copied before the launch).
    let shapes: Vec<(Vec<usize>, bool)> = (0..40)
        .map(|i| match i % 8 {
            0 => (vec![1], false),
            1 => (vec![4095], false),
            2 => (vec![4096], false),
            3 => (vec![64, 65], false),
            4 => (vec![33, 65], true),
            5 => (vec![0], false),
            6 => (vec![(1 << 16) + 1], false),
            _ => (vec![7, 3], true),
        })
        .collect();
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        for step in adam_steps() {
            let run = |device: Device| -> Result<Vec<Tensor>> {
                let inputs = shapes
                    .iter()
                    .map(|(shape, strided)| adam_inputs(shape, dtype, device, *strided))
                    .collect::<Result<Vec<_>>>()?;
                let entries: Vec<[&Tensor; 4]> =
                    inputs.iter().map(|[p, g, m, v]| [p, g, m, v]).collect();
                Ok(Tensor::adam_step_many(&entries, &step)?
                    .into_iter()
                    .flat_map(|(p, m, v)| [p, m, v])
                    .collect())
            };
            let cpu = run(Device::Cpu).expect("cpu");
            let cuda_out = run(gpu).expect("cuda");
            for (k, (a, b)) in cpu.iter().zip(&cuda_out).enumerate() {
                assert_eq!(a.shape(), b.shape());
                assert!(
                    bits(a) == bits(b),
                    "adam_step_many {dtype} {step:?}: parameter {} output {} differs",
                    k / 3,
                    k % 3
                );
            }
        }
    }
}

#[test]
fn sums_of_squares_match_the_cpu() {
    let Some(gpu) = cuda("sum_of_squares_many parity") else {
        return;
    };
    // 35 tensors (two tables), sizes around the 4096-element chunk, an empty one, a scalar,
    // a strided view, and one past a grid wave.
    let shapes: Vec<Vec<usize>> = (0..35)
        .map(|i| match i % 7 {
            0 => vec![1],
            1 => vec![4096],
            2 => vec![4097],
            3 => vec![0],
            4 => vec![],
            5 => vec![33, 65],
            _ => vec![OVER_A_WAVE],
        })
        .collect();
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let run = |device: Device| -> Result<Vec<f64>> {
            let tensors: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, shape)| {
                    let t = random(shape, dtype, device, 100 + i as u64, 1.0);
                    if shape.len() == 2 {
                        t.t()?.contiguous()?.t() // a transposed view
                    } else {
                        Ok(t)
                    }
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let sums = Tensor::sum_of_squares_many(&refs)?;
            assert_eq!(sums.dims(), [shapes.len()]);
            assert_eq!(
                sums.dtype(),
                if dtype == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                }
            );
            Ok(host_f64(&sums))
        };
        let (cpu, cuda_sums) = (run(Device::Cpu).expect("cpu"), run(gpu).expect("cuda"));
        // The CPU sums blocks of 1024 in the math type, CUDA everything in f64: they differ
        // by the CPU's rounding, a few ulps of f32 (of f64) times log2 of the length.
        let tolerance = if dtype == DType::F64 { 1e-13 } else { 1e-5 };
        for (i, (a, b)) in cpu.iter().zip(&cuda_sums).enumerate() {
            assert!(
                (a - b).abs() <= tolerance * a.abs().max(1.0),
                "{dtype} tensor {i} {:?}: CPU {a}, CUDA {b}",
                shapes[i]
            );
        }
    }
}
