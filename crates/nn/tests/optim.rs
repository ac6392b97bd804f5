//! Optimizers, gradient clipping and schedules against their update rules written out by hand
//! in f64 in this file (the pseudo-code of `torch.optim.SGD`, `Adam`, `AdamW`, PyTorch's
//! `clip_grad_norm_` and the schedulers' closed forms). Every expected value is computed here
//! from those formulas, never taken from kiln's output.
//!
//! The tiny problem: f(p) = sum(a * p^2 / 2 + b * p), whose gradient is a * p + b.

use kiln_nn::optim::{
    clip_grad_norm, clip_grad_norm_on_device, Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, Sgd,
    SgdConfig,
};
use kiln_nn::schedule::{CosineAnnealingLr, LinearWarmup, Schedule, StepLr};
use kiln_nn::{Init, NnError, ParamStore};
use kiln_tensor::{DType, Device, Gradients, Tensor, Var};

const A: [f64; 3] = [1.0, 2.0, 0.5];
const B: [f64; 3] = [0.3, -0.2, 0.1];
const P0: [f64; 3] = [0.5, -1.5, 2.0];

fn var_f64(values: &[f64]) -> Var {
    Var::new(&Tensor::from_slice(values, [values.len()], Device::Cpu).unwrap()).unwrap()
}

fn var_f32(values: &[f32]) -> Var {
    Var::new(&Tensor::from_slice(values, [values.len()], Device::Cpu).unwrap()).unwrap()
}

/// The gradient of the tiny problem at `p`.
fn gradient(p: &[f64]) -> Vec<f64> {
    p.iter()
        .zip(A.iter().zip(B))
        .map(|(p, (a, b))| a * p + b)
        .collect()
}

/// Gradients holding the tiny problem's gradient at each parameter's current value.
fn gradients_at(params: &[(String, Var)]) -> Gradients {
    let mut grads = Gradients::default();
    for (_, var) in params {
        let p = var.to_vec::<f64>().unwrap();
        let g = Tensor::from_vec(gradient(&p), [p.len()], Device::Cpu).unwrap();
        grads.insert(var, g);
    }
    grads
}

fn assert_close(got: &[f64], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let tolerance = 1e-12 * e.abs().max(1.0);
        assert!(
            (g - e).abs() <= tolerance,
            "{what}[{i}]: got {g}, expected {e} (difference {})",
            (g - e).abs()
        );
    }
}

fn named(var: &Var) -> Vec<(String, Var)> {
    vec![("w".to_string(), var.clone())]
}

// ---- SGD ----

/// torch.optim.SGD's documented update for one parameter, in f64, `steps` times.
fn sgd_reference(config: SgdConfig, steps: usize) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut buffer: Option<Vec<f64>> = None;
    for _ in 0..steps {
        let mut g = gradient(&p);
        if config.weight_decay != 0.0 {
            g = g
                .iter()
                .zip(&p)
                .map(|(g, p)| g + config.weight_decay * p)
                .collect();
        }
        if config.momentum != 0.0 {
            let b: Vec<f64> = match &buffer {
                None => g.clone(),
                Some(b) => b
                    .iter()
                    .zip(&g)
                    .map(|(b, g)| config.momentum * b + (1.0 - config.dampening) * g)
                    .collect(),
            };
            g = if config.nesterov {
                g.iter()
                    .zip(&b)
                    .map(|(g, b)| g + config.momentum * b)
                    .collect()
            } else {
                b.clone()
            };
            buffer = Some(b);
        }
        p = p.iter().zip(&g).map(|(p, g)| p - config.lr * g).collect();
    }
    p
}

fn run_sgd(config: SgdConfig, steps: usize) -> Vec<f64> {
    let var = var_f64(&P0);
    let params = named(&var);
    let mut sgd = Sgd::new(params.clone(), config).unwrap();
    for _ in 0..steps {
        sgd.step(&gradients_at(&params)).unwrap();
    }
    var.to_vec::<f64>().unwrap()
}

#[test]
fn sgd_config_defaults_are_pytorchs() {
    let config = SgdConfig::default();
    assert_eq!(
        (
            config.lr,
            config.momentum,
            config.dampening,
            config.nesterov,
            config.weight_decay
        ),
        (1e-3, 0.0, 0.0, false, 0.0)
    );
}

