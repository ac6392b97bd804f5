//! The DDPM's pieces against their definitions: the linear β schedule and ᾱ_t; the forward
//! noising q(x_t | x_0) in closed form, exactly and against t single steps of
//! q(x_t | x_{t-1}) simulated one by one; the timestep embedding; the samplers on data whose
//! optimal noise predictor is known in closed form (the moments of what they return, worked
//! out from their update rules; the ancestral sampler's are the data's), and on a single
//! point, which both must return exactly; and the U-Net's gradients against finite
//! differences.

use kiln_diffusion::sampling::{ancestral, ddim};
use kiln_diffusion::{timestep_embedding, DdpmConfig, NoiseSchedule, Sampler, UNet};
use kiln_nn::loss::{mse_loss, Reduction};
use kiln_tensor::gradcheck::GradCheck;
use kiln_tensor::{DType, Device, Generator, Tensor};

fn ho_schedule() -> NoiseSchedule {
    NoiseSchedule::linear(1000, 1e-4, 0.02)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn normal(shape: &[usize], seed: u64) -> Tensor {
    let mut generator = Generator::new(seed);
    Tensor::randn(shape, 0.0, 1.0, DType::F64, Device::Cpu, &mut generator).unwrap()
}

fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, variance)
}

#[test]
fn the_linear_schedule_runs_from_beta_start_to_beta_end_and_alpha_bar_is_the_product() {
    let schedule = ho_schedule();
    assert_eq!(schedule.timesteps(), 1000);
    assert_eq!(schedule.beta(0), 1e-4);
    assert!((schedule.beta(999) - 0.02).abs() < 1e-15);
    // Evenly spaced: (0.02 - 1e-4) / 999 apart.
    assert!((schedule.beta(500) - (1e-4 + 500.0 * (0.02 - 1e-4) / 999.0)).abs() < 1e-15);
    let mut product = 1.0;
    for t in 0..1000 {
        product *= 1.0 - schedule.beta(t);
        assert!((schedule.alpha_bar(t) - product).abs() < 1e-15, "t {t}");
    }
    assert_eq!(schedule.alpha_bar_before(0), 1.0);
    assert_eq!(schedule.alpha_bar_before(10), schedule.alpha_bar(9));
    // Ho et al.'s schedule leaves almost no signal at T: ᾱ_T ≈ 4.0e-5 (√ᾱ_T ≈ 0.0064).
    assert!(
        (schedule.alpha_bar(999) - 4.04e-5).abs() < 1e-6,
        "{}",
        schedule.alpha_bar(999)
    );
}

#[test]
fn q_sample_is_the_closed_form_element_by_element() {
    let schedule = ho_schedule();
    let x0 = normal(&[3, 1, 28, 28], 1).clamp(-1.0, 1.0).unwrap();
    let noise = normal(&[3, 1, 28, 28], 2);
    let t = [0, 417, 999];
    let noisy = values(&schedule.q_sample(&x0, &noise, &t).unwrap());
    let (x0, noise) = (values(&x0), values(&noise));
    for (i, ((x, x0), e)) in noisy.iter().zip(&x0).zip(&noise).enumerate() {
        let a = schedule.alpha_bar(t[i / 784]);
        let expected = a.sqrt() * x0 + (1.0 - a).sqrt() * e;
        assert!(
            (x - expected).abs() < 1e-12,
            "element {i}: {x} vs {expected}"
        );
    }
}

#[test]
fn the_closed_form_has_the_distribution_of_t_single_noising_steps() {
    // x_t from x_0 by t steps x_s = √(1 - β_s)·x_{s-1} + √β_s·z, simulated for 20000 copies
    // of one pixel; and from q(x_t | x_0) in one jump. Both should be N(√ᾱ_t·x_0, 1 - ᾱ_t).
    let schedule = ho_schedule();
    let (x0, copies) = (0.8, 20_000);
    for t in [0usize, 99, 499, 999] {
        let mut x = Tensor::full(x0, [copies], DType::F64, Device::Cpu).unwrap();
        let mut generator = Generator::new(t as u64);
        for s in 0..=t {
            let z =
                Tensor::randn([copies], 0.0, 1.0, DType::F64, Device::Cpu, &mut generator).unwrap();
            let beta = schedule.beta(s);
            x = x
                .mul_scalar((1.0 - beta).sqrt())
                .unwrap()
                .add(&z.mul_scalar(beta.sqrt()).unwrap())
                .unwrap();
        }
        let start = Tensor::full(x0, [copies, 1, 1, 1], DType::F64, Device::Cpu).unwrap();
        let jump = schedule
            .q_sample(
                &start,
                &normal(&[copies, 1, 1, 1], 99 + t as u64),
                &vec![t; copies],
            )
            .unwrap();
        let a = schedule.alpha_bar(t);
        let (mean, variance) = (a.sqrt() * x0, 1.0 - a);
        for (name, draws) in [("stepped", values(&x)), ("closed form", values(&jump))] {
            let (m, v) = mean_and_variance(&draws);
            // Standard errors: √(v/n) for the mean, v·√(2/n) for the variance; allow 5.
            let n = copies as f64;
            assert!(
                (m - mean).abs() < 5.0 * (variance / n).sqrt(),
                "t {t} {name}: mean {m} vs {mean}"
            );
            assert!(
                (v - variance).abs() < 5.0 * variance * (2.0 / n).sqrt(),
                "t {t} {name}: variance {v} vs {variance}"
            );
        }
    }
}

