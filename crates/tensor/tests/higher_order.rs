//! Higher-order gradients: `backward_with_graph` returns gradients that are themselves
//! differentiable. Expected values are closed forms or central finite differences
//! (kiln_tensor::gradcheck), never kiln's own output.

use kiln_tensor::gradcheck::GradCheck;
use kiln_tensor::{Activation, Device, Result, Tensor, Var};
use proptest::collection::vec;
use proptest::prelude::*;

/// `x` itself when autograd already follows it (the outer check's leaf), else a new leaf.
/// (`track` starts a new leaf, cutting any history, like `x.detach().requires_grad_()`.)
fn leaf(x: &Tensor) -> Result<Tensor> {
    if x.is_tracked() {
        Ok(x.clone())
    } else {
        x.track()
    }
}

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).unwrap()
}

/// The gradient of `y` with respect to `x`, kept differentiable.
fn grad_with_graph(y: &Tensor, x: &Tensor) -> Result<Tensor> {
    let grads = y.backward_with_graph()?;
    match grads.get(x) {
        Some(g) => Ok(g.clone()),
        None => x.zeros_like(),
    }
}

#[test]
fn second_derivative_of_sum_of_cubes_is_6x() -> Result<()> {
    // d/dx sum(x^3) = 3x^2, and d/dx sum(3x^2) = 6x: once through powf, once through mul.
    let values = [-1.5, -0.25, 0.0, 0.5, 2.0];
    let x = Var::new(&tensor(&values, &[5]))?;
    for cube in [x.powf(3.0)?, x.mul(&x)?.mul(&x)?] {
        let first = grad_with_graph(&cube.sum_all()?, &x)?;
        assert!(
            first.is_tracked(),
            "a gradient made with the graph is differentiable"
        );
        let expected_first: Vec<f64> = values.iter().map(|v| 3.0 * v * v).collect();
        assert_close(&first.to_vec::<f64>()?, &expected_first, 1e-12);

        let second = first.sum_all()?.backward()?;
        let second = second
            .get(&x)
            .expect("x is under the first gradient")
            .to_vec::<f64>()?;
        let expected_second: Vec<f64> = values.iter().map(|v| 6.0 * v).collect();
        assert_close(&second, &expected_second, 1e-12);
    }
    Ok(())
}

#[test]
fn third_derivative_of_sum_of_cubes_is_6() -> Result<()> {
    let x = Var::new(&tensor(&[-1.0, 0.5, 3.0], &[3]))?;
    let first = grad_with_graph(&x.powf(3.0)?.sum_all()?, &x)?;
    let second = grad_with_graph(&first.sum_all()?, &x)?;
    let third = second.sum_all()?.backward()?;
    assert_close(
        &third.get(&x).unwrap().to_vec::<f64>()?,
        &[6.0, 6.0, 6.0],
        1e-12,
    );
    Ok(())
}

#[test]
fn plain_backward_gives_untracked_gradients() -> Result<()> {
    let x = Var::new(&tensor(&[1.0, 2.0], &[2]))?;
    let grads = x.powf(3.0)?.sum_all()?.backward()?;
    assert!(!grads.get(&x).unwrap().is_tracked());
    Ok(())
}

/// The critic of the WGAN-GP test: a 2-layer MLP, `[batch, 3] -> [batch, 4] -> [batch, 1]`.
struct Critic<'a> {
    w1: &'a Tensor, // [3, 4]
    b1: &'a Tensor, // [4]
    w2: &'a Tensor, // [4, 1]
    b2: &'a Tensor, // [1]
}

/// The critic's weights, in `Critic` field order.
fn critic_params() -> [Tensor; 4] {
    [
        tensor(
            &[
                0.5, -0.3, 0.8, 0.1, -0.6, 0.4, 0.2, -0.9, 0.7, 0.3, -0.2, 0.6,
            ],
            &[3, 4],
        ),
        tensor(&[0.1, -0.2, 0.05, 0.3], &[4]),
        tensor(&[0.9, -0.4, 0.6, 0.8], &[4, 1]),
        tensor(&[0.2], &[1]),
    ]
}

impl<'a> Critic<'a> {
    fn from_params(params: &'a [Tensor]) -> Self {
        Critic {
            w1: &params[0],
            b1: &params[1],
            w2: &params[2],
            b2: &params[3],
        }
    }