#[test]
fn plain_sgd_first_step_is_p_minus_lr_g() {
    let config = SgdConfig {
        lr: 0.1,
        ..Default::default()
    };
    // By hand: g = a p + b = [0.8, -3.2, 1.1]; p - 0.1 g.
    let expected = [0.5 - 0.08, -1.5 + 0.32, 2.0 - 0.11];
    assert_close(&run_sgd(config, 1), &expected, "one step");
    assert_close(
        &run_sgd(config, 3),
        &sgd_reference(config, 3),
        "three steps",
    );
}

#[test]
fn sgd_momentum_starts_from_the_gradient_and_dampens_after() {
    let config = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.3,
        ..Default::default()
    };
    // Step 1: the buffer is the gradient itself (no dampening), so it equals plain SGD.
    let plain = SgdConfig {
        lr: 0.05,
        ..Default::default()
    };
    assert_close(&run_sgd(config, 1), &sgd_reference(plain, 1), "first step");
    for steps in [2, 4] {
        assert_close(
            &run_sgd(config, steps),
            &sgd_reference(config, steps),
            &format!("{steps} steps"),
        );
    }
}

#[test]
fn sgd_nesterov_with_weight_decay_matches_the_rule() {
    let config = SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        nesterov: true,
        weight_decay: 0.1,
        ..Default::default()
    };
    for steps in [1, 2, 5] {
        assert_close(
            &run_sgd(config, steps),
            &sgd_reference(config, steps),
            &format!("{steps} steps"),
        );
    }
    // Nesterov differs from plain momentum from the first step: g + momentum * g.
    let heavy_ball = SgdConfig {
        nesterov: false,
        ..config
    };
    assert_ne!(run_sgd(config, 1), run_sgd(heavy_ball, 1));
}

#[test]
fn sgd_refuses_what_pytorch_refuses() {
    let var = var_f64(&P0);
    for config in [
        SgdConfig {
            lr: -0.1,
            ..Default::default()
        },
        SgdConfig {
            momentum: -0.5,
            ..Default::default()
        },
        SgdConfig {
            weight_decay: -1.0,
            ..Default::default()
        },
        SgdConfig {
            nesterov: true,
            ..Default::default()
        },
        SgdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Default::default()
        },
        SgdConfig {
            lr: f64::NAN,
            ..Default::default()
        },
    ] {
        let err = Sgd::new(named(&var), config).err();
        assert!(
            matches!(err, Some(NnError::Invalid { op: "Sgd", .. })),
            "{config:?} gave {err:?}"
        );
    }
    let twice = vec![("w".to_string(), var.clone()), ("w".to_string(), var)];
    let err = Sgd::new(twice, SgdConfig::default()).err().unwrap();
    assert!(err.to_string().contains("`w` appears twice"), "{err}");
}

#[test]
fn parameters_without_a_gradient_are_left_alone() {
    let with = var_f64(&P0);
    let without = var_f64(&[7.0, 8.0]);
    let params = vec![
        ("with".to_string(), with.clone()),
        ("without".to_string(), without.clone()),
    ];
    let mut sgd = Sgd::new(
        params.clone(),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    sgd.step(&gradients_at(&params[..1])).unwrap();
    assert_eq!(without.to_vec::<f64>().unwrap(), [7.0, 8.0]);
    let keys: Vec<String> = sgd.state_dict().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["momentum_buffer.with"]);
}

#[test]
fn a_gradient_of_the_wrong_shape_is_an_error_and_changes_nothing() {
    let var = var_f64(&P0);
    let mut sgd = Sgd::new(named(&var), SgdConfig::default()).unwrap();
    let mut grads = Gradients::default();
    grads.insert(&var, Tensor::zeros([2], DType::F64, Device::Cpu).unwrap());
    let err = sgd.step(&grads).unwrap_err().to_string();
    assert!(
        err.contains("`w`") && err.contains("[2]") && err.contains("[3]"),
        "{err}"
    );
    assert_eq!(var.to_vec::<f64>().unwrap(), P0);
}

