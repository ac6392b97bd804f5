//! The exact likelihood against the same quantity recomputed in plain f64 Rust from the
//! model's logits: Σ over pixels of the binary cross-entropy (Bernoulli) or of -log softmax at
//! the pixel's grey level (categorical); the evaluation's binarization from its documented
//! stream; and bits per dimension = nats / (784·ln 2).

use kiln_autoregressive::{PixelCnn, PixelCnnConfig, PixelCnnTrainer, PixelLikelihood, PIXELS};
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};

/// -log sigmoid(l) if x = 1, -log(1 - sigmoid(l)) if x = 0: max(l, 0) + ln(1 + e^-|l|) - l·x.
fn bernoulli_nll(logit: f64, x: f64) -> f64 {
    logit.max(0.0) + (-logit.abs()).exp().ln_1p() - logit * x
}

/// log Σ e^l, around the maximum.
fn log_sum_exp(logits: &[f64]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
}

fn config(likelihood: PixelLikelihood) -> PixelCnnConfig {
    let mut config = PixelCnnConfig::new();
    config.likelihood = likelihood;
    config.hidden_channels = 6;
    config.residual_blocks = 1;
    config
}

#[test]
fn the_bernoulli_nll_is_the_sum_of_the_pixels_cross_entropies() {
    let model = PixelCnn::new(
        &config(PixelLikelihood::Bernoulli),
        Device::Cpu,
        DType::F64,
        2,
    )
    .unwrap();
    let mut generator = Generator::new(4);
    let images: Vec<f64> = generator
        .uniform_f64(3 * PIXELS)
        .iter()
        .map(|u| (*u < 0.2) as u8 as f64)
        .collect();
    let batch = Tensor::from_slice(&images, [3, 1, 28, 28], Device::Cpu).unwrap();
    let (logits, nll) = no_grad(|| {
        let logits = model.logits(&batch).unwrap().to_vec::<f64>().unwrap();
        (
            logits,
            model
                .nll_per_image(&batch)
                .unwrap()
                .to_vec::<f64>()
                .unwrap(),
        )
    });
    for (image, got) in nll.iter().enumerate() {
        let range = image * PIXELS..(image + 1) * PIXELS;
        let expected: f64 = logits[range.clone()]
            .iter()
            .zip(&images[range])
            .map(|(l, x)| bernoulli_nll(*l, *x))
            .sum();
        assert!(
            (got - expected).abs() < 1e-10 * expected,
            "image {image}: {got} vs {expected}"
        );
    }
    assert_eq!(nll.len(), 3);
}

#[test]
fn the_categorical_nll_is_the_sum_of_minus_log_softmax_at_each_level() {
    let model = PixelCnn::new(
        &config(PixelLikelihood::Categorical),
        Device::Cpu,
        DType::F64,
        3,
    )
    .unwrap();
    let mut generator = Generator::new(5);
    // Levels k/255, with the extremes 0 and 255 present.
    let mut levels: Vec<usize> = generator
        .uniform_f64(2 * PIXELS)
        .iter()
        .map(|u| (u * 256.0) as usize)
        .collect();
    levels[0] = 0;
    levels[1] = 255;
    let images: Vec<f64> = levels.iter().map(|&k| k as f64 / 255.0).collect();
    let batch = Tensor::from_slice(&images, [2, 1, 28, 28], Device::Cpu).unwrap();
    let (logits, log_probabilities, nll) = no_grad(|| {
        let logits = model.logits(&batch).unwrap(); // [2, 256, 28, 28]
        (
            logits.to_vec::<f64>().unwrap(),
            logits.log_softmax(1).unwrap().to_vec::<f64>().unwrap(),
            model
                .nll_per_image(&batch)
                .unwrap()
                .to_vec::<f64>()
                .unwrap(),
        )
    });
    assert_eq!(logits.len(), 2 * 256 * PIXELS);
    for image in 0..2 {
        let mut expected = 0.0;
        for pixel in 0..PIXELS {
            // Logit k of this pixel is at [image, k, pixel]: stride 784 across levels.
            let at = |k: usize| (image * 256 + k) * PIXELS + pixel;
            let pixel_logits: Vec<f64> = (0..256).map(|k| logits[at(k)]).collect();
            let total: f64 = (0..256).map(|k| log_probabilities[at(k)].exp()).sum();
            assert!(
                (total - 1.0).abs() < 1e-12,
                "pixel {pixel}: probabilities sum to {total}"
            );
            let level = levels[image * PIXELS + pixel];
            expected += log_sum_exp(&pixel_logits) - pixel_logits[level];
        }
        assert!(
            (nll[image] - expected).abs() < 1e-10 * expected,
            "image {image}: {} vs {expected}",
            nll[image]
        );
        // A fresh network's softmax is nearly uniform: about 784·ln 256 = 4347 nats.
        assert!((expected - 4347.4).abs() < 100.0, "{expected}");
    }
}

#[test]
fn evaluate_binarizes_from_its_seed_and_reports_bits_per_dimension() {
    let trainer = PixelCnnTrainer::new(config(PixelLikelihood::Bernoulli), Device::Cpu).unwrap();
    let n = 4;
    let mut generator = Generator::new(6);
    let grey = generator.uniform_f32(n * PIXELS);
    let images = Tensor::from_slice(&grey, [n, 1, 28, 28], Device::Cpu).unwrap();
    let report = trainer.evaluate(&images, 21).unwrap();
    // The documented binarization: x = 1 where the stream's uniform (f32) is below the grey level.
    let uniforms = Generator::new(21).uniform_f32(n * PIXELS);
    let binary: Vec<f32> = uniforms
        .iter()
        .zip(&grey)
        .map(|(u, g)| (u < g) as u8 as f32)
        .collect();
    let logits = no_grad(|| {
        let batch = Tensor::from_slice(&binary, [n, 1, 28, 28], Device::Cpu).unwrap();
        trainer
            .model()
            .logits(&batch)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    });
    let expected = logits
        .iter()
        .zip(&binary)
        .map(|(l, x)| bernoulli_nll(*l as f64, *x as f64))
        .sum::<f64>()
        / n as f64;
    assert_eq!(report.images, n);
    assert!(
        (report.nll - expected).abs() < 1e-5 * expected,
        "{report:?} vs {expected}"
    );
    let bits = report.nll / (784.0 * std::f64::consts::LN_2);
    assert!((report.bits_per_dim - bits).abs() < 1e-15, "{report:?}");
    // The same seed, the same figure; another seed, another binarization.
    assert_eq!(trainer.evaluate(&images, 21).unwrap(), report);
    assert_ne!(trainer.evaluate(&images, 22).unwrap().nll, report.nll);
}