    fn forward(&self, x: &Tensor, activation: fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let hidden = activation(&x.matmul(self.w1)?.add(self.b1)?)?; // [batch, 4]
        hidden.matmul(self.w2)?.add(self.b2) // [batch, 1]
    }

    /// WGAN-GP's penalty: mean over the batch of (||d critic(x) / dx||_2 - 1)^2, with the
    /// input gradient kept differentiable so the penalty can be trained through.
    fn gradient_penalty(
        &self,
        x: &Tensor,
        activation: fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let x = leaf(x)?;
        let scores = self.forward(&x, activation)?; // [batch, 1]
        let input_grad = grad_with_graph(&scores.sum_all()?, &x)?; // [batch, 3]
        let norms = input_grad.square()?.sum(&[1], false)?.sqrt()?; // [batch]
        norms.add_scalar(-1.0)?.square()?.mean_all()
    }
}

fn check_gradient_penalty(activation: fn(&Tensor) -> Result<Tensor>) {
    let x = tensor(
        &[
            0.3, -1.2, 0.8, 1.5, 0.1, -0.4, -0.9, 0.6, 1.1, 0.2, -0.3, -1.4,
        ],
        &[4, 3],
    );
    let params = critic_params();
    // d(penalty)/d(critic weights) by autograd-of-autograd vs finite differences.
    GradCheck::default()
        .check(
            |p| Critic::from_params(p).gradient_penalty(&x, activation),
            &params,
        )
        .unwrap();
}

#[test]
fn wgan_gp_penalty_gradient_with_tanh_critic() {
    // tanh has nonzero second derivatives, so this exercises the backward of backward rules.
    check_gradient_penalty(|h| h.tanh());
}

#[test]
fn wgan_gp_penalty_gradient_with_leaky_relu_critic() {
    // The WGAN-GP critic's own activation (no pre-activation sits near the kink at 0).
    check_gradient_penalty(|h| h.leaky_relu(0.2));
}

#[test]
fn penalty_is_differentiable_with_respect_to_the_input_too() {
    // Through both matmuls twice: d(penalty)/dx.
    let critic_params = critic_params();
    let critic = Critic::from_params(&critic_params);
    let x = tensor(&[0.3, -1.2, 0.8, 1.5, 0.1, -0.4], &[2, 3]);
    GradCheck::default()
        .check(|t| critic.gradient_penalty(&t[0], |h| h.tanh()), &[x])
        .unwrap();
}

/// A smooth function of one or two `[2, 3]` inputs whose second derivatives are checked.
type Function = fn(&[Tensor]) -> Result<Tensor>;

const SMOOTH: &[(&str, Function)] = &[
    ("exp", |t| t[0].exp()),
    ("log", |t| t[0].log()),
    ("sqrt", |t| t[0].sqrt()),
    ("powf", |t| t[0].powf(2.5)),
    ("sigmoid", |t| t[0].sigmoid()),
    ("tanh", |t| t[0].tanh()),
    ("softplus", |t| t[0].softplus()),
    ("silu", |t| t[0].silu()),
    ("mul", |t| t[0].mul(&t[1])),
    ("div", |t| t[0].div(&t[1])),
    ("matmul", |t| t[0].matmul(&t[1].t()?)),
    ("softmax", |t| t[0].softmax(1)),
    ("log_softmax", |t| t[0].log_softmax(0)),
    ("mean_square", |t| t[0].square()?.mean(&[1], true)),
    ("broadcast_mul", |t| t[0].mul(&t[1].sum(&[0], true)?)),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For every smooth op f, the gradient map x -> d/dx sum(f(x) * w) (made with the graph) is
    /// itself gradient-checked: autograd's second derivatives against finite differences of
    /// the first ones.
    #[test]
    fn second_derivatives_of_smooth_ops(
        a in vec(0.3..2.0f64, 6),
        b in vec(0.3..2.0f64, 6),
        w in vec(-1.0..1.0f64, 6),
    ) {
        for &(name, f) in SMOOTH {
        let inputs = [tensor(&a, &[2, 3]), tensor(&b, &[2, 3])];
        let gradient_map = |t: &[Tensor]| -> Result<Tensor> {
            let tracked: Vec<Tensor> = t.iter().map(leaf).collect::<Result<_>>()?;
            let out = f(&tracked)?;
            let weights = tensor(&w[..out.elem_count()], out.dims());
            let grads = out.mul(&weights)?.sum_all()?.backward_with_graph()?;
            // Both inputs' gradients, joined, so both second-derivative paths are checked.
            let parts: Vec<Tensor> = tracked
                .iter()
                .map(|x| grads.get(x).cloned().map_or_else(|| x.zeros_like(), Ok))
                .collect::<Result<_>>()?;
            Tensor::cat(&[&parts[0], &parts[1]], 0)
        };
        GradCheck::default()
            .check(gradient_map, &inputs)
            .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "element {i}: got {a}, expected {e}"
        );
    }
}

