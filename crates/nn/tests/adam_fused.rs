//! kiln's fused Adam/AdamW kernel (`Tensor::adam_step`) against the update it replaced: the
//! same step written op by op with kiln's elementwise ops, in PyTorch's order (kept here as
//! the reference, and as the CPU reference for the CUDA kernel). Bit for bit, for every float
//! dtype, with and without weight decay of either kind, at both ends of the lerp (β1 = 0.9,
//! and WGAN-GP's β1 = 0), at the first and a later step, and over a parameter long enough to
//! be split over threads.

use half::{bf16, f16};
use kiln_tensor::{AdamStep, DType, Device, Generator, Tensor};

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
