//! The autoregressive property PixelCNN's likelihood rests on, checked by perturbing inputs:
//! the logits at a pixel never depend on that pixel or any later one in raster order, and do
//! depend on earlier ones, within [`PixelCnn::rows_seen`] rows; for both likelihoods, fresh
//! weights and weights perturbed everywhere (the masked taps included). And the masks
//! themselves, written out by hand.

use kiln_autoregressive::{MaskType, MaskedConv2d, PixelCnn, PixelCnnConfig, PixelLikelihood};
use kiln_nn::ParamStore;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};

const SIDE: usize = 28;

#[test]
fn masks_a_and_b_keep_exactly_the_taps_before_the_centre() {
    // 3×3: centre (1, 1). A keeps the row above and the left neighbour; B also the centre.
    #[rustfmt::skip]
    let a3 = [
        1.0, 1.0, 1.0,
        1.0, 0.0, 0.0,
        0.0, 0.0, 0.0,
    ];
    #[rustfmt::skip]
    let b3 = [
        1.0, 1.0, 1.0,
        1.0, 1.0, 0.0,
        0.0, 0.0, 0.0,
    ];
    // 7×7: centre (3, 3).
    #[rustfmt::skip]
    let a7 = [
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    #[rustfmt::skip]
    let b7 = [
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let store = ParamStore::new(Device::Cpu, DType::F64, 1);
    for (mask_type, kernel, expected) in [
        (MaskType::A, 3, &a3[..]),
        (MaskType::B, 3, &b3[..]),
        (MaskType::A, 7, &a7[..]),
        (MaskType::B, 7, &b7[..]),
    ] {
        assert_eq!(mask_type.values(kernel), expected, "{mask_type:?} {kernel}");
        let name = format!("{mask_type:?}{kernel}");
        let conv = MaskedConv2d::new(&store.root().sub(&name), 2, 3, kernel, mask_type).unwrap();
        assert_eq!(conv.mask().dims(), [1, 1, kernel, kernel]);
        assert_eq!(conv.mask().to_vec::<f64>().unwrap(), expected);
        // The stored weight starts masked: every out/in channel pair has zeros where the mask has.
        let weight = conv.weight().to_vec::<f64>().unwrap();
        for (i, w) in weight.iter().enumerate() {
            if expected[i % (kernel * kernel)] == 0.0 {
                assert_eq!(*w, 0.0, "{name}: weight[{i}]");
            } else {
                assert_ne!(*w, 0.0, "{name}: weight[{i}]");
            }
        }
    }
    assert!(MaskedConv2d::new(&store.root().sub("even"), 1, 1, 4, MaskType::A).is_err());
}

/// A small f64 model: 8 channels, 2 blocks (rows_seen 5).
fn small_model(likelihood: PixelLikelihood) -> PixelCnn {
    let mut config = PixelCnnConfig::new();
    config.likelihood = likelihood;
    config.hidden_channels = 8;
    config.residual_blocks = 2;
    PixelCnn::new(&config, Device::Cpu, DType::F64, 5).unwrap()
}

/// Adds N(0, 0.3²) noise to every element of every parameter, the masked weights included:
/// the masks must hold whatever the stored weights are.
fn perturb_weights(model: &PixelCnn, generator: &mut Generator) {
    for (_, var) in model.store().parameters() {
        let noise =
            Tensor::randn(var.shape(), 0.0, 0.3, DType::F64, Device::Cpu, generator).unwrap();
        no_grad(|| var.set(&var.add(&noise).unwrap())).unwrap();
    }
}

/// For each pixel (i, j) of `pixels`: the logits of the base image and of the base image with
/// (i, j) changed are equal bit for bit at every position ≤ (i, j) in raster order, differ at
/// some position after it (when there is one), and differ only in rows i ..= i + rows_seen,
/// with some difference in the last of those (when it is in the image).
fn check_causality(model: &PixelCnn, pixels: &[(usize, usize)], generator: &mut Generator) {
    let likelihood = model.likelihood();
    let mut base: Vec<f64> = generator.uniform_f64(SIDE * SIDE);
    if likelihood == PixelLikelihood::Bernoulli {
        base.iter_mut()
            .for_each(|x| *x = if *x < 0.5 { 0.0 } else { 1.0 });
    }
    let mut batch = base.clone();
    for &(i, j) in pixels {
        let mut changed = base.clone();
        let x = &mut changed[i * SIDE + j];
        *x = match likelihood {
            PixelLikelihood::Bernoulli => 1.0 - *x,
            PixelLikelihood::Categorical => (*x + 0.37) % 1.0,
        };
        batch.extend(changed);
    }
    let images = Tensor::from_vec(batch, [pixels.len() + 1, 1, SIDE, SIDE], Device::Cpu).unwrap();
    let logits = no_grad(|| model.logits(&images)).unwrap(); // [1 + P, C, 28, 28]
    let channels = logits.dims()[1];
    let values = logits.to_vec::<f64>().unwrap();
    let per_image = channels * SIDE * SIDE;
    let rows_seen = model.rows_seen();
    for (k, &(i, j)) in pixels.iter().enumerate() {
        let (reference, moved) = (
            &values[..per_image],
            &values[(k + 1) * per_image..][..per_image],
        );
        let mut changed_after = false;
        let mut changed_in_last_row = false;
        for c in 0..channels {
            for r in 0..SIDE {
                for s in 0..SIDE {
                    let at = (c * SIDE + r) * SIDE + s;
                    let differs = reference[at] != moved[at];
                    if (r, s) <= (i, j) {
                        assert!(
                            !differs,
                            "{likelihood:?}: changing pixel ({i}, {j}) changed logit {c} at ({r}, {s})"
                        );
                    } else if differs {
                        changed_after = true;
                        assert!(
                            r <= i + rows_seen,
                            "{likelihood:?}: pixel ({i}, {j}) reached row {r}, beyond the {rows_seen} rows it should"
                        );
                        changed_in_last_row |= r == i + rows_seen;
                    }
                }
            }
        }
        if (i, j) != (SIDE - 1, SIDE - 1) {
            assert!(
                changed_after,
                "{likelihood:?}: pixel ({i}, {j}) influenced nothing"
            );
        }
        if i + rows_seen < SIDE {
            assert!(
                changed_in_last_row,
                "{likelihood:?}: pixel ({i}, {j}) did not reach row {}",
                i + rows_seen
            );
        }
    }
}

#[test]
fn no_logit_depends_on_its_own_pixel_or_a_later_one() {
    // The first and last pixels, row ends and starts, and some in the middle.
    let pixels = [
        (0, 0),
        (0, 1),
        (0, 27),
        (1, 0),
        (5, 27),
        (13, 14),
        (20, 3),
        (22, 27),
        (27, 0),
        (27, 26),
        (27, 27),
    ];
    let mut generator = Generator::new(17);
    for likelihood in [PixelLikelihood::Bernoulli, PixelLikelihood::Categorical] {
        let model = small_model(likelihood);
        check_causality(&model, &pixels, &mut generator);
        perturb_weights(&model, &mut generator);
        check_causality(&model, &pixels, &mut generator);
    }
}
