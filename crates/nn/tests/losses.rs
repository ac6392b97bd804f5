//! Losses: values worked out from PyTorch's definitions (the closed form beside each case),
//! the three reductions, BCE's clamp at -100, BCE-with-logits at logits of ±100, shape errors,
//! and gradient checks of every loss in f64 (kiln_tensor::gradcheck against finite
//! differences).

use kiln_nn::loss::{
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, gaussian_kl, l1_loss,
    mse_loss, Reduction,
};
use kiln_tensor::gradcheck::GradCheck;
use kiln_tensor::{DType, Device, Generator, Tensor};

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * e.abs().max(1.0),
            "element {i}: got {a}, expected {e} (all: {actual:?} vs {expected:?})"
        );
    }
}

/// The loss under each reduction: (none, sum, mean).
fn reduced(loss: impl Fn(Reduction) -> kiln_nn::Result<Tensor>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let none = loss(Reduction::None).unwrap();
    let sum = loss(Reduction::Sum).unwrap();
    let mean = loss(Reduction::Mean).unwrap();
    assert_eq!(sum.rank(), 0);
    assert_eq!(mean.rank(), 0);
    assert_eq!(values(&loss(Reduction::default()).unwrap()), values(&mean));
    (values(&none), values(&sum), values(&mean))
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut generator = Generator::new(seed);
    Tensor::randn(shape, 0.0, 1.0, DType::F64, Device::Cpu, &mut generator).unwrap()
}

/// Uniform values in [low, high).
fn uniform(shape: &[usize], low: f64, high: f64, seed: u64) -> Tensor {
    let mut generator = Generator::new(seed);
    Tensor::rand(shape, DType::F64, Device::Cpu, &mut generator)
        .unwrap()
        .affine(high - low, low)
        .unwrap()
}

fn gradcheck(f: impl Fn(&[Tensor]) -> kiln_nn::Result<Tensor>, inputs: &[Tensor]) {
    GradCheck::default()
        .check(
            |t| {
                f(t).map_err(|e| match e {
                    kiln_nn::NnError::Tensor(inner) => inner,
                    other => panic!("{other}"),
                })
            },
            inputs,
        )
        .unwrap();
}

const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Sum, Reduction::Mean];

// ---- binary cross-entropy ----

#[test]
fn binary_cross_entropy_is_minus_log_likelihood() {
    // -(y·ln p + (1 - y)·ln(1 - p)): -ln 0.25, -ln(1 - 0.5), -ln 0.9, and for a soft target
    // y = 0.3 at p = 0.6: -(0.3·ln 0.6 + 0.7·ln 0.4).
    let p = tensor(&[0.25, 0.5, 0.9, 0.6], &[2, 2]);
    let y = tensor(&[1.0, 0.0, 1.0, 0.3], &[2, 2]);
    let expected = [
        -0.25f64.ln(),
        -0.5f64.ln(),
        -0.9f64.ln(),
        -(0.3 * 0.6f64.ln() + 0.7 * 0.4f64.ln()),
    ];
    let (none, sum, mean) = reduced(|r| binary_cross_entropy(&p, &y, r));
    assert_close(&none, &expected, 1e-15);
    assert_eq!(
        binary_cross_entropy(&p, &y, Reduction::None)
            .unwrap()
            .dims(),
        [2, 2]
    );
    let total: f64 = expected.iter().sum();
    assert_close(&sum, &[total], 1e-15);
    assert_close(&mean, &[total / 4.0], 1e-15);
}

#[test]
fn binary_cross_entropy_clamps_each_log_at_minus_100_with_finite_gradients() {
    // PyTorch: max(ln p, -100) and max(ln(1 - p), -100). p = 0 with y = 1 and p = 1 with
    // y = 0 give 100; p = 1e-50 (ln = -115.1) with y = 1 gives 100 too; p = 0 with y = 0 and
    // p = 1 with y = 1 give 0; e^-99 with y = 1 is not clamped: 99.
    let p = tensor(&[0.0, 1.0, 1e-50, 0.0, 1.0, (-99.0f64).exp()], &[6]);
    let y = tensor(&[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], &[6]);
    let tracked = p.track().unwrap();
    let losses = binary_cross_entropy(&tracked, &y, Reduction::None).unwrap();
    assert_close(
        &values(&losses),
        &[100.0, 100.0, 100.0, 0.0, 0.0, 99.0],
        1e-14,
    );
    let grads = losses.sum_all().unwrap().backward().unwrap();
    let grad = values(grads.get(&tracked).unwrap());
    // PyTorch's gradient, (p - y) / max(p·(1 - p), 1e-12): every p here has p·(1 - p) below
    // 1e-12, so the denominator is 1e-12 (for e^-99, whose log is not clamped, autograd's
    // -1/p would be -9.9e42).
    let pytorch: Vec<f64> = values(&p)
        .iter()
        .zip(values(&y))
        .map(|(p, y)| (p - y) / (p * (1.0 - p)).max(1e-12))
        .collect();
    assert_close(&grad, &pytorch, 1e-12);

    // The same at p = 0 and 1 in f32, where the clamp's threshold e^-100 is below the
    // smallest f32 and 1/e^-100 overflows.
    let p32 = Tensor::from_vec(vec![0.0f32, 1.0, 0.0, 1.0], [4], Device::Cpu)
        .unwrap()
        .track()
        .unwrap();
    let y32 = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], [4], Device::Cpu).unwrap();
    let losses = binary_cross_entropy(&p32, &y32, Reduction::None).unwrap();
    assert_eq!(values(&losses), [100.0, 100.0, 0.0, 0.0]);
    let grads = losses.sum_all().unwrap().backward().unwrap();
    let grad = values(grads.get(&p32).unwrap());
    assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
}

