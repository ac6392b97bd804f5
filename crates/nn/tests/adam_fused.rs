//! kiln's fused Adam/AdamW kernel (`Tensor::adam_step`) against the update it replaced: the
//! same step written op by op with kiln's elementwise ops, in PyTorch's order (kept here as
//! the reference, and as the CPU reference for the CUDA kernel). Bit for bit, for every float
//! dtype, with and without weight decay of either kind, at both ends of the lerp (β1 = 0.9,
//! and WGAN-GP's β1 = 0), at the first and a later step, and over a parameter long enough to
//! be split over threads; and the in-place step (`Var::adam_step_many`) against the fresh one.

use half::{bf16, f16};
use kiln_tensor::{AdamStep, AdamUpdate, DType, Device, Generator, Tensor, Var};

/// `torch.lerp(start, end, weight)`, from the nearer end.
fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Tensor {
    let difference = end.sub(start).unwrap();
    if weight.abs() < 0.5 {
        start.add(&difference.mul_scalar(weight).unwrap()).unwrap()
    } else {
        end.sub(&difference.mul_scalar(1.0 - weight).unwrap())
            .unwrap()
    }
}

/// The Adam/AdamW step as kiln-nn computed it before the fused kernel, op by op.
fn unfused(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamStep) -> [Tensor; 3] {
    let (beta1, beta2) = s.betas;
    let mut value = p.clone();
    let mut grad = g.clone();
    if s.weight_decay != 0.0 {
        if s.decoupled {
            value = value.mul_scalar(1.0 - s.lr * s.weight_decay).unwrap();
        } else {
            grad = grad
                .add(&value.mul_scalar(s.weight_decay).unwrap())
                .unwrap();
        }
    }
    let exp_avg = lerp(m, &grad, 1.0 - beta1);
    let exp_avg_sq = v
        .mul_scalar(beta2)
        .unwrap()
        .add(&grad.mul_scalar(1.0 - beta2).unwrap().mul(&grad).unwrap())
        .unwrap();
    let bias_correction1 = 1.0 - beta1.powf(s.step);
    let bias_correction2 = 1.0 - beta2.powf(s.step);
    let step_size = s.lr / bias_correction1;
    let denom = exp_avg_sq
        .sqrt()
        .unwrap()
        .div(&value.scalar_like(bias_correction2.sqrt()).unwrap())
        .unwrap()
        .add_scalar(s.eps)
        .unwrap();
    let value = value
        .add(&exp_avg.mul_scalar(-step_size).unwrap().div(&denom).unwrap())
        .unwrap();
    [value, exp_avg, exp_avg_sq]
}

/// The tensor's elements as bit patterns (so -0 and NaN payloads count).
fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F16 => t
            .to_vec::<f16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::BF16 => t
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F32 => t
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => t
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        other => panic!("not a float dtype: {other}"),
    }
}