#[test]
fn the_timestep_embedding_is_sin_then_cos_of_geometric_frequencies() {
    let embedding = values(&timestep_embedding(&[0, 7], 8, DType::F64, Device::Cpu).unwrap());
    // Frequencies 10000^(-i/3), i = 0..3: 1, 10000^(-1/3), 10000^(-2/3), 1e-4.
    let frequencies = [
        1.0,
        10_000f64.powf(-1.0 / 3.0),
        10_000f64.powf(-2.0 / 3.0),
        1e-4,
    ];
    let mut expected = vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]; // t = 0
    expected.extend(frequencies.iter().map(|f| (7.0 * f).sin()));
    expected.extend(frequencies.iter().map(|f| (7.0 * f).cos()));
    for (got, want) in embedding.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-12, "{embedding:?} vs {expected:?}");
    }
}

/// The optimal predictor E[ε | x_t] when every pixel of x_0 is N(μ, s²) independently:
/// x_t = √ᾱ·x_0 + √(1 - ᾱ)·ε is Gaussian with ε's regression on it
/// √(1 - ᾱ)·(x_t - √ᾱ·μ) / (ᾱ·s² + 1 - ᾱ).
fn gaussian_oracle(
    schedule: &NoiseSchedule,
    mu: f64,
    s: f64,
) -> impl Fn(&Tensor, usize) -> kiln_diffusion::Result<Tensor> + '_ {
    move |x: &Tensor, t: usize| {
        let a = schedule.alpha_bar(t);
        let gain = (1.0 - a).sqrt() / (a * s * s + 1.0 - a);
        Ok(x.affine(gain, -gain * a.sqrt() * mu)?)
    }
}

/// The mean and variance of each pixel after `sampler` runs from x_T ~ N(0, 1) with the
/// optimal predictor for N(μ, s²) data, worked out from the samplers' update rules: with that
/// predictor every step is x_prev = A·x_t + b + σ·z, so the moments follow
/// m ← A·m + b, v ← A²·v + σ² (clipping aside, which these values never reach).
fn expected_moments(schedule: &NoiseSchedule, sampler: Sampler, mu: f64, s: f64) -> (f64, f64) {
    let (mut m, mut v) = (0.0, 1.0);
    // x̂_0 = μ + g·(x_t - √ᾱ·μ) and ε̂ = h·(x_t - √ᾱ·μ), g = √ᾱ·s²/v_t, h = √(1 - ᾱ)/v_t.
    let predictor = |a: f64| {
        let spread = a * s * s + 1.0 - a;
        (a.sqrt() * s * s / spread, (1.0 - a).sqrt() / spread)
    };
    match sampler {
        Sampler::Ddpm => {
            for t in (0..schedule.timesteps()).rev() {
                let (beta, a, before) = (
                    schedule.beta(t),
                    schedule.alpha_bar(t),
                    schedule.alpha_bar_before(t),
                );
                let (g, _) = predictor(a);
                let c1 = beta * before.sqrt() / (1.0 - a);
                let c2 = (1.0 - before) * (1.0 - beta).sqrt() / (1.0 - a);
                let variance = if t > 0 {
                    beta * (1.0 - before) / (1.0 - a)
                } else {
                    0.0
                };
                m = c1 * (mu + g * (m - a.sqrt() * mu)) + c2 * m;
                v = (c1 * g + c2).powi(2) * v + variance;
            }
        }
        Sampler::Ddim { steps, eta } => {
            let taus: Vec<usize> = (0..steps).map(|i| i * 1000 / steps).collect();
            for i in (0..steps).rev() {
                let a = schedule.alpha_bar(taus[i]);
                let before = if i == 0 {
                    1.0
                } else {
                    schedule.alpha_bar(taus[i - 1])
                };
                let (g, h) = predictor(a);
                let sigma = eta * ((1.0 - before) / (1.0 - a)).sqrt() * (1.0 - a / before).sqrt();
                let direction = (1.0 - before - sigma * sigma).sqrt();
                let slope = before.sqrt() * g + direction * h;
                m = before.sqrt() * mu + slope * (m - a.sqrt() * mu);
                v = slope * slope * v + sigma * sigma;
            }
        }
    }
    (m, v)
}

