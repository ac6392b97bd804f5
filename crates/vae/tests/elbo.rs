//! The ELBO's pieces against what they must equal: the KL term against hand-derived closed
//! forms and a Monte Carlo estimate of E_q[log q(z) - log p(z)]; the gradient of the
//! negative ELBO through the reparameterisation z = μ + σ·ε against central finite
//! differences, for both architectures and both likelihoods (f64 models); and the
//! log-mean-exp of the importance-weighted bound.

use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};
use kiln_vae::{
    gaussian_kl_per_image, log_mean_exp, Likelihood, VaeArchitecture, VaeConfig, VaeModel,
};

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).unwrap()
}

#[test]
fn the_kl_term_matches_hand_derived_closed_forms() {
    // KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² - 1 - ln σ²) per dim:
    // μ = 0, σ = 1 → 0; μ = 1, σ = 1 → ½; μ = 0, σ² = e → ½(e - 2); μ = -2, σ² = e⁻¹ → ½(4 + e⁻¹).
    let e = std::f64::consts::E;
    let mu = tensor(&[0.0, 1.0, 0.0, -2.0], &[4, 1]);
    let logvar = tensor(&[0.0, 0.0, 1.0, -1.0], &[4, 1]);
    let kl = gaussian_kl_per_image(&mu, &logvar)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let expected = [0.0, 0.5, 0.5 * (e - 2.0), 0.5 * (4.0 + 1.0 / e)];
    for (got, want) in kl.iter().zip(expected) {
        assert!((got - want).abs() < 1e-15, "{kl:?} vs {expected:?}");
    }
    // Per image, the dims add up: one row holding all four is their sum.
    let row = gaussian_kl_per_image(
        &mu.reshape([1, 4]).unwrap(),
        &logvar.reshape([1, 4]).unwrap(),
    )
    .unwrap()
    .to_vec::<f64>()
    .unwrap();
    assert!((row[0] - expected.iter().sum::<f64>()).abs() < 1e-14);
}

#[test]
fn the_kl_term_matches_a_monte_carlo_estimate() {
    // Two images with 3 latent dims each; 200k draws z ~ q, averaging log q(z) - log p(z).
    let mu = [0.3, -1.2, 0.0, 2.0, 0.5, -0.4];
    let logvar = [-0.5, 0.2, -2.0, 0.0, 0.7, -1.1];
    let closed = gaussian_kl_per_image(&tensor(&mu, &[2, 3]), &tensor(&logvar, &[2, 3]))
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let draws = 200_000;
    let mut generator = Generator::new(11);
    let epsilon = generator.normal_f64(draws * 6, 0.0, 1.0);
    for image in 0..2 {
        let mut samples = Vec::with_capacity(draws);
        for draw in 0..draws {
            let mut log_ratio = 0.0;
            for j in 0..3 {
                let (m, lv) = (mu[image * 3 + j], logvar[image * 3 + j]);
                let eps = epsilon[draw * 6 + image * 3 + j];
                let z = m + (0.5 * lv).exp() * eps;
                // log N(z; m, e^lv) - log N(z; 0, 1), the ½ln 2π terms cancelling.
                log_ratio += -0.5 * (eps * eps + lv) + 0.5 * z * z;
            }
            samples.push(log_ratio);
        }
        let mean = samples.iter().sum::<f64>() / draws as f64;
        let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (draws - 1) as f64;
        let standard_error = (variance / draws as f64).sqrt();
        assert!(
            (mean - closed[image]).abs() < 4.0 * standard_error,
            "image {image}: Monte Carlo {mean} ± {standard_error}, closed form {}",
            closed[image]
        );
    }
}