#[test]
fn wgan_gp_penalty_through_a_convolutional_critic() {
    // DCGAN-style critic: Conv(1→2, 3, stride 2, padding 1) → tanh → mean → score, on two
    // 5x5 images. The penalty differentiates through im2col/col2im and the GEMM twice.
    use kiln_tensor::Conv2dOptions;
    let values: Vec<f64> = (0..50)
        .map(|i| ((i * 37 % 23) as f64 / 11.0) - 1.0)
        .collect();
    let x = tensor(&values, &[2, 1, 5, 5]);
    let weight: Vec<f64> = (0..18)
        .map(|i| ((i * 7 % 13) as f64 / 13.0) - 0.5)
        .collect();
    let options = Conv2dOptions {
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
    };
    let penalty = |w: &Tensor| -> Result<Tensor> {
        let x = leaf(&x)?;
        let scores = x.conv2d(w, options)?.tanh()?.mean(&[1, 2, 3], false)?; // [2]
        let input_grad = grad_with_graph(&scores.sum_all()?, &x)?; // [2, 1, 5, 5]
        let norms = input_grad.square()?.sum(&[1, 2, 3], false)?.sqrt()?; // [2]
        norms.add_scalar(-1.0)?.square()?.mean_all()
    };
    GradCheck::default()
        .check(|p| penalty(&p[0]), &[tensor(&weight, &[2, 1, 3, 3])])
        .unwrap();
}

/// The WGAN-GP penalty of the same critic written with the fused `matmul_bias_act` (the hidden
/// layer with `activation`, the output layer with none), differentiated with respect to the
/// critic's weights, against finite differences: the fused op's backward rule must itself be
/// differentiable, curvature of tanh and sigmoid included.
fn check_fused_gradient_penalty(activation: Activation) {
    let x = tensor(
        &[
            0.3, -1.2, 0.8, 1.5, 0.1, -0.4, -0.9, 0.6, 1.1, 0.2, -0.3, -1.4,
        ],
        &[4, 3],
    );
    let penalty = |p: &[Tensor]| -> Result<Tensor> {
        let x = leaf(&x)?;
        let hidden = x.matmul_bias_act(&p[0], Some(&p[1]), activation)?; // [4, 4]
        let scores = hidden.matmul_bias_act(&p[2], Some(&p[3]), Activation::Identity)?; // [4, 1]
        let input_grad = grad_with_graph(&scores.sum_all()?, &x)?; // [4, 3]
        let norms = input_grad.square()?.sum(&[1], false)?.sqrt()?; // [4]
        norms.add_scalar(-1.0)?.square()?.mean_all()
    };
    GradCheck::default()
        .check(penalty, &critic_params())
        .unwrap_or_else(|e| panic!("{activation:?}: {e}"));
}

#[test]
fn fused_layers_have_second_derivatives() {
    for activation in [
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::LeakyRelu(0.2),
        Activation::Relu,
        Activation::Identity,
    ] {
        check_fused_gradient_penalty(activation);
    }
}