/// Issue 24, finding 6: `binary_cross_entropy(sigmoid(x), y)` in f32 over the whole range of
/// logits. Near x = -89 to -104 the sigmoid is a subnormal, and the autograd gradient
/// -y/p overflowed to -inf; with PyTorch's floor on p·(1 - p) every gradient is finite, and
/// where the sigmoid is not saturated it is σ(x) - y, as the fused loss's.
#[test]
fn binary_cross_entropy_of_a_sigmoid_has_finite_gradients_for_every_f32_logit() {
    let logits: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.1).collect(); // -200 to 200
    let n = logits.len();
    for target in [0.0f32, 0.3, 1.0] {
        let x = Tensor::from_vec(logits.clone(), [n], Device::Cpu)
            .unwrap()
            .track()
            .unwrap();
        let y = Tensor::full(target as f64, [n], DType::F32, Device::Cpu).unwrap();
        let losses = binary_cross_entropy(&x.sigmoid().unwrap(), &y, Reduction::None).unwrap();
        let loss = values(&losses);
        assert!(loss.iter().all(|l| l.is_finite()), "y = {target}: a loss");
        let grads = losses.sum_all().unwrap().backward().unwrap();
        let grad = values(grads.get(&x).unwrap());
        for (i, (&x, g)) in logits.iter().zip(&grad).enumerate() {
            assert!(
                g.is_finite(),
                "y = {target}, x = {x}: gradient {g} (index {i})"
            );
            if x.abs() <= 15.0 {
                let sigmoid = 1.0 / (1.0 + (-(x as f64)).exp());
                let expected = sigmoid - target as f64;
                assert!(
                    (g - expected).abs() < 1e-3,
                    "y = {target}, x = {x}: {g} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn binary_cross_entropy_with_logits_matches_the_definition_for_moderate_logits() {
    // -(y·ln σ(x) + (1 - y)·ln(1 - σ(x))), computed directly in f64 where it is accurate.
    let x = tensor(&[-3.0, -0.5, 0.0, 0.5, 2.0, 7.0], &[3, 2]);
    let y = tensor(&[0.0, 1.0, 0.5, 1.0, 0.0, 0.9], &[3, 2]);
    let expected: Vec<f64> = values(&x)
        .iter()
        .zip(values(&y))
        .map(|(&x, y)| {
            let s = 1.0 / (1.0 + (-x).exp());
            -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
        })
        .collect();
    let (none, sum, mean) = reduced(|r| binary_cross_entropy_with_logits(&x, &y, r));
    assert_close(&none, &expected, 1e-13);
    let total: f64 = expected.iter().sum();
    assert_close(&sum, &[total], 1e-13);
    assert_close(&mean, &[total / 6.0], 1e-13);
    // And it agrees with binary_cross_entropy of the probabilities.
    let via_probabilities =
        binary_cross_entropy(&x.sigmoid().unwrap(), &y, Reduction::None).unwrap();
    assert_close(&none, &values(&via_probabilities), 1e-12);
}

#[test]
fn binary_cross_entropy_with_logits_is_exact_at_logits_of_plus_minus_100() {
    // The loss is softplus(-x) for y = 1 and softplus(x) for y = 0, softplus(v) = ln(1 + e^v):
    // ln(1 + e^-100) = 3.72e-44 (ln_1p is exact there), and 100 + 3.72e-44, which is 100 in
    // floating point. The gradient is σ(x) - y: σ(100) - 1 = -3.72e-44, σ(-100) - 1 = -1,
    // σ(100) = 1, σ(-100) = 3.72e-44.
    let tiny = (-100.0f64).exp().ln_1p();
    let x = tensor(&[100.0, -100.0, 100.0, -100.0], &[4]);
    let y = tensor(&[1.0, 1.0, 0.0, 0.0], &[4]);
    let expected_loss = [tiny, 100.0, 100.0, tiny];
    let expected_grad = [-tiny, -1.0, 1.0, tiny];
    for dtype in [DType::F64, DType::F32] {
        let x = x.to_dtype(dtype).unwrap().track().unwrap();
        let y = y.to_dtype(dtype).unwrap();
        let losses = binary_cross_entropy_with_logits(&x, &y, Reduction::None).unwrap();
        let loss = values(&losses);
        assert!(loss.iter().all(|l| l.is_finite()), "{dtype}: {loss:?}");
        for (got, want) in loss.iter().zip(expected_loss) {
            assert!(
                (got - want).abs() <= 1e-30 + 1e-7 * want,
                "{dtype}: {loss:?}"
            );
        }
        let grads = losses.sum_all().unwrap().backward().unwrap();
        let grad = values(grads.get(&x).unwrap());
        for (got, want) in grad.iter().zip(expected_grad) {
            assert!((got - want).abs() <= 1e-30, "{dtype}: {grad:?}");
        }
    }
}

// ---- regression losses ----

#[test]
fn mse_and_l1_losses() {
    // Differences (1, -2, 0.5, 0): squares 1, 4, 0.25, 0 (sum 5.25); absolute values
    // 1, 2, 0.5, 0 (sum 3.5).
    let x = tensor(&[1.0, 0.0, 3.0, 4.0], &[4]);
    let y = tensor(&[0.0, 2.0, 2.5, 4.0], &[4]);
    let (none, sum, mean) = reduced(|r| mse_loss(&x, &y, r));
    assert_eq!(none, [1.0, 4.0, 0.25, 0.0]);
    assert_eq!((sum[0], mean[0]), (5.25, 5.25 / 4.0));
    let (none, sum, mean) = reduced(|r| l1_loss(&x, &y, r));
    assert_eq!(none, [1.0, 2.0, 0.5, 0.0]);
    assert_eq!((sum[0], mean[0]), (3.5, 3.5 / 4.0));

    // The L1 gradient is sign(x - y), 0 where they are equal (as PyTorch's).
    let tracked = x.track().unwrap();
    let grads = l1_loss(&tracked, &y, Reduction::Sum)
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(values(grads.get(&tracked).unwrap()), [1.0, -1.0, 1.0, 0.0]);
}

// ---- cross-entropy ----

#[test]
fn cross_entropy_is_minus_log_softmax_at_the_target() {
    // Row (0, 0, 0), target 1: ln 3. Row (1, 2, 3), target 2: ln(e + e² + e³) - 3.
    let logits = tensor(&[0.0, 0.0, 0.0, 1.0, 2.0, 3.0], &[2, 3]);
    let targets = Tensor::from_vec(vec![1u32, 2], [2], Device::Cpu).unwrap();
    let e = std::f64::consts::E;
    let expected = [3.0f64.ln(), (e + e * e + e * e * e).ln() - 3.0];
    let (none, sum, mean) = reduced(|r| cross_entropy(&logits, &targets, r));
    assert_close(&none, &expected, 1e-15);
    assert_close(&sum, &[expected[0] + expected[1]], 1e-15);
    assert_close(&mean, &[(expected[0] + expected[1]) / 2.0], 1e-15);

    // Large logits stay finite: row (1000, 0), target 1 gives 1000.
    let logits = tensor(&[1000.0, 0.0], &[1, 2]);
    let targets = Tensor::from_vec(vec![1u32], [1], Device::Cpu).unwrap();
    assert_eq!(
        values(&cross_entropy(&logits, &targets, Reduction::Sum).unwrap()),
        [1000.0]
    );
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let logits = tensor(&[0.0; 6], &[2, 3]);
    let message = cross_entropy(&logits, &tensor(&[0.0, 1.0], &[2]), Reduction::Mean)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("logits [2, 3] need u32 targets [2], got [2] f64"),
        "{message}"
    );
    let three = Tensor::from_vec(vec![0u32, 1, 2], [3], Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &three, Reduction::Mean).is_err());
    let past_the_end = Tensor::from_vec(vec![0u32, 3], [2], Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &past_the_end, Reduction::Mean).is_err());
    let message = cross_entropy(&tensor(&[0.0; 3], &[3]), &three, Reduction::Mean)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("expected logits [N, C], got [3]"),
        "{message}"
    );
}