/// A small f64 model of `architecture` and `likelihood`, and a batch of 3 images in (0, 1)
/// with the reparameterisation noise for them.
fn small_model(
    architecture: VaeArchitecture,
    likelihood: Likelihood,
) -> (VaeModel, Tensor, Tensor) {
    let mut config = VaeConfig::new(architecture);
    config.latent_dim = 3;
    config.hidden_dim = 5;
    config.channels = [2, 3];
    config.likelihood = likelihood;
    let model = VaeModel::new(&config, Device::Cpu, DType::F64, 7).unwrap();
    let mut generator = Generator::new(8);
    let images = Tensor::rand([3, 1, 28, 28], DType::F64, Device::Cpu, &mut generator).unwrap();
    let epsilon = Tensor::randn([3, 3], 0.0, 1.0, DType::F64, Device::Cpu, &mut generator).unwrap();
    (model, images, epsilon)
}

/// The batch mean of the negative ELBO: the training objective at β = 1.
fn objective(model: &VaeModel, images: &Tensor, epsilon: &Tensor) -> Tensor {
    let terms = model.elbo_terms(images, epsilon).unwrap();
    terms
        .reconstruction
        .add(&terms.kl)
        .unwrap()
        .mean_all()
        .unwrap()
}

#[test]
fn the_elbo_gradient_through_the_reparameterisation_matches_finite_differences() {
    let h = 1e-6;
    for (architecture, likelihood) in [
        (VaeArchitecture::Vae, Likelihood::Bernoulli),
        (VaeArchitecture::Vae, Likelihood::Gaussian),
        (VaeArchitecture::ConvVae, Likelihood::Bernoulli),
        (VaeArchitecture::ConvVae, Likelihood::Gaussian),
    ] {
        let (model, images, epsilon) = small_model(architecture, likelihood);
        let gradients = objective(&model, &images, &epsilon).backward().unwrap();
        let mut picker = Generator::new(99);
        let mut checked = 0;
        for (name, var) in model.store().parameters() {
            let gradient = gradients
                .get(&var)
                .unwrap_or_else(|| panic!("{architecture}: no gradient for {name}"))
                .to_vec::<f64>()
                .unwrap();
            let values = var.to_vec::<f64>().unwrap();
            // Up to 12 elements of each tensor, chosen at random.
            let picks: Vec<usize> = picker
                .uniform_f64(12.min(values.len()))
                .iter()
                .map(|u| ((u * values.len() as f64) as usize).min(values.len() - 1))
                .collect();
            for i in picks {
                let at = |delta: f64| {
                    let mut moved = values.clone();
                    moved[i] += delta;
                    var.set(&tensor(&moved, var.dims())).unwrap();
                    let value = no_grad(|| objective(&model, &images, &epsilon))
                        .to_scalar::<f64>()
                        .unwrap();
                    var.set(&tensor(&values, var.dims())).unwrap();
                    value
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                let analytic = gradient[i];
                assert!(
                    (numeric - analytic).abs() <= 1e-5 + 1e-5 * numeric.abs(),
                    "{architecture} {likelihood:?}: d/d {name}[{i}]: autograd {analytic}, finite differences {numeric}"
                );
                checked += 1;
            }
        }
        // Every tensor took part, the encoder's through z = μ + σ·ε.
        let tensors = model.store().parameters().len();
        assert!(
            checked >= tensors,
            "{checked} elements of {tensors} tensors"
        );
    }
}

#[test]
fn log_mean_exp_is_exact_and_does_not_underflow() {
    assert!((log_mean_exp(&[0.0, 3f64.ln()]) - 2f64.ln()).abs() < 1e-15);
    // e^-1000 underflows f64; the answer does not.
    assert_eq!(log_mean_exp(&[-1000.0, -1000.0]), -1000.0);
    let spread = log_mean_exp(&[-1000.0, -1001.0]);
    let expected = -1000.0 + ((1.0 + (-1f64).exp()) / 2.0).ln();
    assert!((spread - expected).abs() < 1e-12, "{spread} vs {expected}");
    assert_eq!(log_mean_exp(&[]), f64::NEG_INFINITY);
    assert!(log_mean_exp(&[0.0, f64::NAN]).is_nan());
}
