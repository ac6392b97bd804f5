//! CUDA elementwise kernels (kernels/elementwise.cu) against the CPU backend, their reference:
//! fill, copy, every dtype conversion, every unary op, binary arithmetic, comparisons and
//! where_cond, on every dtype each takes, through contiguous, permuted, narrowed and broadcast
//! views, at sizes of one element, under a block, over a block and over a full wave of blocks.
//! Expected values are the CPU backend's on the same input bits. Ops whose CPU result is IEEE
//! arithmetic or a bit copy must match bit for bit (`assert_same_bits`); the transcendental
//! ones (CUDA's math library against glibc's) within a few ulp (`FLOAT_DTYPES` tolerances).
//! Skips without a GPU (see cuda_common); `KILN_REQUIRE_CUDA=1` makes that a failure.

mod cuda_common;
use cuda_common::*;

use half::{bf16, f16};
use kiln_tensor::cpu::CpuStorage;
use kiln_tensor::cuda::CudaStorage;
use kiln_tensor::{
    BackendStorage, CmpOp, DType, Device, Error, Layout, Operand, Result, Tensor, UnaryOp,
    WithDType,
};

/// Values where the ops' semantics differ from the obvious: signed zeros, NaN, infinities,
/// rounding ties and near-ties of the conversions, saturation bounds of u8/u32, f16 range ends.
fn edge_values() -> Vec<f64> {
    let two = |e: i32| 2f64.powi(e);
    vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.5,
        -2.5,
        3.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-30,
        -1e-30,
        20.0,
        -20.0,
        100.0,
        -100.0,
        1e-3,
        255.0,
        255.5,
        256.0,
        4294967295.0,
        4294967295.5,
        4294967296.0,
        1e20,
        -1e20,
        65504.0,
        65519.99,
        65520.0,
        3.4e38,
        1e39,
        // f64 -> f16: a tie at f32 precision broken only below it. Both sides round through
        // f32 (src/dtype.rs), which gives 1.0; rounding once would give 1 + 2^-10.
        1.0 + two(-11) + two(-40),
        // f64 -> bf16: the same near-tie for bf16.
        1.0 + two(-8) + two(-40),
        // f32 -> bf16 through f64 (what the CPU's to_dtype does): the tie-breaking bit is
        // among the 3 low f32 bits, which half's own f64_to_bf16 dropped (rounding to 1.0);
        // through f32 it rounds up, as from the f32 itself.
        1.0 + two(-8) + two(-23),
        // bf16 and f16 subnormals, and ties at their smallest.
        two(-130),
        1.5 * two(-133),
        -two(-134),
        5.960464477539063e-8,
        2.980232238769531e-8,
        1e-45,
        0.1,
        -0.3,
        7.0,
    ]
}

/// `len` values: the edge values first (as many as fit), then uniform in [-scale, scale).
fn data(len: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut values = random(&[len], DType::F64, Device::Cpu, seed, scale)
        .to_vec::<f64>()
        .expect("random data");
    for (slot, edge) in values.iter_mut().zip(edge_values()) {
        *slot = edge;
    }
    values
}