#[test]
fn the_fused_adam_step_equals_the_op_by_op_update_bit_for_bit() {
    let mut generator = Generator::new(21);
    let mut cases = 0;
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for len in [7, 70_001] {
            let normal = |generator: &mut Generator, std: f64| {
                Tensor::randn([len], 0.0, std, DType::F64, Device::Cpu, generator)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let p = normal(&mut generator, 1.0);
            let g = normal(&mut generator, 0.1);
            let m = normal(&mut generator, 0.05);
            let v = normal(&mut generator, 0.01).square().unwrap();
            for (weight_decay, decoupled) in [(0.0, false), (0.01, false), (0.01, true)] {
                for betas in [(0.9, 0.999), (0.0, 0.9)] {
                    for (step, first) in [(1.0, true), (7.0, false)] {
                        let s = AdamStep {
                            lr: 1e-3,
                            betas,
                            eps: 1e-8,
                            weight_decay,
                            decoupled,
                            step,
                        };
                        // At step 1 the moments start at zero, as an optimizer's do.
                        let (m, v) = if first {
                            (m.zeros_like().unwrap(), v.zeros_like().unwrap())
                        } else {
                            (m.clone(), v.clone())
                        };
                        let (fp, fm, fv) = p.adam_step(&g, &m, &v, &s).unwrap();
                        let [up, um, uv] = unfused(&p, &g, &m, &v, &s);
                        for (name, fused, reference) in [
                            ("param", fp, up),
                            ("exp_avg", fm, um),
                            ("exp_avg_sq", fv, uv),
                        ] {
                            assert_eq!(fused.dtype(), dtype);
                            assert!(
                                bits(&fused) == bits(&reference),
                                "{dtype} len {len} {s:?}: {name} differs"
                            );
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 4 * 2 * 3 * 2 * 2);
}

#[test]
fn the_fused_adam_step_refuses_mismatched_operands() {
    let p = Tensor::zeros([3], DType::F32, Device::Cpu).unwrap();
    let s = AdamStep {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        step: 1.0,
    };
    let short = Tensor::zeros([2], DType::F32, Device::Cpu).unwrap();
    let error = p.adam_step(&short, &p, &p, &s).unwrap_err().to_string();
    assert!(
        error.contains("adam_step") && error.contains("[2]"),
        "{error}"
    );
    let wide = Tensor::zeros([3], DType::F64, Device::Cpu).unwrap();
    let error = p.adam_step(&p, &wide, &p, &s).unwrap_err().to_string();
    assert!(error.contains("f64") && error.contains("f32"), "{error}");
    let integers = Tensor::zeros([3], DType::U32, Device::Cpu).unwrap();
    assert!(integers
        .adam_step(&integers, &integers, &integers, &s)
        .is_err());
}

#[test]
fn the_multi_tensor_step_equals_each_parameter_stepped_alone() {
    let mut generator = Generator::new(5);
    let s = AdamStep {
        lr: 1e-3,
        betas: (0.5, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        step: 3.0,
    };
    let tensors: Vec<[Tensor; 4]> = [1, 0, 4097, 33]
        .into_iter()
        .map(|len| {
            [1.0, 0.1, 0.05, 0.01].map(|std| {
                Tensor::randn([len], 0.0, std, DType::F32, Device::Cpu, &mut generator)
                    .unwrap()
                    .abs()
                    .unwrap()
            })
        })
        .collect();
    let entries: Vec<[&Tensor; 4]> = tensors.iter().map(|[p, g, m, v]| [p, g, m, v]).collect();
    let together = Tensor::adam_step_many(&entries, &s).unwrap();
    assert_eq!(together.len(), 4);
    for ([p, g, m, v], (tp, tm, tv)) in tensors.iter().zip(&together) {
        let [up, um, uv] = unfused(p, g, m, v, &s);
        assert!(bits(tp) == bits(&up) && bits(tm) == bits(&um) && bits(tv) == bits(&uv));
    }
    assert!(Tensor::adam_step_many(&[], &s).unwrap().is_empty());
    // One dtype for all the entries.
    let [p, g, m, v] = &tensors[0];
    let wide = p.to_dtype(DType::F64).unwrap();
    let error = Tensor::adam_step_many(&[[p, g, m, v], [&wide, &wide, &wide, &wide]], &s)
        .unwrap_err()
        .to_string();
    assert!(error.contains("f64") && error.contains("f32"), "{error}");
}

/// A step's operands `[p, g, m, v]` of `len` values of `dtype`, positive moments.
fn operands(len: usize, dtype: DType, generator: &mut Generator) -> [Tensor; 4] {
    [1.0, 0.1, 0.05, 0.01].map(|std| {
        Tensor::randn([len], 0.0, std, DType::F32, Device::Cpu, generator)
            .unwrap()
            .abs()
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    })
}

/// `Var::adam_step_many` of one variable with the gradient `grad` and the moments `[m, v]`,
/// which it updates.
fn step_in_place(
    var: &Var,
    grad: &Tensor,
    [m, v]: [&mut Tensor; 2],
    s: &AdamStep,
) -> kiln_tensor::Result<()> {
    let mut updates = [AdamUpdate {
        param: var,
        grad,
        exp_avg: m,
        exp_avg_sq: v,
    }];
    Var::adam_step_many(&mut updates, s)
}

/// Asserts that each of `got` has the bits of the same place in `want`.
fn assert_bits<const N: usize>(got: [&Tensor; N], want: [&Tensor; N], case: &str) {
    for (i, (got, want)) in got.iter().zip(want).enumerate() {
        assert!(bits(got) == bits(want), "{case}: operand {i} differs");
    }
}

#[test]
fn the_in_place_step_gives_the_fresh_steps_bits_and_leaves_held_moments_alone() {
    let mut generator = Generator::new(9);
    let s = AdamStep {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
        decoupled: true,
        step: 4.0,
    };
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        // Long enough to be split over threads (65,536 values a task), and short.
        for len in [150_001, 7] {
            let case = format!("{dtype}, {len} values");
            let [p, g, m, v] = operands(len, dtype, &mut generator);
            let (want_p, want_m, want_v) = p.adam_step(&g, &m, &v, &s).unwrap();
            let want = [&want_p, &want_m, &want_v];
            // Moments that are the update's only handles change in place; the variable's
            // storage is written where it lies, so another handle on it sees the new values.
            let var = Var::new(&p).unwrap();
            let handle = var.as_tensor().clone();
            let (mut exp_avg, mut exp_avg_sq) = (m.copy().unwrap(), v.copy().unwrap());
            step_in_place(&var, &g, [&mut exp_avg, &mut exp_avg_sq], &s).unwrap();
            assert_bits([&handle, &exp_avg, &exp_avg_sq], want, &case);
            // A moment held elsewhere (as a state dict's clone) keeps its values: the step
            // gives the optimizer a new one.
            let var = Var::new(&p).unwrap();
            let (mut exp_avg, mut exp_avg_sq) = (m.copy().unwrap(), v.copy().unwrap());
            let held = exp_avg.clone();
            step_in_place(&var, &g, [&mut exp_avg, &mut exp_avg_sq], &s).unwrap();
            assert_bits([&held], [&m], &format!("{case}, the held moment"));
            assert_bits([var.as_tensor(), &exp_avg, &exp_avg_sq], want, &case);
        }
    }
}

#[test]
fn the_in_place_step_reads_a_strided_gradient_or_one_of_the_parameters_own_values() {
    let mut generator = Generator::new(10);
    let s = AdamStep {
        lr: 1e-2,
        betas: (0.0, 0.9),
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        step: 1.0,
    };
    let [p, g, m, v] = operands(12, DType::F32, &mut generator);
    let [p, m, v] = [p, m, v].map(|t| t.reshape([3, 4]).unwrap());
    // A transposed gradient, read through its layout; then the variable's own values as its
    // gradient, all read before any is written (and no deadlock on the storage's lock).
    let transposed = g.reshape([4, 3]).unwrap().t().unwrap();
    for own in [false, true] {
        let var = Var::new(&p).unwrap();
        let grad = if own {
            var.as_tensor().clone()
        } else {
            transposed.clone()
        };
        let (want_p, want_m, want_v) = p.adam_step(&grad, &m, &v, &s).unwrap();
        let (mut exp_avg, mut exp_avg_sq) = (m.copy().unwrap(), v.copy().unwrap());
        step_in_place(&var, &grad, [&mut exp_avg, &mut exp_avg_sq], &s).unwrap();
        assert_bits(
            [var.as_tensor(), &exp_avg, &exp_avg_sq],
            [&want_p, &want_m, &want_v],
            if own { "own values" } else { "transposed" },
        );
    }
}

#[test]
fn an_in_place_step_that_fails_changes_nothing() {
    let mut generator = Generator::new(11);
    let s = AdamStep {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        step: 2.0,
    };
    let [p, g, m, v] = operands(5, DType::F32, &mut generator);
    let [q, _, n, w] = operands(6, DType::F32, &mut generator);
    let (first, second) = (Var::new(&p).unwrap(), Var::new(&q).unwrap());
    let (mut m1, mut v1) = (m.copy().unwrap(), v.copy().unwrap());
    let (mut m2, mut v2) = (n.copy().unwrap(), w.copy().unwrap());
    // The second entry's gradient has the first's length, not its own.
    let mut updates = [
        AdamUpdate {
            param: &first,
            grad: &g,
            exp_avg: &mut m1,
            exp_avg_sq: &mut v1,
        },
        AdamUpdate {
            param: &second,
            grad: &g,
            exp_avg: &mut m2,
            exp_avg_sq: &mut v2,
        },
    ];
    let error = Var::adam_step_many(&mut updates, &s)
        .unwrap_err()
        .to_string();
    assert!(error.contains("adam_step"), "{error}");
    assert_bits(
        [first.as_tensor(), &m1, &v1, second.as_tensor(), &m2, &v2],
        [&p, &m, &v, &q, &n, &w],
        "after the error",
    );
}
