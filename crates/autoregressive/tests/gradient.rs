//! Gradients against central finite differences (f64): a masked convolution's masked taps get
//! exactly zero gradient and stay zero under Adam, its kept taps and bias get the numerical
//! derivative; and the whole PixelCNN's NLL gradient for both likelihoods.

use kiln_autoregressive::{MaskType, MaskedConv2d, PixelCnn, PixelCnnConfig, PixelLikelihood};
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::{Module, ParamStore};
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor, Var};

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).unwrap()
}

/// (f(v + h) - f(v - h)) / 2h for element `i` of `var`, restoring it after.
fn central_difference(var: &Var, i: usize, f: &dyn Fn() -> f64) -> f64 {
    let h = 1e-6;
    let values = var.to_vec::<f64>().unwrap();
    let at = |delta: f64| {
        let mut moved = values.clone();
        moved[i] += delta;
        var.set(&tensor(&moved, var.dims())).unwrap();
        let value = no_grad(f);
        var.set(&tensor(&values, var.dims())).unwrap();
        value
    };
    (at(h) - at(-h)) / (2.0 * h)
}

#[test]
fn masked_taps_get_zero_gradient_and_kept_taps_the_numerical_one() {
    let mut generator = Generator::new(3);
    for (mask_type, kernel) in [(MaskType::A, 5), (MaskType::B, 3)] {
        let store = ParamStore::new(Device::Cpu, DType::F64, 4);
        let conv = MaskedConv2d::new(&store.root(), 2, 3, kernel, mask_type).unwrap();
        // Nonzero masked weights too: the forward's mask, not the stored zeros, must cut them off.
        let noise = Tensor::randn(
            conv.weight().shape(),
            0.0,
            0.5,
            DType::F64,
            Device::Cpu,
            &mut generator,
        )
        .unwrap();
        no_grad(|| conv.weight().set(&conv.weight().add(&noise).unwrap())).unwrap();
        let x = Tensor::randn(
            [2, 2, 6, 7],
            0.0,
            1.0,
            DType::F64,
            Device::Cpu,
            &mut generator,
        )
        .unwrap();
        // A fixed random projection to a scalar, so each output counts with its own weight.
        let projection = Tensor::randn(
            [2, 3, 6, 7],
            0.0,
            1.0,
            DType::F64,
            Device::Cpu,
            &mut generator,
        )
        .unwrap();
        let objective = || {
            conv.forward(&x)
                .unwrap()
                .mul(&projection)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let gradients = objective().backward().unwrap();
        let weight_gradient = gradients
            .get(conv.weight())
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        let mask = mask_type.values(kernel);
        let scalar = || objective().to_scalar::<f64>().unwrap();
        let mut kept = 0;
        for (i, &g) in weight_gradient.iter().enumerate() {
            if mask[i % (kernel * kernel)] == 0.0 {
                assert_eq!(g, 0.0, "{mask_type:?}: masked weight[{i}] got gradient {g}");
                // And the objective indeed does not depend on it.
                assert_eq!(central_difference(conv.weight(), i, &scalar), 0.0);
            } else if i % 5 == 0 {
                let numeric = central_difference(conv.weight(), i, &scalar);
                assert!(
                    (numeric - g).abs() <= 1e-6 + 1e-6 * numeric.abs(),
                    "{mask_type:?}: weight[{i}]: autograd {g}, finite differences {numeric}"
                );
                kept += 1;
            }
        }
        assert!(kept >= 5, "only {kept} kept taps checked");
        let bias = conv.bias().unwrap();
        let bias_gradient = gradients.get(bias).unwrap().to_vec::<f64>().unwrap();
        for (i, g) in bias_gradient.iter().enumerate() {
            let numeric = central_difference(bias, i, &scalar);
            assert!(
                (numeric - g).abs() <= 1e-6 + 1e-6 * numeric.abs(),
                "bias[{i}]: {g} vs {numeric}"
            );
        }

        // Adam leaves the masked entries where they were: zero gradient, zero update.
        let before = conv.weight().to_vec::<f64>().unwrap();
        let mut adam = Adam::new(store.parameters(), AdamConfig::default()).unwrap();
        for _ in 0..3 {
            adam.step(&objective().backward().unwrap()).unwrap();
        }
        let after = conv.weight().to_vec::<f64>().unwrap();
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            if mask[i % (kernel * kernel)] == 0.0 {
                assert_eq!(a, b, "{mask_type:?}: Adam moved masked weight[{i}]");
            } else {
                assert_ne!(a, b, "{mask_type:?}: Adam did not move kept weight[{i}]");
            }
        }
    }
}

#[test]
fn the_pixelcnn_nll_gradient_matches_finite_differences() {
    for likelihood in [PixelLikelihood::Bernoulli, PixelLikelihood::Categorical] {
        let mut config = PixelCnnConfig::new();
        config.likelihood = likelihood;
        config.hidden_channels = 4;
        config.residual_blocks = 1;
        let model = PixelCnn::new(&config, Device::Cpu, DType::F64, 7).unwrap();
        let mut generator = Generator::new(8);
        let mut values = generator.uniform_f64(2 * 784);
        for x in &mut values {
            *x = match likelihood {
                PixelLikelihood::Bernoulli => (*x < 0.3) as u8 as f64,
                PixelLikelihood::Categorical => (*x * 255.0).round() / 255.0,
            };
        }
        let images = tensor(&values, &[2, 1, 28, 28]);
        let objective = || model.nll_per_image(&images).unwrap().mean_all().unwrap();
        let gradients = objective().backward().unwrap();
        let scalar = || objective().to_scalar::<f64>().unwrap();
        let mut picker = Generator::new(99);
        for (name, var) in model.store().parameters() {
            let gradient = gradients
                .get(&var)
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .to_vec::<f64>()
                .unwrap();
            for u in picker.uniform_f64(6) {
                let i = ((u * gradient.len() as f64) as usize).min(gradient.len() - 1);
                let numeric = central_difference(&var, i, &scalar);
                assert!(
                    (numeric - gradient[i]).abs() <= 1e-5 + 1e-5 * numeric.abs(),
                    "{likelihood:?}: d/d {name}[{i}]: autograd {}, finite differences {numeric}",
                    gradient[i]
                );
            }
        }
    }
}