/// `data` as a contiguous `dtype` tensor of `shape` on `device`: converted on the CPU, then
/// copied, so both backends start from the same bits.
fn tensor(data: Vec<f64>, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
    Tensor::from_vec(data, shape.to_vec(), Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// The layouts every op is run through, each a view made on `device` (labels say which).
fn inputs(dtype: DType, device: Device, seed: u64, scale: f64) -> Result<Vec<(String, Tensor)>> {
    let make = |len: usize, shape: &[usize], salt: u64| {
        tensor(data(len, seed ^ salt, scale), shape, dtype, device)
    };
    let block = make(5 * 7 * 9, &[5, 7, 9], 1)?;
    let big = make(1031 * 1021, &[1031, 1021], 2)?;
    Ok(vec![
        ("one element [1]".into(), make(1, &[1], 3)?),
        ("contiguous [257]".into(), make(257, &[257], 4)?),
        (
            format!("contiguous [{OVER_A_WAVE}]"),
            make(OVER_A_WAVE, &[OVER_A_WAVE], 5)?,
        ),
        ("permuted [9, 5, 7]".into(), block.permute(&[2, 0, 1])?),
        (
            "narrowed [5, 7, 7] from offset 1".into(),
            block.narrow(2, 1, 7)?,
        ),
        (
            "broadcast row [13, 9]".into(),
            block
                .narrow(0, 0, 1)?
                .narrow(1, 0, 1)?
                .reshape([1, 9])?
                .broadcast_as([13, 9])?,
        ),
        ("transposed [1021, 1031]".into(), big.transpose(0, 1)?),
        ("empty [0]".into(), make(0, &[0], 6)?),
    ])
}

/// Each element's bits, NaN of any payload as one value (payloads are not part of the
/// contract), read back in the tensor's own dtype.
fn bits(t: &Tensor) -> Vec<u64> {
    fn float<T: WithDType>(t: &Tensor, to_bits: impl Fn(T) -> u64) -> Vec<u64> {
        let values = t.to_vec::<T>().expect("readback");
        values
            .into_iter()
            .map(|v| {
                if v.to_f64().is_nan() {
                    u64::MAX
                } else {
                    to_bits(v)
                }
            })
            .collect()
    }
    match t.dtype() {
        DType::U8 => float::<u8>(t, u64::from),
        DType::U32 => float::<u32>(t, u64::from),
        DType::F16 => float::<f16>(t, |v| u64::from(v.to_bits())),
        DType::BF16 => float::<bf16>(t, |v| u64::from(v.to_bits())),
        DType::F32 => float::<f32>(t, |v| u64::from(v.to_bits())),
        DType::F64 => float::<f64>(t, |v| v.to_bits()),
    }
}

/// Asserts the GPU tensor has the CPU tensor's shape, dtype, device kind and every element's
/// bits (so -0 and 0 differ, and any NaN matches any NaN).
fn assert_same_bits(what: &str, cpu: &Tensor, gpu: &Tensor) {
    assert_eq!(cpu.shape(), gpu.shape(), "{what}: shapes");
    assert_eq!(cpu.dtype(), gpu.dtype(), "{what}: dtypes");
    assert!(
        matches!(gpu.device(), Device::Cuda(_)),
        "{what}: on {}",
        gpu.device()
    );
    let (a, b) = (bits(cpu), bits(gpu));
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!(
            "{what}: element {i} of {}: cpu bits {:#x} ({}) vs cuda {:#x} ({})",
            a.len(),
            a[i],
            values(cpu)[i],
            b[i],
            values(gpu)[i]
        );
    }
}

/// The CPU's or the GPU's copy of some inputs, for the device a parity closure runs on.
fn on<'a, T>(device: Device, cpu: &'a T, gpu: &'a T) -> &'a T {
    if device == Device::Cpu {
        cpu
    } else {
        gpu
    }
}

/// Runs `f` on both devices and compares bit for bit.
fn exact(what: &str, gpu: Device, f: impl Fn(Device) -> Result<Tensor>) {
    let cpu_out = f(Device::Cpu).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    let gpu_out = f(gpu).unwrap_or_else(|e| panic!("{what} on {gpu}: {e}"));
    assert_same_bits(what, &cpu_out, &gpu_out);
}

#[test]
fn fill_rounds_as_the_cpu_for_every_dtype() {
    let Some(gpu) = cuda("fill_rounds_as_the_cpu_for_every_dtype") else {
        return;
    };
    for dtype in ALL_DTYPES {
        for value in edge_values() {
            for len in [0, 1, 257, OVER_A_WAVE] {
                exact(&format!("full({value}, [{len}], {dtype})"), gpu, |device| {
                    Tensor::full(value, [len], dtype, device)
                });
            }
        }
    }
}

#[test]
fn copy_makes_every_view_contiguous() {
    let Some(gpu) = cuda("copy_makes_every_view_contiguous") else {
        return;
    };
    for dtype in ALL_DTYPES {
        let cpu = inputs(dtype, Device::Cpu, 11, 300.0).unwrap();
        let cuda = inputs(dtype, gpu, 11, 300.0).unwrap();
        for (k, (label, _)) in cpu.iter().enumerate() {
            exact(&format!("copy of {label} {dtype}"), gpu, |device| {
                on(device, &cpu, &cuda)[k].1.copy()
            });
        }
    }
}

#[test]
fn to_dtype_matches_the_cpu_for_every_pair() {
    let Some(gpu) = cuda("to_dtype_matches_the_cpu_for_every_pair") else {
        return;
    };
    for from in ALL_DTYPES {
        // Wide enough to saturate u8 and overflow f16, with the edge values in front.
        let cpu = inputs(from, Device::Cpu, 12, 1e5).unwrap();
        let cuda = inputs(from, gpu, 12, 1e5).unwrap();
        for to in ALL_DTYPES {
            for (k, (label, _)) in cpu.iter().enumerate() {
                exact(&format!("{label} {from} -> {to}"), gpu, |device| {
                    on(device, &cpu, &cuda)[k].1.to_dtype(to)
                });
            }
        }
    }
}

/// Every unary op with the parameters it is tested at, and whether the CPU result is IEEE
/// arithmetic (so bit-exact) rather than a libm function.
fn unary_ops() -> Vec<(UnaryOp, bool)> {
    vec![
        (UnaryOp::Neg, true),
        (UnaryOp::Exp, false),
        (UnaryOp::Log, false),
        (UnaryOp::Sqrt, true),
        (UnaryOp::Abs, true),
        (UnaryOp::Sign, true),
        (UnaryOp::Relu, true),
        (UnaryOp::LeakyRelu(0.2), true),
        (UnaryOp::LeakyRelu(0.01), true),
        (UnaryOp::LeakyReluDerivative(0.2), true),
        (UnaryOp::LeakyReluDerivative(0.0), true),
        (UnaryOp::Sigmoid, false),
        (UnaryOp::Tanh, false),
        (UnaryOp::Softplus, false),
        (UnaryOp::Silu, false),
        (UnaryOp::SiluDerivative, false),
        (UnaryOp::Powf(2.0), false),
        (UnaryOp::Powf(0.5), false),
        (UnaryOp::Powf(-1.5), false),
        (UnaryOp::Powf(3.0), false),
        (UnaryOp::Clamp(-1.0, 2.0), true),
        (UnaryOp::Clamp(-0.3, 0.3), true),
        // Not exact in any float type, so a fused multiply-add would round differently.
        (UnaryOp::Affine(0.1, 0.2), true),
        (UnaryOp::Affine(1.7, -0.3), true),
    ]
}

/// A unary op through the tensor API (so NaN clamp bounds etc. are refused as on the CPU).
fn apply(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => x.sign(),
        UnaryOp::Relu => x.relu(),
        UnaryOp::LeakyRelu(slope) => x.leaky_relu(slope),
        UnaryOp::LeakyReluDerivative(slope) => x.leaky_relu_derivative(slope),
        UnaryOp::Sigmoid => x.sigmoid(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Softplus => x.softplus(),
        UnaryOp::Silu => x.silu(),
        UnaryOp::SiluDerivative => x.silu_derivative(),
        UnaryOp::Powf(exponent) => x.powf(exponent),
        UnaryOp::Clamp(min, max) => x.clamp(min, max),
        UnaryOp::Affine(mul, add) => x.affine(mul, add),
    }
}

#[test]
fn unary_ops_match_the_cpu_on_every_float_dtype() {
    let Some(gpu) = cuda("unary_ops_match_the_cpu_on_every_float_dtype") else {
        return;
    };
    for (dtype, tolerance) in FLOAT_DTYPES {
        let cpu = inputs(dtype, Device::Cpu, 13, 4.0).unwrap();
        let cuda = inputs(dtype, gpu, 13, 4.0).unwrap();
        for (op, bit_exact) in unary_ops() {
            for (k, (label, _)) in cpu.iter().enumerate() {
                let what = format!("{op:?} of {label} {dtype}");
                let run = |device| apply(&on(device, &cpu, &cuda)[k].1, op);
                if bit_exact {
                    exact(&what, gpu, run);
                } else {
                    parity(&what, gpu, tolerance, tolerance, |device| {
                        Ok(vec![run(device)?])
                    });
                }
            }
        }
    }
}

/// Pairs of same-shaped operands on `device`: every pair of edge values, and views against
/// views (broadcast rows and columns, scalars, permuted, transposed against narrowed).
fn operand_pairs(
    dtype: DType,
    device: Device,
    seed: u64,
    scale: f64,
) -> Result<Vec<(String, Tensor, Tensor)>> {
    let edges = edge_values();
    let n = edges.len();
    let every_left: Vec<f64> = (0..n * n).map(|i| edges[i / n]).collect();
    let every_right: Vec<f64> = (0..n * n).map(|i| edges[i % n]).collect();
    let make = |len: usize, shape: &[usize], salt: u64| {
        tensor(data(len, seed ^ salt, scale), shape, dtype, device)
    };
    let grid = make(13 * 9, &[13, 9], 1)?;
    let grid_transposed = make(9 * 13, &[9, 13], 2)?.transpose(0, 1)?;
    let row = make(9, &[1, 9], 3)?.broadcast_as([13, 9])?;
    let column = make(13, &[13, 1], 4)?.broadcast_as([13, 9])?;
    let scalar = make(1, &[], 5)?.broadcast_as([13, 9])?;
    let big = make(1021 * 1031, &[1021, 1031], 6)?;
    let wider = make(1031 * 1032, &[1031, 1032], 7)?;
    Ok(vec![
        (
            "every pair of edge values".into(),
            tensor(every_left, &[n * n], dtype, device)?,
            tensor(every_right, &[n * n], dtype, device)?,
        ),
        ("one element".into(), make(1, &[1], 8)?, make(1, &[1], 9)?),
        (
            format!("contiguous [{OVER_A_WAVE}]"),
            make(OVER_A_WAVE, &[OVER_A_WAVE], 10)?,
            make(OVER_A_WAVE, &[OVER_A_WAVE], 11)?,
        ),
        (
            "[13, 9] with a broadcast row".into(),
            grid.clone(),
            row.clone(),
        ),
        (
            "broadcast row with transposed [13, 9]".into(),
            row,
            grid_transposed.clone(),
        ),
        (
            "broadcast column with a broadcast scalar".into(),
            column,
            scalar.clone(),
        ),
        (
            "transposed with a broadcast scalar".into(),
            grid_transposed,
            scalar,
        ),
        (
            "transposed [1031, 1021] with narrowed".into(),
            big.transpose(0, 1)?,
            wider.narrow(1, 1, 1021)?,
        ),
        ("empty".into(), make(0, &[0, 3], 12)?, make(0, &[0, 3], 13)?),
    ])
}

#[test]
fn binary_ops_are_correctly_rounded_on_every_float_dtype() {
    let Some(gpu) = cuda("binary_ops_are_correctly_rounded_on_every_float_dtype") else {
        return;
    };
    type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Binary); 4] = [
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
    ];
    for (dtype, _) in FLOAT_DTYPES {
        let cpu = operand_pairs(dtype, Device::Cpu, 14, 3.0).unwrap();
        let cuda = operand_pairs(dtype, gpu, 14, 3.0).unwrap();
        for (name, op) in ops {
            for (k, (label, _, _)) in cpu.iter().enumerate() {
                exact(&format!("{name} of {label} {dtype}"), gpu, |device| {
                    let (_, a, b) = &on(device, &cpu, &cuda)[k];
                    op(a, b)
                });
            }
        }
    }
}