#[test]
fn the_samplers_follow_their_update_rules_and_the_ancestral_one_reaches_the_data() {
    // Pixels of x_0 independently N(0.1, 0.2²), whose optimal ε̂ is known in closed form; 8
    // images of 784 pixels each.
    let schedule = ho_schedule();
    let (mu, s) = (0.1, 0.2);
    let oracle = gaussian_oracle(&schedule, mu, s);
    for sampler in [
        Sampler::Ddpm,
        Sampler::Ddim {
            steps: 50,
            eta: 0.0,
        },
        Sampler::Ddim {
            steps: 100,
            eta: 1.0,
        },
    ] {
        let mut generator = Generator::new(11);
        let x_t = Tensor::randn(
            [8, 1, 28, 28],
            0.0,
            1.0,
            DType::F64,
            Device::Cpu,
            &mut generator,
        )
        .unwrap();
        let mut denoise = |x: &Tensor, t: usize| oracle(x, t);
        let samples = match sampler {
            Sampler::Ddpm => ancestral(&schedule, x_t, &mut denoise, &mut generator),
            Sampler::Ddim { steps, eta } => {
                ddim(&schedule, x_t, (steps, eta), &mut denoise, &mut generator)
            }
        }
        .unwrap();
        let (m, v) = mean_and_variance(&values(&samples));
        let (expected_m, expected_v) = expected_moments(&schedule, sampler, mu, s);
        // 6272 pixels: standard errors √(v/n) for the mean and v·√(2/n) for the variance.
        let n = 6272.0;
        assert!(
            (m - expected_m).abs() < 5.0 * (expected_v / n).sqrt(),
            "{sampler}: mean {m} vs {expected_m}"
        );
        assert!(
            (v - expected_v).abs() < 5.0 * expected_v * (2.0 / n).sqrt(),
            "{sampler}: variance {v} vs {expected_v}"
        );
        eprintln!(
            "{sampler}: mean {m:.4} (expected {expected_m:.4}), std {:.4} (expected {:.4})",
            v.sqrt(),
            expected_v.sqrt()
        );
        if sampler == Sampler::Ddpm {
            // 1000 small steps come close to the data's own moments: the mean exactly, the
            // spread within 2% (the posterior variance β̃ is the smaller of Ho et al.'s two
            // choices: 0.1963 against 0.2).
            assert!((expected_m - mu).abs() < 1e-3, "{expected_m}");
            assert!((expected_v.sqrt() / s - 1.0).abs() < 0.03, "{expected_v}");
        }
    }
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_recovers_a_single_point_exactly() {
    // Data that is one image x*: the optimal ε̂ is (x_t - √ᾱ·x*)/√(1 - ᾱ), x̂_0 = x* at every
    // step, and both samplers end on x* from any start.
    let schedule = ho_schedule();
    let target = normal(&[2, 1, 28, 28], 4)
        .mul_scalar(0.4)
        .unwrap()
        .clamp(-1.0, 1.0)
        .unwrap();
    let mut denoise = |x: &Tensor, t: usize| -> kiln_diffusion::Result<Tensor> {
        let a = schedule.alpha_bar(t);
        Ok(x.sub(&target.mul_scalar(a.sqrt())?)?
            .mul_scalar(1.0 / (1.0 - a).sqrt())?)
    };
    let expected = values(&target);
    for seed in [1, 2] {
        let mut generator = Generator::new(seed);
        let x_t = normal(&[2, 1, 28, 28], 10 + seed);
        for got in [
            ddim(
                &schedule,
                x_t.clone(),
                (20, 0.0),
                &mut denoise,
                &mut generator,
            )
            .unwrap(),
            ancestral(&schedule, x_t.clone(), &mut denoise, &mut generator).unwrap(),
        ] {
            for (g, e) in values(&got).iter().zip(&expected) {
                assert!((g - e).abs() < 1e-9, "{g} vs {e}");
            }
        }
    }
}

#[test]
fn samplers_refuse_impossible_settings() {
    assert!(Sampler::Ddim { steps: 0, eta: 0.0 }.validate(1000).is_err());
    let message = Sampler::Ddim {
        steps: 1001,
        eta: 0.0,
    }
    .validate(1000)
    .unwrap_err();
    assert_eq!(
        message,
        "DDIM takes 1 to 1000 steps (the model's T), not 1001"
    );
    assert!(Sampler::Ddim {
        steps: 10,
        eta: -1.0
    }
    .validate(1000)
    .is_err());
    assert!(Sampler::Ddim {
        steps: 1000,
        eta: 1.0
    }
    .validate(1000)
    .is_ok());
    assert!(Sampler::Ddpm.validate(1).is_ok());
}

#[test]
fn the_unet_gradients_match_finite_differences() {
    // An f64 U-Net of 4, 8 and 8 channels (groups of 2); the training loss at fixed steps and
    // noise, as a function of the noisy input and of a few parameters. The zero-initialised
    // last convolutions are set to random values first, or every gradient before them is 0.
    let config = DdpmConfig {
        channels: [4, 8, 8],
        groups: 2,
        ..Default::default()
    };
    let unet = UNet::new(&config, Device::Cpu, DType::F64, 5).unwrap();
    for (i, (name, var)) in unet.store().parameters().into_iter().enumerate() {
        if name.ends_with("conv2.weight") || name.starts_with("conv_out") {
            let random = normal(var.dims(), 100 + i as u64).mul_scalar(0.3).unwrap();
            var.set(&random).unwrap();
        }
    }
    let t = [3usize, 640];
    let target = normal(&[2, 1, 28, 28], 6);
    let x = normal(&[2, 1, 28, 28], 7);
    GradCheck::default()
        .check(
            |inputs| {
                let predicted = unet.forward(&inputs[0], &t).map_err(tensor_error)?;
                mse_loss(&predicted, &target, Reduction::Sum).map_err(tensor_error)
            },
            &[x],
        )
        .unwrap();
    // Parameters: perturb a few elements of a few tensors by central differences.
    let loss = || -> f64 {
        let predicted = unet.forward(&normal(&[2, 1, 28, 28], 7), &t).unwrap();
        values(&mse_loss(&predicted, &target, Reduction::Sum).unwrap())[0]
    };
    let predicted = unet.forward(&normal(&[2, 1, 28, 28], 7), &t).unwrap();
    let grads = mse_loss(&predicted, &target, Reduction::Sum)
        .unwrap()
        .backward()
        .unwrap();
    let h = 1e-5;
    for wanted in [
        "time_mlp.0.weight",
        "down.0.norm1.weight",
        "down.1.skip.weight",
        "middle.time.bias",
        "up.0.conv1.weight",
        "out_norm.bias",
    ] {
        let (_, var) = unet
            .store()
            .parameters()
            .into_iter()
            .find(|(name, _)| name == wanted)
            .unwrap_or_else(|| panic!("no parameter {wanted}"));
        let analytic = values(grads.get(&var).expect("a gradient"));
        let original = values(&var);
        for index in [0, original.len() / 2, original.len() - 1] {
            let mut shifted = original.clone();
            shifted[index] += h;
            var.set(&Tensor::from_vec(shifted.clone(), var.dims(), Device::Cpu).unwrap())
                .unwrap();
            let up = loss();
            shifted[index] -= 2.0 * h;
            var.set(&Tensor::from_vec(shifted, var.dims(), Device::Cpu).unwrap())
                .unwrap();
            let down = loss();
            var.set(&Tensor::from_vec(original.clone(), var.dims(), Device::Cpu).unwrap())
                .unwrap();
            let numeric = (up - down) / (2.0 * h);
            let scale = numeric.abs().max(analytic[index].abs()).max(1e-3);
            assert!(
                (numeric - analytic[index]).abs() / scale < 1e-5,
                "{wanted}[{index}]: autograd {} vs finite differences {numeric}",
                analytic[index]
            );
        }
    }
}

fn tensor_error(error: kiln_nn::NnError) -> kiln_tensor::Error {
    match error {
        kiln_nn::NnError::Tensor(inner) => inner,
        other => kiln_tensor::Error::Invalid {
            op: "test",
            message: other.to_string(),
        },
    }
}