// ---- Gaussian KL ----

#[test]
fn gaussian_kl_is_the_divergence_from_the_standard_normal() {
    // -0.5·(1 + logvar - mu² - e^logvar): 0 at (0, 0); 0.5 at mu = 1; at logvar = ln 2,
    // -0.5·(1 + ln 2 - 2) = 0.5·(1 - ln 2); at (mu, logvar) = (-2, -1), 0.5·(4 + e^-1 - 1 + 1).
    let mu = tensor(&[0.0, 1.0, 0.0, -2.0], &[2, 2]);
    let logvar = tensor(&[0.0, 0.0, 2.0f64.ln(), -1.0], &[2, 2]);
    let expected = [
        0.0,
        0.5,
        0.5 * (1.0 - 2.0f64.ln()),
        0.5 * (4.0 + (-1.0f64).exp()),
    ];
    let (none, sum, mean) = reduced(|r| gaussian_kl(&mu, &logvar, r));
    assert_close(&none, &expected, 1e-15);
    let total: f64 = expected.iter().sum();
    assert_close(&sum, &[total], 1e-15);
    assert_close(&mean, &[total / 4.0], 1e-15);
}

// ---- errors ----

#[test]
fn shape_mismatches_are_errors_naming_both_shapes() {
    let a = tensor(&[0.5; 6], &[2, 3]);
    let b = tensor(&[0.5; 6], &[3, 2]);
    let cases = [
        (
            binary_cross_entropy(&a, &b, Reduction::Mean),
            "binary_cross_entropy: probabilities [2, 3] and targets [3, 2] differ in shape",
        ),
        (
            binary_cross_entropy_with_logits(&a, &b, Reduction::Mean),
            "binary_cross_entropy_with_logits: logits [2, 3] and targets [3, 2] differ in shape",
        ),
        (
            mse_loss(&a, &b, Reduction::Sum),
            "mse_loss: input [2, 3] and target [3, 2] differ in shape",
        ),
        (
            l1_loss(&a, &b, Reduction::None),
            "l1_loss: input [2, 3] and target [3, 2] differ in shape",
        ),
        (
            gaussian_kl(&a, &b, Reduction::Sum),
            "gaussian_kl: mu [2, 3] and logvar [3, 2] differ in shape",
        ),
    ];
    for (result, message) in cases {
        assert_eq!(result.unwrap_err().to_string(), message);
    }
    // Broadcastable shapes are refused too, not broadcast.
    let row = tensor(&[0.5; 3], &[3]);
    assert!(mse_loss(&a, &row, Reduction::Mean).is_err());
}