#[test]
fn comparisons_match_the_cpu_on_every_dtype() {
    let Some(gpu) = cuda("comparisons_match_the_cpu_on_every_dtype") else {
        return;
    };
    type Compare = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(CmpOp, Compare); 6] = [
        (CmpOp::Eq, Tensor::eq),
        (CmpOp::Ne, Tensor::ne),
        (CmpOp::Lt, Tensor::lt),
        (CmpOp::Le, Tensor::le),
        (CmpOp::Gt, Tensor::gt),
        (CmpOp::Ge, Tensor::ge),
    ];
    for dtype in ALL_DTYPES {
        // A small range, so that random operands are often equal once converted to u8/u32.
        let cpu = operand_pairs(dtype, Device::Cpu, 15, 2.0).unwrap();
        let cuda = operand_pairs(dtype, gpu, 15, 2.0).unwrap();
        for (op, compare) in ops {
            for (k, (label, _, _)) in cpu.iter().enumerate() {
                exact(&format!("{op:?} of {label} {dtype}"), gpu, |device| {
                    let (_, a, b) = &on(device, &cpu, &cuda)[k];
                    compare(a, b)
                });
            }
        }
    }
}

#[test]
fn where_cond_matches_the_cpu_for_every_condition_and_value_dtype() {
    let Some(gpu) = cuda("where_cond_matches_the_cpu_for_every_condition_and_value_dtype") else {
        return;
    };
    for condition_dtype in ALL_DTYPES {
        for dtype in ALL_DTYPES {
            let what = format!("where_cond({condition_dtype}, {dtype})");
            // Conditions with -0, NaN, 0.5 (0 as an integer) and -1 (0 as an integer).
            let run = |device: Device, big: bool| -> Result<Tensor> {
                if big {
                    let condition = tensor(
                        data(OVER_A_WAVE, 16, 1.0),
                        &[OVER_A_WAVE],
                        condition_dtype,
                        device,
                    )?;
                    let on_true =
                        tensor(data(OVER_A_WAVE, 17, 9.0), &[OVER_A_WAVE], dtype, device)?;
                    let on_false =
                        tensor(data(OVER_A_WAVE, 18, 9.0), &[OVER_A_WAVE], dtype, device)?;
                    return Tensor::where_cond(&condition, &on_true, &on_false);
                }
                let edges = edge_values();
                let condition = tensor(edges.clone(), &[edges.len(), 1], condition_dtype, device)?;
                let on_true = tensor(
                    data(9 * edges.len(), 19, 9.0),
                    &[9, edges.len()],
                    dtype,
                    device,
                )?
                .transpose(0, 1)?;
                let on_false = tensor(vec![f64::NAN], &[], dtype, device)?;
                // [n, 1] condition, [n, 9] transposed on_true, [] on_false: all broadcast.
                Tensor::where_cond(&condition, &on_true, &on_false)
            };
            exact(&format!("{what} broadcast"), gpu, |device| {
                run(device, false)
            });
            exact(&format!("{what} [{OVER_A_WAVE}]"), gpu, |device| {
                run(device, true)
            });
        }
    }
}