#[test]
fn sgd_updates_a_stores_parameters_from_backward() {
    let store = ParamStore::new(Device::Cpu, DType::F64, 3);
    let root = store.root();
    let w = root.parameter("w", [3], Init::Constant(0.5)).unwrap();
    let before = w.to_vec::<f64>().unwrap();
    // loss = sum(w^2) / 2, gradient w.
    let loss = w
        .square()
        .unwrap()
        .sum_all()
        .unwrap()
        .mul_scalar(0.5)
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut sgd = Sgd::new(
        store.parameters(),
        SgdConfig {
            lr: 0.25,
            ..Default::default()
        },
    )
    .unwrap();
    sgd.step(&grads).unwrap();
    let expected: Vec<f64> = before.iter().map(|p| p - 0.25 * p).collect();
    assert_close(&w.to_vec::<f64>().unwrap(), &expected, "w");
    // The updated values are in the store too: one variable, shared.
    let stored = store.get("w").unwrap().to_vec::<f64>().unwrap();
    assert_eq!(stored, w.to_vec::<f64>().unwrap());
}

// ---- Adam and AdamW ----

/// torch.optim.Adam's (decoupled = false) or AdamW's (true) documented update, in f64.
fn adam_reference(
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    steps: usize,
) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut m = vec![0.0; p.len()];
    let mut v = vec![0.0; p.len()];
    for t in 1..=steps {
        let mut g = gradient(&p);
        if decoupled {
            p = p.iter().map(|p| p * (1.0 - lr * weight_decay)).collect();
        } else {
            g = g
                .iter()
                .zip(&p)
                .map(|(g, p)| g + weight_decay * p)
                .collect();
        }
        for i in 0..p.len() {
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - beta1.powi(t as i32));
            let v_hat_sqrt = v[i].sqrt() / (1.0 - beta2.powi(t as i32)).sqrt();
            p[i] -= lr * m_hat / (v_hat_sqrt + eps);
        }
    }
    p
}

fn run(optimizer: &mut dyn Optimizer, params: &[(String, Var)], steps: usize) {
    for _ in 0..steps {
        optimizer.step(&gradients_at(params)).unwrap();
    }
}

fn run_adam(config: AdamConfig, steps: usize) -> Vec<f64> {
    let var = var_f64(&P0);
    let mut adam = Adam::new(named(&var), config).unwrap();
    run(&mut adam, &named(&var), steps);
    var.to_vec::<f64>().unwrap()
}

fn run_adamw(config: AdamWConfig, steps: usize) -> Vec<f64> {
    let var = var_f64(&P0);
    let mut adamw = AdamW::new(named(&var), config).unwrap();
    run(&mut adamw, &named(&var), steps);
    var.to_vec::<f64>().unwrap()
}

