//! The plain backward's shortcuts against the full walk. `backward_for` and
//! `backward_with_graph_for` give gradients for some leaves only: each listed leaf's gradient
//! must be the one a full `backward` gives, to the bit (the same rules run in the same order;
//! only work for other leaves is skipped), and the walk must not enter the parts of the graph
//! that lead to no listed leaf. An activation's gradient in a plain backward is one fused
//! kernel, in a recorded one (`backward_with_graph`) its derivative op and a product: the two
//! must agree to the bit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_tensor::{
    Activation, Conv2dOptions, ConvTranspose2dOptions, CustomBackward, DType, Device, Generator,
    Gradients, Result, Tensor, Var,
};

fn normal(shape: &[usize], generator: &mut Generator) -> Result<Tensor> {
    Tensor::randn(shape, 0.0, 0.5, DType::F64, Device::Cpu, generator)
}

/// A two-layer generator and discriminator in miniature: G's leaves make a fake image from
/// untracked noise (a fused linear layer, a transposed convolution), D's score it (a strided
/// convolution, a product, an elementwise scale). The loss is the generator's.
struct Gan {
    generator: Vec<Tensor>,
    discriminator: Vec<Tensor>,
    loss: Tensor,
}

fn gan() -> Result<Gan> {
    let mut rng = Generator::new(7);
    let z = normal(&[2, 3], &mut rng)?; // untracked
    let generator = vec![
        normal(&[3, 32], &mut rng)?.track()?,
        normal(&[32], &mut rng)?.track()?,
        normal(&[2, 1, 3, 3], &mut rng)?.track()?,
    ];
    let discriminator = vec![
        normal(&[3, 1, 3, 3], &mut rng)?.track()?,
        normal(&[12, 1], &mut rng)?.track()?,
        normal(&[1], &mut rng)?.track()?,
    ];
    let [g_linear, g_bias, g_conv] = &generator[..] else {
        unreachable!()
    };
    let [d_conv, d_linear, d_scale] = &discriminator[..] else {
        unreachable!()
    };
    let up = ConvTranspose2dOptions {
        stride: [2, 2],
        ..Default::default()
    };
    let fake = z
        .matmul_bias_act(g_linear, Some(g_bias), Activation::LeakyRelu(0.2))? // [2, 32]
        .reshape([2, 2, 4, 4])?
        .conv_transpose2d(g_conv, up)?; // [2, 1, 9, 9]
    let down = Conv2dOptions {
        stride: [2, 2],
        ..Default::default()
    };
    let logits = fake
        .conv2d(d_conv, down)? // [2, 3, 4, 4]
        .leaky_relu(0.2)?
        .reshape([2, 48])?
        .narrow(1, 0, 12)?
        .matmul(d_linear)? // [2, 1]
        .mul(d_scale)?;
    let loss = logits.bce_with_logits(&logits.ones_like()?)?.mean_all()?;
    Ok(Gan {
        generator,
        discriminator,
        loss,
    })
}

fn assert_same_bits(found: &Gradients, all: &Gradients, leaves: &[Tensor]) -> Result<()> {
    for leaf in leaves {
        let (found, all) = (found.get(leaf), all.get(leaf));
        let (found, all) = (found.expect("a listed leaf"), all.expect("a leaf"));
        assert_eq!(found.to_vec::<f64>()?, all.to_vec::<f64>()?);
    }
    Ok(())
}

#[test]
fn listed_leaves_get_the_gradients_backward_gives_and_no_others_get_any() -> Result<()> {
    let gan = gan()?;
    let all = gan.loss.backward()?;
    assert_eq!(all.len(), 6);
    for (listed, others) in [
        (&gan.generator, &gan.discriminator),
        (&gan.discriminator, &gan.generator),
    ] {
        let leaves: Vec<&Tensor> = listed.iter().collect();
        let found = gan.loss.backward_for(&leaves)?;
        assert_eq!(found.len(), listed.len());
        assert_same_bits(&found, &all, listed)?;
        assert!(others.iter().all(|other| found.get(other).is_none()));
    }
    // One leaf of each side, and a leaf the loss does not depend on (it gets nothing).
    let stranger = Tensor::ones([2], DType::F64, Device::Cpu)?.track()?;
    let listed = [gan.generator[2].clone(), gan.discriminator[0].clone()];
    let found = gan
        .loss
        .backward_for(&[&listed[0], &listed[1], &stranger])?;
    assert_eq!(found.len(), 2);
    assert_same_bits(&found, &all, &listed)?;
    assert!(gan.loss.backward_for(&[])?.is_empty());
    // A scalar leaf's own gradient is one, when it is listed.
    let scalar = Tensor::ones([1], DType::F64, Device::Cpu)?.track()?;
    assert!(scalar.backward_for(&[&stranger])?.is_empty());
    let own = scalar.backward_for(&[&scalar])?;
    assert_eq!(own.get(&scalar).unwrap().to_vec::<f64>()?, vec![1.0]);
    Ok(())
}