/// Second derivatives through pooling and upsampling: the gradient map
/// x -> d/dx sum(f(x)² · w) is gradient-checked against finite differences, which
/// differentiates each op's backward (max pooling's gathers at its indices; average pooling's
/// and upsampling's are their forwards, the adjoint pairs). Values are distinct and 0.05 apart,
/// so no maximum changes hands within a finite-difference step.
#[test]
fn second_derivatives_of_pooling_and_upsampling() {
    use kiln_tensor::Pool2dOptions;
    let shape = [2, 2, 5, 6];
    let values: Vec<f64> = (0..120)
        .map(|i| (i * 37 % 120) as f64 * 0.05 - 3.0)
        .collect();
    let x = tensor(&values, &shape);
    let pools = [
        Pool2dOptions {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
        Pool2dOptions {
            kernel: [2, 3],
            stride: [1, 2],
            padding: [1, 0],
        },
        Pool2dOptions::new([2, 2]),
    ];
    type Case = Box<dyn Fn(&Tensor) -> Result<Tensor>>;
    let mut cases: Vec<(String, Case)> = Vec::new();
    for options in pools {
        cases.push((
            format!("max_pool2d {options:?}"),
            Box::new(move |x| x.max_pool2d(options)),
        ));
        cases.push((
            format!("avg_pool2d {options:?}"),
            Box::new(move |x| x.avg_pool2d(options)),
        ));
    }
    for [h, w] in [[7, 4], [11, 13], [3, 3]] {
        cases.push((
            format!("upsample_nearest2d {h}x{w}"),
            Box::new(move |x| x.upsample_nearest2d(h, w)),
        ));
    }
    for (name, f) in &cases {
        let gradient_map = |t: &[Tensor]| -> Result<Tensor> {
            let x = leaf(&t[0])?;
            let y = f(&x)?;
            let n = y.elem_count();
            let weights: Vec<f64> = (0..n).map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0).collect();
            let weights = tensor(&weights, y.dims());
            grad_with_graph(&y.square()?.mul(&weights)?.sum_all()?, &x)
        };
        GradCheck::default()
            .check(gradient_map, std::slice::from_ref(&x))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The gradient penalty of a critic with a normalisation between its layers, so the input
/// gradient flows through the statistics: `norm(hidden [4, 4], weight, bias)` with weights
/// near 1 and biases from the critic's parameters when `affine`. Its second derivatives must
/// be exact (the recorded backward).
fn check_penalty_through(
    what: &str,
    affine: bool,
    norm: impl Fn(&Tensor, Option<&Tensor>, Option<&Tensor>) -> Result<Tensor>,
) {
    let x = tensor(
        &[
            0.3, -1.2, 0.8, 1.5, 0.1, -0.4, -0.9, 0.6, 1.1, 0.2, -0.3, -1.4,
        ],
        &[4, 3],
    );
    let penalty = |p: &[Tensor]| -> Result<Tensor> {
        let x = leaf(&x)?;
        let hidden = x.matmul(&p[0])?; // [4, 4]
        let weight = affine.then(|| p[1].add_scalar(1.0)).transpose()?; // [4]
        let bias = affine.then_some(&p[1]); // [4]
        let normed = norm(&hidden, weight.as_ref(), bias)?; // [4, 4]
        let scores = normed.tanh()?.matmul(&p[2])?; // [4, 1]
        let input_grad = grad_with_graph(&scores.sum_all()?, &x)?; // [4, 3]
        let norms = input_grad.square()?.sum(&[1], false)?.sqrt()?; // [4]
        norms.add_scalar(-1.0)?.square()?.mean_all()
    };
    let [w1, b1, w2, _] = critic_params();
    GradCheck::default()
        .check(penalty, &[w1, b1, w2])
        .unwrap_or_else(|e| panic!("{what}, affine {affine}: {e}"));
}

#[test]
fn gradient_penalty_through_batch_norm() {
    for affine in [true, false] {
        check_penalty_through("batch norm", affine, |h, w, b| {
            Ok(h.batch_norm_train(w, b, 1e-3)?.0)
        });
    }
}

#[test]
fn gradient_penalty_through_group_norm() {
    // The [4, 4] hidden layer as samples x channels, in one group of 4 channels or two of 2.
    for (groups, affine) in [(1, true), (2, true), (1, false)] {
        check_penalty_through(&format!("{groups} groups"), affine, |h, w, b| {
            h.group_norm(groups, w, b, 1e-3)
        });
    }
}

#[test]
fn gradient_penalty_through_bce_with_logits() {
    // d/dW of |d BCE(x·W, y)/dx|²: the logits' gradient sigmoid(x·W) - y differentiated again.
    let x = tensor(&[0.3, -1.2, 0.8, 1.5, 0.1, -0.4], &[3, 2]);
    let y = tensor(&[1.0, 0.0, 0.25], &[3, 1]);
    let penalty = |p: &[Tensor]| -> Result<Tensor> {
        let x = leaf(&x)?;
        let logits = x.matmul(&p[0])?; // [3, 1]
        let loss = logits.bce_with_logits(&y)?.mean_all()?;
        let input_grad = grad_with_graph(&loss, &x)?; // [3, 2]
        input_grad.square()?.sum_all()
    };
    let w = tensor(&[0.7, -1.3], &[2, 1]);
    GradCheck::default().check(penalty, &[w]).unwrap();
}