#[test]
fn adam_config_defaults_are_pytorchs() {
    let adam = AdamConfig::default();
    assert_eq!(
        (adam.lr, adam.betas, adam.eps, adam.weight_decay),
        (1e-3, (0.9, 0.999), 1e-8, 0.0)
    );
    let adamw = AdamWConfig::default();
    assert_eq!(
        (adamw.lr, adamw.betas, adamw.eps, adamw.weight_decay),
        (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    );
}

#[test]
fn adam_first_step_moves_each_weight_by_about_lr() {
    // At t = 1, m_hat = g and sqrt(v_hat) = |g|, so the step is lr * g / (|g| + eps):
    // about lr against the sign of g.
    let config = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let g = gradient(&P0);
    let expected: Vec<f64> = P0
        .iter()
        .zip(&g)
        .map(|(p, g)| p - 0.01 * g / (g.abs() + 1e-8))
        .collect();
    assert_close(&run_adam(config, 1), &expected, "one step");
}

#[test]
fn adam_matches_the_rule_over_several_steps() {
    let config = AdamConfig {
        lr: 0.02,
        betas: (0.8, 0.95),
        eps: 1e-6,
        weight_decay: 0.0,
    };
    for steps in [2, 3, 10] {
        let expected = adam_reference(0.02, (0.8, 0.95), 1e-6, 0.0, false, steps);
        assert_close(
            &run_adam(config, steps),
            &expected,
            &format!("{steps} steps"),
        );
    }
}

#[test]
fn adam_with_l2_weight_decay_matches_the_rule() {
    let config = AdamConfig {
        lr: 0.02,
        weight_decay: 0.1,
        ..Default::default()
    };
    for steps in [1, 3] {
        let expected = adam_reference(0.02, (0.9, 0.999), 1e-8, 0.1, false, steps);
        assert_close(
            &run_adam(config, steps),
            &expected,
            &format!("{steps} steps"),
        );
    }
}

#[test]
fn adamw_decays_the_weights_outside_the_gradient() {
    let config = AdamWConfig {
        lr: 0.02,
        weight_decay: 0.1,
        ..Default::default()
    };
    for steps in [1, 3] {
        let expected = adam_reference(0.02, (0.9, 0.999), 1e-8, 0.1, true, steps);
        assert_close(
            &run_adamw(config, steps),
            &expected,
            &format!("{steps} steps"),
        );
    }
    // With the same decay, Adam's L2 term and AdamW's decoupled decay give different steps.
    let adam = run_adam(
        AdamConfig {
            lr: 0.02,
            weight_decay: 0.1,
            ..Default::default()
        },
        3,
    );
    let adamw = run_adamw(config, 3);
    let gap = adam
        .iter()
        .zip(&adamw)
        .map(|(a, w)| (a - w).abs())
        .fold(0.0, f64::max);
    let reference_gap = adam_reference(0.02, (0.9, 0.999), 1e-8, 0.1, false, 3)
        .iter()
        .zip(adam_reference(0.02, (0.9, 0.999), 1e-8, 0.1, true, 3))
        .map(|(a, w)| (a - w).abs())
        .fold(0.0, f64::max);
    assert!(gap > 1e-4, "Adam and AdamW differ by only {gap}");
    assert!((gap - reference_gap).abs() < 1e-12);
}

#[test]
fn adamw_without_weight_decay_is_adam_bit_for_bit() {
    let adam = run_adam(
        AdamConfig {
            lr: 0.03,
            ..Default::default()
        },
        4,
    );
    let adamw = run_adamw(
        AdamWConfig {
            lr: 0.03,
            weight_decay: 0.0,
            ..Default::default()
        },
        4,
    );
    assert_eq!(adam, adamw);
}

#[test]
fn adam_counts_steps_per_parameter() {
    // A parameter that first gets a gradient at the optimizer's second step takes its own
    // first step then (bias corrections with t = 1), as PyTorch's per-parameter state does.
    let early = var_f64(&P0);
    let late = var_f64(&P0);
    let params = vec![
        ("early".to_string(), early.clone()),
        ("late".to_string(), late.clone()),
    ];
    let mut adam = Adam::new(
        params.clone(),
        AdamConfig {
            lr: 0.01,
            ..Default::default()
        },
    )
    .unwrap();
    adam.step(&gradients_at(&params[..1])).unwrap();
    assert_eq!(late.to_vec::<f64>().unwrap(), P0);
    adam.step(&gradients_at(&params)).unwrap();
    let one_step = adam_reference(0.01, (0.9, 0.999), 1e-8, 0.0, false, 1);
    let two_steps = adam_reference(0.01, (0.9, 0.999), 1e-8, 0.0, false, 2);
    assert_close(&late.to_vec::<f64>().unwrap(), &one_step, "late");
    assert_close(&early.to_vec::<f64>().unwrap(), &two_steps, "early");
    let state = adam.state_dict();
    let step_of = |key: &str| {
        let (_, tensor) = state.iter().find(|(k, _)| k == key).unwrap();
        tensor.to_scalar::<f64>().unwrap()
    };
    assert_eq!((step_of("step.early"), step_of("step.late")), (2.0, 1.0));
}

#[test]
fn set_learning_rate_changes_the_next_step() {
    let var = var_f64(&P0);
    let mut sgd = Sgd::new(named(&var), SgdConfig::default()).unwrap();
    sgd.set_learning_rate(0.5);
    assert_eq!(sgd.learning_rate(), 0.5);
    sgd.step(&gradients_at(&named(&var))).unwrap();
    let expected: Vec<f64> = P0
        .iter()
        .zip(gradient(&P0))
        .map(|(p, g)| p - 0.5 * g)
        .collect();
    assert_close(&var.to_vec::<f64>().unwrap(), &expected, "p");

    let var = var_f64(&P0);
    let mut adamw = AdamW::new(named(&var), AdamWConfig::default()).unwrap();
    adamw.set_learning_rate(0.04);
    assert_eq!(adamw.config().lr, 0.04);
    run(&mut adamw, &named(&var), 2);
    let expected = adam_reference(0.04, (0.9, 0.999), 1e-8, 0.01, true, 2);
    assert_close(&var.to_vec::<f64>().unwrap(), &expected, "p");
}

#[test]
fn adam_refuses_what_pytorch_refuses() {
    let var = var_f64(&P0);
    for config in [
        AdamConfig {
            lr: -1.0,
            ..Default::default()
        },
        AdamConfig {
            betas: (1.0, 0.999),
            ..Default::default()
        },
        AdamConfig {
            betas: (0.9, -0.1),
            ..Default::default()
        },
        AdamConfig {
            eps: -1e-8,
            ..Default::default()
        },
        AdamConfig {
            weight_decay: -0.1,
            ..Default::default()
        },
    ] {
        let err = Adam::new(named(&var), config).err();
        assert!(
            matches!(err, Some(NnError::Invalid { op: "Adam", .. })),
            "{config:?} gave {err:?}"
        );
    }
    let err = AdamW::new(
        named(&var),
        AdamWConfig {
            betas: (0.9, 1.5),
            ..Default::default()
        },
    )
    .err();
    assert!(matches!(err, Some(NnError::Invalid { op: "AdamW", .. })));
}

// ---- state save and restore ----

/// Runs `make`'s optimizer 3 steps on f32 parameters, moves its state and the parameters into
/// a fresh optimizer, and checks that the next step of both is the same bit for bit.
fn check_resume(make: impl Fn(Vec<(String, Var)>) -> Box<dyn Optimizer>, expected_keys: &[&str]) {
    let values: [f32; 3] = [0.5, -1.5, 2.0];
    let original = vec![
        ("a".to_string(), var_f32(&values)),
        ("b.weight".to_string(), var_f32(&[0.25, 4.0])),
    ];
    let gradients = |params: &[(String, Var)]| {
        let mut grads = Gradients::default();
        for (_, var) in params {
            // g = p^3 - 1, in f32.
            let g = var.powf(3.0).unwrap().add_scalar(-1.0).unwrap();
            grads.insert(var, g);
        }
        grads
    };
    let mut first = make(original.clone());
    for _ in 0..3 {
        first.step(&gradients(&original)).unwrap();
    }
    let state = first.state_dict();
    let keys: Vec<&str> = state.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, expected_keys);
    for (key, tensor) in &state {
        if !key.starts_with("step.") {
            assert_eq!(
                tensor.dtype(),
                DType::F32,
                "{key} is kept in the parameter's dtype"
            );
        }
    }

    let copy_of = |params: &[(String, Var)]| -> Vec<(String, Var)> {
        params
            .iter()
            .map(|(name, var)| (name.clone(), Var::new(var).unwrap()))
            .collect()
    };
    let resumed_params = copy_of(&original);
    let fresh_params = copy_of(&original);
    let mut resumed = make(resumed_params.clone());
    resumed.load_state_dict(&state, "test").unwrap();
    let mut fresh = make(fresh_params.clone());
    first.step(&gradients(&original)).unwrap();
    resumed.step(&gradients(&resumed_params)).unwrap();
    fresh.step(&gradients(&fresh_params)).unwrap();
    let bits = |var: &Var| -> Vec<u32> {
        var.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    for ((name, a), (_, b)) in original.iter().zip(&resumed_params) {
        assert_eq!(bits(a), bits(b), "{name} after the resumed step");
    }
    // Without the state the next step differs, so the comparison above can fail.
    assert_ne!(bits(&original[0].1), bits(&fresh_params[0].1));
}

#[test]
fn sgd_state_resumes_bit_for_bit() {
    check_resume(
        |params| {
            Box::new(
                Sgd::new(
                    params,
                    SgdConfig {
                        lr: 0.01,
                        momentum: 0.9,
                        dampening: 0.1,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        },
        &["momentum_buffer.a", "momentum_buffer.b.weight"],
    );
}

const ADAM_KEYS: [&str; 6] = [
    "step.a",
    "exp_avg.a",
    "exp_avg_sq.a",
    "step.b.weight",
    "exp_avg.b.weight",
    "exp_avg_sq.b.weight",
];

#[test]
fn adam_state_resumes_bit_for_bit() {
    check_resume(
        |params| {
            Box::new(
                Adam::new(
                    params,
                    AdamConfig {
                        lr: 0.01,
                        weight_decay: 0.01,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        },
        &ADAM_KEYS,
    );
}

#[test]
fn adamw_state_resumes_bit_for_bit() {
    check_resume(
        |params| {
            Box::new(
                AdamW::new(
                    params,
                    AdamWConfig {
                        lr: 0.01,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        },
        &ADAM_KEYS,
    );
}

#[test]
fn loading_bad_state_names_the_first_mismatch_and_changes_nothing() {
    let var = var_f64(&P0);
    let mut adam = Adam::new(named(&var), AdamConfig::default()).unwrap();
    run(&mut adam, &named(&var), 2);
    let good = adam.state_dict();
    let with = |key: &str, tensor: Tensor| -> Vec<(String, Tensor)> {
        good.iter()
            .map(|(k, t)| {
                if k == key {
                    (k.clone(), tensor.clone())
                } else {
                    (k.clone(), t.clone())
                }
            })
            .collect()
    };
    // (state to load, what the error must mention)
    type Case<'a> = (Vec<(String, Tensor)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            with(
                "exp_avg.w",
                Tensor::zeros([2, 2], DType::F64, Device::Cpu).unwrap(),
            ),
            &["ckpt.safetensors", "`exp_avg.w`", "[2, 2] f64", "[3] f64"],
        ),
        (
            with(
                "exp_avg_sq.w",
                Tensor::zeros([3], DType::F32, Device::Cpu).unwrap(),
            ),
            &["`exp_avg_sq.w`", "[3] f32", "[3] f64"],
        ),
        (
            with("step.w", Tensor::scalar(1.5f64, Device::Cpu).unwrap()),
            &["`step.w`", "whole number"],
        ),
        (
            good.iter()
                .filter(|(k, _)| k != "exp_avg_sq.w")
                .cloned()
                .collect(),
            &["`w`", "incomplete", "`exp_avg_sq.w` missing"],
        ),
        (
            vec![(
                "momentum_buffer.w".to_string(),
                Tensor::zeros([3], DType::F64, Device::Cpu).unwrap(),
            )],
            &["unexpected optimizer state `momentum_buffer.w`"],
        ),
        (
            vec![(
                "exp_avg.v".to_string(),
                Tensor::zeros([3], DType::F64, Device::Cpu).unwrap(),
            )],
            &["unexpected optimizer state `exp_avg.v`"],
        ),
    ];
    for (state, needles) in cases {
        let err = adam
            .load_state_dict(&state, "ckpt.safetensors")
            .unwrap_err()
            .to_string();
        for needle in needles {
            assert!(err.contains(needle), "`{err}` does not mention {needle}");
        }
        // Nothing changed: the state is the good one still.
        let now = adam.state_dict();
        assert_eq!(now.len(), good.len());
        for ((k1, t1), (k2, t2)) in now.iter().zip(&good) {
            assert_eq!(k1, k2);
            assert_eq!(t1.to_vec::<f64>().unwrap(), t2.to_vec::<f64>().unwrap());
        }
    }
    // An empty state resets the optimizer: its next step is a first step again.
    adam.load_state_dict(&[], "empty").unwrap();
    assert!(adam.state_dict().is_empty());
}

// ---- gradient clipping ----

#[test]
fn clip_grad_norm_scales_to_max_norm_over_all_gradients() {
    let first = var_f64(&[0.0, 0.0]);
    let second = var_f32(&[0.0]);
    let absent = var_f64(&[0.0]);
    let params = vec![
        ("first".to_string(), first.clone()),
        ("second".to_string(), second.clone()),
        ("absent".to_string(), absent),
    ];
    let make = || {
        let mut grads = Gradients::default();
        grads.insert(
            &first,
            Tensor::from_vec(vec![3.0f64, 4.0], [2], Device::Cpu).unwrap(),
        );
        grads.insert(
            &second,
            Tensor::from_vec(vec![12.0f32], [1], Device::Cpu).unwrap(),
        );
        grads
    };
    // The total is sqrt(3^2 + 4^2 + 12^2) = 13.
    let mut grads = make();
    let total = clip_grad_norm(&mut grads, &params, 6.5).unwrap();
    assert_eq!(total, 13.0);
    let coefficient = 6.5 / (13.0 + 1e-6);
    assert_close(
        &grads.get(&first).unwrap().to_vec::<f64>().unwrap(),
        &[3.0 * coefficient, 4.0 * coefficient],
        "first",
    );
    let clipped = grads.get(&second).unwrap().to_vec::<f32>().unwrap()[0];
    assert_eq!(clipped, 12.0f32 * coefficient as f32, "scaled in f32");

    // Under max_norm nothing changes (the coefficient clamps to 1).
    let mut grads = make();
    assert_eq!(clip_grad_norm(&mut grads, &params, 100.0).unwrap(), 13.0);
    assert_eq!(
        grads.get(&first).unwrap().to_vec::<f64>().unwrap(),
        [3.0, 4.0]
    );
    assert_eq!(grads.get(&second).unwrap().to_vec::<f32>().unwrap(), [12.0]);
    assert_eq!(
        grads.len(),
        2,
        "no gradient is made for the absent parameter"
    );

    // At exactly max_norm the 1e-6 still scales by 13 / (13 + 1e-6), as PyTorch's does.
    let mut grads = make();
    clip_grad_norm(&mut grads, &params, 13.0).unwrap();
    let scaled = grads.get(&first).unwrap().to_vec::<f64>().unwrap()[0];
    assert_eq!(scaled, 3.0 * (13.0 / (13.0 + 1e-6)));

    assert!(clip_grad_norm(&mut make(), &params, -1.0).is_err());
    assert_eq!(
        clip_grad_norm(&mut Gradients::default(), &params, 1.0).unwrap(),
        0.0
    );
}

// ---- schedules ----

#[test]
fn step_lr_decays_by_gamma_every_step_size() {
    let schedule = StepLr::new(0.1, 30, 0.5).unwrap();
    for (t, k) in [(0, 0), (29, 0), (30, 1), (59, 1), (60, 2), (95, 3)] {
        assert_eq!(
            schedule.learning_rate(t),
            0.1 * 0.5f64.powf(k as f64),
            "t = {t}"
        );
    }
    assert!(StepLr::new(0.1, 0, 0.5).is_err());
}

#[test]
fn cosine_annealing_follows_the_closed_form() {
    let schedule = CosineAnnealingLr::new(0.1, 100, 0.001).unwrap();
    // cos(0) = 1, cos(pi / 2) = 0, cos(pi) = -1: base, the midpoint, eta_min.
    assert_eq!(schedule.learning_rate(0), 0.1);
    assert!((schedule.learning_rate(50) - (0.1 + 0.001) / 2.0).abs() < 1e-15);
    assert!((schedule.learning_rate(100) - 0.001).abs() < 1e-15);
    // cos(pi / 4) = sqrt(2) / 2.
    let quarter = 0.001 + (0.1 - 0.001) * (1.0 + 0.5f64.sqrt()) / 2.0;
    assert!((schedule.learning_rate(25) - quarter).abs() < 1e-15);
    // Past t_max the closed form rises again: t = 150 is the midpoint.
    assert!((schedule.learning_rate(150) - (0.1 + 0.001) / 2.0).abs() < 1e-15);
    assert!(CosineAnnealingLr::new(0.1, 0, 0.0).is_err());
}

#[test]
fn linear_warmup_ramps_to_the_inner_schedule() {
    let inner = StepLr::new(0.2, 10, 0.1).unwrap();
    let schedule = LinearWarmup::new(0.25, 4, inner).unwrap();
    // 0.2 * (0.25 + 0.75 * t / 4) for t < 4, then StepLr from its t = 0.
    for (t, expected) in [
        (0, 0.05),
        (1, 0.0875),
        (2, 0.125),
        (3, 0.1625),
        (4, 0.2),
        (13, 0.2),
        (14, 0.2 * 0.1),
    ] {
        let got = schedule.learning_rate(t);
        assert!(
            (got - expected).abs() < 1e-15,
            "t = {t}: {got} vs {expected}"
        );
    }
    assert!(LinearWarmup::new(0.0, 4, inner).is_err());
    assert!(LinearWarmup::new(1.5, 4, inner).is_err());
}

#[test]
fn a_schedule_drives_the_optimizer() {
    let var = var_f64(&P0);
    let mut sgd = Sgd::new(named(&var), SgdConfig::default()).unwrap();
    let schedule = StepLr::new(0.1, 1, 0.5).unwrap();
    let mut expected = P0.to_vec();
    for t in 0..3 {
        sgd.set_learning_rate(schedule.learning_rate(t));
        sgd.step(&gradients_at(&named(&var))).unwrap();
        let lr = 0.1 * 0.5f64.powi(t as i32);
        expected = expected
            .iter()
            .zip(gradient(&expected))
            .map(|(p, g)| p - lr * g)
            .collect();
    }
    assert_close(&var.to_vec::<f64>().unwrap(), &expected, "p");
}

#[test]
fn sums_of_squares_are_each_tensors_square_summed() {
    let mut generator = kiln_tensor::Generator::new(8);
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let tensors: Vec<Tensor> = [vec![5], vec![0], vec![], vec![3, 70]]
            .into_iter()
            .map(|shape| {
                Tensor::randn(shape, 0.0, 2.0, DType::F64, Device::Cpu, &mut generator)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            })
            .collect();
        let view = tensors[3].t().unwrap();
        let refs: Vec<&Tensor> = tensors.iter().chain([&view]).collect();
        let sums = Tensor::sum_of_squares_many(&refs).unwrap();
        let wide = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        assert_eq!(sums.dtype(), wide);
        let expected: Vec<f64> = refs
            .iter()
            .map(|t| {
                let t = t.to_dtype(wide).unwrap();
                t.square()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .collect();
        let got = sums.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(got, expected, "{dtype}");
    }
    let a = Tensor::zeros([2], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros([2], DType::F64, Device::Cpu).unwrap();
    assert!(Tensor::sum_of_squares_many(&[&a, &b]).is_err());
    let integers = Tensor::zeros([2], DType::U32, Device::Cpu).unwrap();
    assert!(Tensor::sum_of_squares_many(&[&integers]).is_err());
}

/// On a GPU, clipping gives the CPU's gradients and total (to f32 rounding) without the host
/// waiting for the GPU. Skipped without a GPU; with KILN_REQUIRE_CUDA=1, fails instead.
#[test]
fn clipping_on_a_gpu_matches_the_cpu_and_never_waits() {
    let Some(gpu) =
        kiln_tensor::cuda::test_device("clipping_on_a_gpu_matches_the_cpu_and_never_waits")
    else {
        return;
    };
    let mut generator = kiln_tensor::Generator::new(4);
    let values: Vec<Tensor> = [vec![40, 30], vec![30], vec![5000]]
        .into_iter()
        .map(|shape| {
            Tensor::randn(shape, 0.0, 1.0, DType::F32, Device::Cpu, &mut generator).unwrap()
        })
        .collect();
    for max_norm in [1.0, 1e6] {
        let clip = |device: Device| {
            let params: Vec<(String, Var)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("p{i}"),
                        Var::new(&v.zeros_like().unwrap().to_device(device).unwrap()).unwrap(),
                    )
                })
                .collect();
            let mut grads = Gradients::default();
            for ((_, var), value) in params.iter().zip(&values) {
                grads.insert(var, value.to_device(device).unwrap());
            }
            let waits = kiln_tensor::cuda::host_waits();
            let total = clip_grad_norm_on_device(&mut grads, &params, max_norm).unwrap();
            assert_eq!(kiln_tensor::cuda::host_waits(), waits, "clipping waited");
            let clipped: Vec<Vec<f32>> = params
                .iter()
                .map(|(_, var)| grads.get(var).unwrap().to_vec::<f32>().unwrap())
                .collect();
            (total.to_scalar::<f64>().unwrap(), clipped)
        };
        let (cpu_total, cpu) = clip(Device::Cpu);
        let (gpu_total, on_gpu) = clip(gpu);
        assert!(
            (cpu_total - gpu_total).abs() <= 1e-5 * cpu_total,
            "{cpu_total} vs {gpu_total}"
        );
        for (a, b) in cpu.iter().flatten().zip(on_gpu.iter().flatten()) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} vs {b}");
        }
    }
}