/// Passes the gradient through, counting how often the walk asked for it.
struct Counted(AtomicUsize);

impl CustomBackward for Counted {
    fn name(&self) -> &'static str {
        "counted"
    }

    fn backward(&self, grad: &Tensor) -> kiln_tensor::Result<Tensor> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(grad.clone())
    }
}

#[test]
fn the_walk_skips_what_leads_to_no_listed_leaf() -> Result<()> {
    // loss = sum(a · counted(b)): the counted node lies only on the way to b.
    let a = Tensor::from_slice(&[1.0f64, 2.0, 3.0], [3], Device::Cpu)?.track()?;
    let b = Tensor::from_slice(&[4.0f64, 5.0, 6.0], [3], Device::Cpu)?.track()?;
    let counter = Arc::new(Counted(AtomicUsize::new(0)));
    let counted = b.custom_unary(&b.detach(), counter.clone())?;
    let loss = a.mul(&counted)?.sum_all()?;
    let grads = loss.backward_for(&[&a])?;
    assert_eq!(grads.get(&a).unwrap().to_vec::<f64>()?, vec![4.0, 5.0, 6.0]);
    assert_eq!(counter.0.load(Ordering::Relaxed), 0);
    let grads = loss.backward_for(&[&b])?;
    assert_eq!(grads.get(&b).unwrap().to_vec::<f64>()?, vec![1.0, 2.0, 3.0]);
    assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    loss.backward()?;
    assert_eq!(counter.0.load(Ordering::Relaxed), 2);
    Ok(())
}

#[test]
fn a_penalty_on_the_input_gradient_alone_has_the_full_walks_gradients() -> Result<()> {
    // WGAN-GP's penalty: the critic's input gradient, differentiable, without its weight
    // gradients; the penalty's weight gradients must match those through the full walk.
    let gan = gan()?;
    let mut rng = Generator::new(8);
    let x = normal(&[2, 1, 9, 9], &mut rng)?.track()?;
    let down = Conv2dOptions {
        stride: [2, 2],
        ..Default::default()
    };
    let critic = &gan.discriminator;
    let score = x
        .conv2d(&critic[0], down)?
        .tanh()?
        .reshape([2, 48])?
        .narrow(1, 0, 12)?
        .matmul(&critic[1])?
        .sum_all()?;
    let penalty = |grads: Gradients| -> Result<Gradients> {
        let input_grad = grads.get(&x).expect("x is under the score");
        assert!(input_grad.is_tracked());
        input_grad.square()?.sum_all()?.backward()
    };
    let all = penalty(score.backward_with_graph()?)?;
    let only_input = score.backward_with_graph_for(&[&x])?;
    assert_eq!(only_input.len(), 1);
    let found = penalty(only_input)?;
    assert_same_bits(&found, &all, &critic[..2])?;
    Ok(())
}

#[test]
fn fused_activation_gradients_have_the_recorded_compositions_bits() -> Result<()> {
    let mut rng = Generator::new(9);
    let mut values: Vec<f64> = normal(&[6, 7], &mut rng)?.mul_scalar(3.0)?.to_vec()?;
    values[..4].copy_from_slice(&[0.0, -0.0, f64::NAN, 1e-30]);
    let weights = normal(&[7, 6], &mut rng)?;
    type Activate = fn(&Tensor) -> Result<Tensor>;
    let activations: [(&str, Activate); 4] = [
        ("relu", |x| x.relu()),
        ("leaky_relu", |x| x.leaky_relu(0.2)),
        ("leaky_relu slope 1.5", |x| x.leaky_relu(1.5)),
        ("silu", |x| x.silu()),
    ];
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let x = Var::new(&Tensor::from_slice(&values, [6, 7], Device::Cpu)?.to_dtype(dtype)?)?;
        let weights = weights.to_dtype(dtype)?;
        for (name, activate) in activations {
            // Through a transposed (strided) view of the leaf, times weights, summed.
            let loss = activate(&x.t()?)?.mul(&weights)?.sum_all()?;
            let fused = loss.backward()?.remove(&x).unwrap();
            let recorded = loss.backward_with_graph()?.remove(&x).unwrap();
            assert!(!fused.is_tracked());
            let bits = |t: &Tensor| -> Result<Vec<u64>> {
                let values = t.to_dtype(DType::F64)?.to_vec::<f64>()?;
                Ok(values.iter().map(|v| v.to_bits()).collect())
            };
            assert_eq!(bits(&fused)?, bits(&recorded)?, "{name}, {dtype:?}");
        }
    }
    Ok(())
}