/// The backend's own errors (beneath the tensor layer's checks) are the CPU backend's.
#[test]
fn backend_errors_match_the_cpu() {
    let Some(_) = cuda("backend_errors_match_the_cpu") else {
        return;
    };
    let device = kiln_tensor::cuda::device(0).unwrap();
    let both = |dtype: DType| {
        let cpu = CpuStorage::full(1.0, 4, dtype);
        let gpu = kiln_tensor::upload(&device, &cpu).unwrap();
        (cpu, gpu)
    };
    let layout = Layout::contiguous([4]);
    let (cpu_u8, gpu_u8) = both(DType::U8);
    let (cpu_f32, gpu_f32) = both(DType::F32);
    let (cpu_f16, gpu_f16) = both(DType::F16);
    let same = |what: &str, cpu: Result<CpuStorage>, gpu: Result<CudaStorage>| {
        let (cpu, gpu) = (cpu.unwrap_err(), gpu.unwrap_err());
        assert_eq!(cpu, gpu, "{what}");
    };
    same(
        "unary on u8",
        cpu_u8.unary(&layout, UnaryOp::Exp),
        gpu_u8.unary(&layout, UnaryOp::Exp),
    );
    same(
        "binary on u8",
        cpu_u8.binary(
            &layout,
            Operand::new(&cpu_u8, &layout),
            kiln_tensor::BinaryOp::Add,
        ),
        gpu_u8.binary(
            &layout,
            Operand::new(&gpu_u8, &layout),
            kiln_tensor::BinaryOp::Add,
        ),
    );
    same(
        "binary f32 with f16",
        cpu_f32.binary(
            &layout,
            Operand::new(&cpu_f16, &layout),
            kiln_tensor::BinaryOp::Mul,
        ),
        gpu_f32.binary(
            &layout,
            Operand::new(&gpu_f16, &layout),
            kiln_tensor::BinaryOp::Mul,
        ),
    );
    same(
        "compare u8 with f32",
        cpu_u8.compare(&layout, Operand::new(&cpu_f32, &layout), CmpOp::Lt),
        gpu_u8.compare(&layout, Operand::new(&gpu_f32, &layout), CmpOp::Lt),
    );
    same(
        "where_cond f32 or f16",
        cpu_u8.where_cond(
            &layout,
            Operand::new(&cpu_f32, &layout),
            Operand::new(&cpu_f16, &layout),
        ),
        gpu_u8.where_cond(
            &layout,
            Operand::new(&gpu_f32, &layout),
            Operand::new(&gpu_f16, &layout),
        ),
    );
    // A layout reaching past its buffer is refused before any kernel could read there.
    let too_long = Layout::contiguous([5]);
    let error = gpu_f32.unary(&too_long, UnaryOp::Neg).unwrap_err();
    assert!(
        matches!(error, Error::Invalid { op: "unary op", .. }),
        "{error}"
    );
    let error = gpu_f32
        .binary(
            &layout,
            Operand::new(&gpu_f32, &too_long.narrow(0, 1, 4).unwrap()),
            kiln_tensor::BinaryOp::Add,
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Invalid {
                op: "binary op",
                ..
            }
        ),
        "{error}"
    );
}