// ---- gradient checks (f64, autograd against central differences) ----

#[test]
fn binary_cross_entropy_gradients_match_finite_differences() {
    let p = uniform(&[3, 4], 0.05, 0.95, 1);
    let y = uniform(&[3, 4], 0.0, 1.0, 2);
    for reduction in REDUCTIONS {
        gradcheck(
            |t| binary_cross_entropy(&t[0], &t[1], reduction),
            &[p.clone(), y.clone()],
        );
    }
}

#[test]
fn binary_cross_entropy_with_logits_gradients_match_finite_differences() {
    let x = random(&[3, 4], 3).mul_scalar(3.0).unwrap();
    let y = uniform(&[3, 4], 0.0, 1.0, 4);
    for reduction in REDUCTIONS {
        gradcheck(
            |t| binary_cross_entropy_with_logits(&t[0], &t[1], reduction),
            &[x.clone(), y.clone()],
        );
    }
}

#[test]
fn mse_and_l1_gradients_match_finite_differences() {
    let x = random(&[2, 5], 5);
    // y = x + d with |d| in [0.1, 1]: away from l1's kink at x = y.
    let offsets = uniform(&[2, 5], 0.1, 1.0, 6);
    let signs = random(&[2, 5], 7).sign().unwrap();
    let y = x.add(&offsets.mul(&signs).unwrap()).unwrap();
    for reduction in REDUCTIONS {
        gradcheck(
            |t| mse_loss(&t[0], &t[1], reduction),
            &[x.clone(), y.clone()],
        );
        gradcheck(
            |t| l1_loss(&t[0], &t[1], reduction),
            &[x.clone(), y.clone()],
        );
    }
}

#[test]
fn cross_entropy_gradients_match_finite_differences() {
    let logits = random(&[4, 5], 8).mul_scalar(2.0).unwrap();
    let targets = Tensor::from_vec(vec![0u32, 4, 2, 2], [4], Device::Cpu).unwrap();
    for reduction in REDUCTIONS {
        gradcheck(
            |t| cross_entropy(&t[0], &targets, reduction),
            std::slice::from_ref(&logits),
        );
    }
}

#[test]
fn gaussian_kl_gradients_match_finite_differences() {
    let mu = random(&[3, 4], 9);
    let logvar = random(&[3, 4], 10);
    for reduction in REDUCTIONS {
        gradcheck(
            |t| gaussian_kl(&t[0], &t[1], reduction),
            &[mu.clone(), logvar.clone()],
        );
    }
}
