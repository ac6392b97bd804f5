//! Tests of kiln-eval's metric mathematics (frechet, scores, similarity). Every expected value
//! is a closed form worked out in the test, an independent brute-force computation, or, for
//! SSIM and PSNR, scikit-image's output from the script quoted above those tests.

use kiln_eval::frechet::{
    frechet_distance, frechet_distance_of_features, Features, GaussianStats, MetricError,
};
use kiln_eval::scores::{
    class_coverage, class_coverage_of_probabilities, classifier_score, precision_recall,
    predicted_labels, DEFAULT_NEIGHBOURS,
};
use kiln_eval::similarity::{mse, psnr, ssim, ssim_batch};

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers (splitmix64; Box-Muller for normals), so tests need no rand crate.

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1): never 0, so ln() below is finite.
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn normals(&mut self, count: usize) -> Vec<f64> {
        (0..count).map(|_| self.normal()).collect()
    }
}

fn features(rows: usize, dim: usize, values: Vec<f64>) -> Features {
    Features::new(rows, dim, values).unwrap()
}

/// `rows` samples of N(mean, L·Lᵀ), with `factor` = L row-major [dim, dim].
fn gaussian_samples(rng: &mut Rng, rows: usize, mean: &[f64], factor: &[f64]) -> Features {
    let dim = mean.len();
    let mut values = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let z = rng.normals(dim);
        for i in 0..dim {
            let lz: f64 = (0..dim).map(|j| factor[i * dim + j] * z[j]).sum();
            values.push(mean[i] + lz);
        }
    }
    features(rows, dim, values)
}

fn diagonal(values: &[f64]) -> Vec<f64> {
    let dim = values.len();
    let mut m = vec![0.0; dim * dim];
    for (i, v) in values.iter().enumerate() {
        m[i * dim + i] = *v;
    }
    m
}

fn matmul(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut c = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            c[i * dim + j] = (0..dim).map(|p| a[i * dim + p] * b[p * dim + j]).sum();
        }
    }
    c
}

fn transpose(a: &[f64], dim: usize) -> Vec<f64> {
    let mut t = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            t[j * dim + i] = a[i * dim + j];
        }
    }
    t
}

/// An orthogonal [dim, dim] matrix: a product of Givens rotations in every plane (i, j).
fn rotation(dim: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let mut q = diagonal(&vec![1.0; dim]);
    for i in 0..dim {
        for j in i + 1..dim {
            let angle = 2.0 * std::f64::consts::PI * rng.uniform();
            let mut g = diagonal(&vec![1.0; dim]);
            g[i * dim + i] = angle.cos();
            g[j * dim + j] = angle.cos();
            g[i * dim + j] = -angle.sin();
            g[j * dim + i] = angle.sin();
            q = matmul(&g, &q, dim);
        }
    }
    q
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: got {actual}, expected {expected} ± {tolerance}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fréchet distance

/// For commuting (here diagonal) covariances, tr((Σa^½ Σb Σa^½)^½) = Σ √(a_i b_i), so
/// FD = |μa - μb|² + Σ (√a_i - √b_i)².
fn diagonal_closed_form(mean_a: &[f64], var_a: &[f64], mean_b: &[f64], var_b: &[f64]) -> f64 {
    squared_distance(mean_a, mean_b)
        + var_a
            .iter()
            .zip(var_b)
            .map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2))
            .sum::<f64>()
}

#[test]
fn frechet_of_given_diagonal_stats_matches_closed_form() {
    let (mean_a, var_a) = ([0.0, 1.0, -2.0, 0.5, 3.0], [1.0, 4.0, 0.25, 2.0, 9.0]);
    let (mean_b, var_b) = ([1.0, 1.0, 0.0, 0.5, -1.0], [2.0, 1.0, 0.25, 0.5, 16.0]);
    let a = GaussianStats::new(mean_a.to_vec(), diagonal(&var_a), 2).unwrap();
    let b = GaussianStats::new(mean_b.to_vec(), diagonal(&var_b), 2).unwrap();
    let expected = diagonal_closed_form(&mean_a, &var_a, &mean_b, &var_b);
    assert_close(
        frechet_distance(&a, &b).unwrap(),
        expected,
        1e-12 * expected,
        "FD",
    );
}

#[test]
fn frechet_handles_singular_covariances() {
    // Σa = diag(1, 0), Σb = diag(0, 1): the product Σa^½ Σb Σa^½ is 0, so FD = 1 + 1.
    let a = GaussianStats::new(vec![0.0, 0.0], diagonal(&[1.0, 0.0]), 2).unwrap();
    let b = GaussianStats::new(vec![0.0, 0.0], diagonal(&[0.0, 1.0]), 2).unwrap();
    assert_close(frechet_distance(&a, &b).unwrap(), 2.0, 1e-12, "FD");
}

/// A symmetric positive-definite 2x2 matrix [[p, r], [r, q]].
fn spd(p: f64, q: f64, r: f64) -> [f64; 4] {
    [p, r, r, q]
}

/// For 2x2 positive semi-definite M with eigenvalues λ1, λ2:
/// (tr M^½)² = λ1 + λ2 + 2√(λ1λ2) = tr M + 2√det M; and for M = Σa^½ Σb Σa^½,
/// tr M = tr(Σa Σb), det M = det Σa · det Σb. So the trace term needs no eigensolver.
fn trace_sqrt_2x2(a: [f64; 4], b: [f64; 4]) -> f64 {
    let trace_ab = a[0] * b[0] + a[1] * b[2] + a[2] * b[1] + a[3] * b[3];
    let det = |m: [f64; 4]| m[0] * m[3] - m[1] * m[2];
    (trace_ab + 2.0 * (det(a) * det(b)).sqrt()).sqrt()
}

#[test]
fn frechet_of_non_commuting_rotated_stats_matches_closed_form() {
    // Σa and Σb block-diagonal with three non-commuting 2x2 blocks, then both rotated by one
    // orthogonal Q (Σ -> QΣQᵀ, μ -> Qμ), which leaves FD unchanged, so every entry is non-zero
    // and the blocks' closed forms (trace_sqrt_2x2) still give the answer.
    let blocks_a = [spd(2.0, 1.0, 0.8), spd(1.0, 3.0, -0.5), spd(0.5, 0.5, 0.0)];
    let blocks_b = [spd(1.0, 1.0, 0.0), spd(2.0, 0.5, 0.9), spd(4.0, 1.0, 1.5)];
    let dim = 6;
    let block_diagonal = |blocks: &[[f64; 4]; 3]| {
        let mut m = vec![0.0; dim * dim];
        for (k, block) in blocks.iter().enumerate() {
            let o = 2 * k;
            m[o * dim + o] = block[0];
            m[o * dim + o + 1] = block[1];
            m[(o + 1) * dim + o] = block[2];
            m[(o + 1) * dim + o + 1] = block[3];
        }
        m
    };
    let (mean_a, mean_b) = (
        [1.0, 0.0, -1.0, 2.0, 0.5, 0.0],
        [0.0, 0.5, -1.0, 1.0, 0.5, 2.0],
    );
    let expected: f64 = squared_distance(&mean_a, &mean_b)
        + blocks_a
            .iter()
            .zip(&blocks_b)
            .map(|(&a, &b)| a[0] + a[3] + b[0] + b[3] - 2.0 * trace_sqrt_2x2(a, b))
            .sum::<f64>();
    let q = rotation(dim, 7);
    let rotate_matrix = |m: &[f64]| matmul(&matmul(&q, m, dim), &transpose(&q, dim), dim);
    let rotate_vector = |v: &[f64]| -> Vec<f64> {
        (0..dim)
            .map(|i| (0..dim).map(|j| q[i * dim + j] * v[j]).sum())
            .collect()
    };
    let a = GaussianStats::new(
        rotate_vector(&mean_a),
        rotate_matrix(&block_diagonal(&blocks_a)),
        2,
    )
    .unwrap();
    let b = GaussianStats::new(
        rotate_vector(&mean_b),
        rotate_matrix(&block_diagonal(&blocks_b)),
        2,
    )
    .unwrap();
    assert!(
        a.covariance.iter().all(|&v| v.abs() > 1e-6),
        "rotation left zeros"
    );
    assert_close(
        frechet_distance(&a, &b).unwrap(),
        expected,
        1e-9,
        "rotated FD",
    );
}

#[test]
fn covariance_is_the_unbiased_sample_covariance() {
    // Rows (1, 2), (3, 6), (5, 4): mean (3, 4); deviations (-2, -2), (0, 2), (2, 0);
    // Σ = [[8, 4], [4, 8]] / (3 - 1).
    let stats =
        GaussianStats::from_features(&features(3, 2, vec![1.0, 2.0, 3.0, 6.0, 5.0, 4.0])).unwrap();
    assert_eq!(stats.count, 3);
    assert_eq!(stats.dim, 2);
    for (got, want) in stats.mean.iter().zip([3.0, 4.0]) {
        assert_close(*got, want, 1e-14, "mean");
    }
    for (got, want) in stats.covariance.iter().zip([4.0, 2.0, 2.0, 4.0]) {
        assert_close(*got, want, 1e-13, "covariance");
    }
}

/// Sampling tolerance for the FD of 200,000-sample estimates, measured: over seeds 1..=20 the
/// error's root mean square was 0.009 (diagonal case) and 0.018 (rotated case), the largest 0.035.
/// That fits the mean term alone, whose spread is about 2|Δμ|·√(σ²/n) ≈ 0.013 for the rotated
/// case. 0.08 is 4.5 of the worse case's rms: a seed change will not trip it, while a trace term
/// computed as if the rotated covariances commuted is off by 0.26 to 0.74.
const SAMPLED_FD_TOLERANCE: f64 = 0.08;

#[test]
fn frechet_of_sampled_diagonal_gaussians_approaches_closed_form() {
    let mut rng = Rng(1);
    let rows = 200_000;
    let (mean_a, var_a) = ([0.0, 1.0, -1.0], [1.0, 4.0, 0.25]);
    let (mean_b, var_b) = ([1.0, 0.5, -1.0], [2.25, 1.0, 1.0]);
    let sqrt_diagonal = |v: &[f64]| diagonal(&v.iter().map(|x| x.sqrt()).collect::<Vec<_>>());
    let a = gaussian_samples(&mut rng, rows, &mean_a, &sqrt_diagonal(&var_a));
    let b = gaussian_samples(&mut rng, rows, &mean_b, &sqrt_diagonal(&var_b));
    let expected = diagonal_closed_form(&mean_a, &var_a, &mean_b, &var_b);
    assert_close(
        frechet_distance_of_features(&a, &b).unwrap(),
        expected,
        SAMPLED_FD_TOLERANCE,
        "sampled diagonal FD",
    );
}

#[test]
fn frechet_of_sampled_rotated_gaussians_approaches_closed_form() {
    // Σa = R(30°)·diag(4, 1)·R(30°)ᵀ, Σb = diag(1, 2.25): they do not commute.
    let mut rng = Rng(2);
    let rows = 200_000;
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let factor_a = [2.0 * c, -s, 2.0 * s, c]; // R·diag(2, 1), so L·Lᵀ = Σa
    let factor_b = [1.0, 0.0, 0.0, 1.5];
    let sigma_a = [
        4.0 * c * c + s * s,
        3.0 * c * s,
        3.0 * c * s,
        4.0 * s * s + c * c,
    ];
    let sigma_b = [1.0, 0.0, 0.0, 2.25];
    let (mean_a, mean_b) = ([0.5, -0.5], [0.0, 1.0]);
    let expected =
        squared_distance(&mean_a, &mean_b) + sigma_a[0] + sigma_a[3] + sigma_b[0] + sigma_b[3]
            - 2.0 * trace_sqrt_2x2(sigma_a, sigma_b);
    let a = gaussian_samples(&mut rng, rows, &mean_a, &factor_a);
    let b = gaussian_samples(&mut rng, rows, &mean_b, &factor_b);
    assert_close(
        frechet_distance_of_features(&a, &b).unwrap(),
        expected,
        SAMPLED_FD_TOLERANCE,
        "sampled rotated FD",
    );
}

#[test]
fn frechet_of_a_set_with_itself_is_zero_and_fd_is_symmetric() {
    let mut rng = Rng(3);
    let (rows, dim) = (500, 16);
    let x = features(rows, dim, rng.normals(rows * dim));
    let y = features(
        rows,
        dim,
        rng.normals(rows * dim)
            .iter()
            .map(|v| 1.5 * v + 0.2)
            .collect(),
    );
    let stats_x = GaussianStats::from_features(&x).unwrap();
    let stats_y = GaussianStats::from_features(&y).unwrap();
    // The traces are about 16; rounding in the eigensolvers is ~1e-15 of that.
    assert!(frechet_distance(&stats_x, &stats_x).unwrap() < 1e-9);
    let forward = frechet_distance(&stats_x, &stats_y).unwrap();
    let backward = frechet_distance(&stats_y, &stats_x).unwrap();
    assert!(
        forward > 1.0,
        "different sets should be far apart, got {forward}"
    );
    assert_close(
        forward,
        backward,
        1e-10 * forward,
        "FD(y, x) against FD(x, y)",
    );
}

#[test]
fn frechet_grows_as_a_set_is_shifted_by_exactly_the_squared_shift() {
    // Shifting by t·s leaves the covariance alone and moves the mean by t·s: FD = t²|s|².
    let mut rng = Rng(4);
    let (rows, dim) = (2000, 8);
    let x = features(rows, dim, rng.normals(rows * dim));
    let shift = rng.normals(dim);
    let shift_norm2: f64 = shift.iter().map(|v| v * v).sum();
    let mut previous = -1.0;
    for t in [0.0, 0.1, 0.5, 1.0, 2.0, 5.0] {
        let shifted: Vec<f64> = x
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| v + t * shift[i % dim])
            .collect();
        let fd = frechet_distance_of_features(&x, &features(rows, dim, shifted)).unwrap();
        assert_close(fd, t * t * shift_norm2, 1e-9 * (1.0 + t * t), "shifted FD");
        assert!(
            fd > previous,
            "FD did not grow at shift {t}: {fd} after {previous}"
        );
        previous = fd;
    }
}

#[test]
fn frechet_grows_as_a_set_is_noised_more() {
    let mut rng = Rng(5);
    let (rows, dim) = (2000, 8);
    let x = features(rows, dim, rng.normals(rows * dim));
    let noise = rng.normals(rows * dim);
    let mut previous = -1.0;
    for sigma in [0.0, 0.1, 0.3, 1.0, 3.0] {
        let noised: Vec<f64> = x
            .values
            .iter()
            .zip(&noise)
            .map(|(v, n)| v + sigma * n)
            .collect();
        let fd = frechet_distance_of_features(&x, &features(rows, dim, noised)).unwrap();
        assert!(
            fd > previous,
            "FD did not grow at noise {sigma}: {fd} after {previous}"
        );
        previous = fd;
    }
    assert!(
        previous > 10.0,
        "noise of σ = 3 should be far, got {previous}"
    );
}

#[test]
fn frechet_rejects_bad_input() {
    let two_rows = features(2, 2, vec![0.0, 1.0, 2.0, 3.0]);
    let three_dims = features(2, 3, vec![0.0; 6]);
    assert!(matches!(
        frechet_distance_of_features(&two_rows, &three_dims),
        Err(MetricError::SizeMismatch {
            left: 2,
            right: 3,
            ..
        })
    ));
    assert!(matches!(
        GaussianStats::from_features(&features(1, 2, vec![0.0, 1.0])),
        Err(MetricError::TooFewSamples {
            needed: 2,
            got: 1,
            ..
        })
    ));
    assert!(matches!(
        Features::new(2, 2, vec![0.0, f64::NAN, 1.0, 2.0]),
        Err(MetricError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        Features::from_f32(2, 2, &[0.0; 3]),
        Err(MetricError::Length {
            expected: 4,
            got: 3,
            ..
        })
    ));
    assert!(Features::new(1, 0, vec![]).is_err());
    // Hand-built features skip Features::new; the metrics check them again.
    let poisoned = Features {
        rows: 2,
        dim: 1,
        values: vec![1.0, f64::INFINITY],
    };
    assert!(matches!(
        GaussianStats::from_features(&poisoned),
        Err(MetricError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        GaussianStats::new(vec![0.0, 0.0], vec![1.0, 0.0, 0.0], 10),
        Err(MetricError::Length {
            expected: 4,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        GaussianStats::new(vec![0.0], vec![1.0], 1),
        Err(MetricError::TooFewSamples { .. })
    ));
    let a = GaussianStats::new(vec![0.0], vec![1.0], 5).unwrap();
    let mut b = a.clone();
    b.covariance[0] = f64::NAN;
    assert!(matches!(
        frechet_distance(&a, &b),
        Err(MetricError::NonFinite { .. })
    ));
    let c = GaussianStats::new(vec![0.0, 0.0], diagonal(&[1.0, 1.0]), 5).unwrap();
    assert!(matches!(
        frechet_distance(&a, &c),
        Err(MetricError::SizeMismatch {
            left: 1,
            right: 2,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Classifier score and class coverage

fn one_hot(labels: &[usize], num_classes: usize) -> Vec<f64> {
    let mut p = vec![0.0; labels.len() * num_classes];
    for (row, &label) in labels.iter().enumerate() {
        p[row * num_classes + label] = 1.0;
    }
    p
}

#[test]
fn classifier_score_is_num_classes_for_confident_even_predictions() {
    // Each row one-hot, each class 5 times: p(y) uniform, every KL = ln 10, score = 10.
    let labels: Vec<usize> = (0..50).map(|i| i % 10).collect();
    let score = classifier_score(&one_hot(&labels, 10), 10).unwrap();
    assert_close(score, 10.0, 1e-12, "classifier score");
}

#[test]
fn classifier_score_is_one_for_identical_predictions() {
    let row = [0.1, 0.2, 0.3, 0.4];
    let probabilities: Vec<f64> = row.iter().copied().cycle().take(4 * 30).collect();
    assert_close(
        classifier_score(&probabilities, 4).unwrap(),
        1.0,
        1e-14,
        "classifier score",
    );
    // Also when every row is the same one-hot (a collapsed, confident generator).
    assert_close(
        classifier_score(&one_hot(&[2; 30], 4), 4).unwrap(),
        1.0,
        1e-14,
        "collapsed classifier score",
    );
}

#[test]
fn classifier_score_of_a_hand_checked_pair() {
    // Rows (1, 0) and (0.5, 0.5): p(y) = (0.75, 0.25);
    // KL1 = ln(1/0.75) = ln(4/3); KL2 = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3);
    // score = exp((KL1 + KL2)/2) = (4/3)^0.75.
    let score = classifier_score(&[1.0, 0.0, 0.5, 0.5], 2).unwrap();
    assert_close(score, (4.0f64 / 3.0).powf(0.75), 1e-14, "classifier score");
}

#[test]
fn classifier_score_rejects_what_is_not_probabilities() {
    let logits = [2.0, -1.0, 0.5, 0.3, 0.1, 0.6];
    assert!(matches!(
        classifier_score(&logits, 3),
        Err(MetricError::Invalid(_))
    ));
    let negative = [1.2, -0.2];
    assert!(matches!(
        classifier_score(&negative, 2),
        Err(MetricError::Invalid(_))
    ));
    assert!(matches!(
        classifier_score(&[0.5, f64::NAN], 2),
        Err(MetricError::NonFinite { index: 1, .. })
    ));
    assert!(classifier_score(&[0.5, 0.5, 1.0], 2).is_err());
    assert!(classifier_score(&[], 2).is_err());
    assert!(classifier_score(&[1.0], 0).is_err());
}

#[test]
fn coverage_of_a_one_class_set() {
    let coverage = class_coverage(&[7; 100], 10).unwrap();
    let mut histogram = vec![0; 10];
    histogram[7] = 100;
    assert_eq!(coverage.histogram, histogram);
    assert_eq!(coverage.fractions[7], 1.0);
    assert_eq!(coverage.classes_at_least_5_percent, 1);
    // KL(δ_7 || uniform) = 1 · ln(1 / (1/10)) = ln 10.
    assert_close(coverage.kl_to_uniform, 10f64.ln(), 1e-14, "KL to uniform");
}

#[test]
fn coverage_of_an_even_set_and_the_5_percent_boundary() {
    let even: Vec<usize> = (0..100).map(|i| i % 10).collect();
    let coverage = class_coverage(&even, 10).unwrap();
    assert_eq!(coverage.histogram, vec![10; 10]);
    assert_eq!(coverage.classes_at_least_5_percent, 10);
    assert_close(coverage.kl_to_uniform, 0.0, 1e-15, "KL to uniform");

    // 1 of 20 is exactly 5% and counts; 1 of 21 is not.
    let mut labels = vec![1; 19];
    labels.push(0);
    let coverage = class_coverage(&labels, 3).unwrap();
    assert_eq!(coverage.histogram, vec![1, 19, 0]);
    assert_eq!(coverage.classes_at_least_5_percent, 2);
    // KL = 0.05 ln(0.05·3) + 0.95 ln(0.95·3); the empty class adds 0.
    let expected = 0.05 * (0.15f64).ln() + 0.95 * (2.85f64).ln();
    assert_close(coverage.kl_to_uniform, expected, 1e-14, "KL to uniform");
    labels.push(1);
    assert_eq!(
        class_coverage(&labels, 3)
            .unwrap()
            .classes_at_least_5_percent,
        1
    );
}

#[test]
fn coverage_of_probabilities_uses_the_most_probable_class() {
    let probabilities = [
        0.1, 0.7, 0.2, // 1
        0.6, 0.3, 0.1, // 0
        0.4, 0.4, 0.2, // tie: the first, 0
        0.0, 0.1, 0.9, // 2
    ];
    assert_eq!(
        predicted_labels(&probabilities, 3).unwrap(),
        vec![1, 0, 0, 2]
    );
    let coverage = class_coverage_of_probabilities(&probabilities, 3).unwrap();
    assert_eq!(coverage.histogram, vec![2, 1, 1]);
    assert_eq!(coverage.fractions, vec![0.5, 0.25, 0.25]);
}

#[test]
fn coverage_rejects_bad_labels() {
    assert!(matches!(
        class_coverage(&[0, 3, 1], 3),
        Err(MetricError::Invalid(_))
    ));
    assert!(class_coverage(&[], 3).is_err());
    assert!(class_coverage(&[0], 0).is_err());
}

// ---------------------------------------------------------------------------------------------
// Precision and recall

/// Kynkäänniemi et al.'s definition, brute force: exact distances, full sorts.
fn brute_force_precision_recall(real: &Features, fake: &Features, k: usize) -> (f64, f64) {
    let radius = |set: &Features, i: usize| {
        let mut d: Vec<f64> = (0..set.rows)
            .filter(|&j| j != i)
            .map(|j| squared_distance(set.row(i), set.row(j)))
            .collect();
        d.sort_by(f64::total_cmp);
        d[k - 1]
    };
    let real_radii: Vec<f64> = (0..real.rows).map(|i| radius(real, i)).collect();
    let fake_radii: Vec<f64> = (0..fake.rows).map(|i| radius(fake, i)).collect();
    let inside = |queries: &Features, refs: &Features, radii: &[f64]| {
        (0..queries.rows)
            .filter(|&q| {
                (0..refs.rows).any(|r| squared_distance(queries.row(q), refs.row(r)) <= radii[r])
            })
            .count() as f64
            / queries.rows as f64
    };
    (
        inside(fake, real, &real_radii),
        inside(real, fake, &fake_radii),
    )
}

#[test]
fn precision_recall_of_identical_sets_is_one() {
    let mut rng = Rng(6);
    let x = features(300, 8, rng.normals(300 * 8));
    let result = precision_recall(&x, &x.clone(), DEFAULT_NEIGHBOURS).unwrap();
    assert_eq!((result.precision, result.recall), (1.0, 1.0));
}

#[test]
fn precision_recall_fall_as_the_fake_set_moves_away() {
    let mut rng = Rng(7);
    let (rows, dim) = (400, 4);
    let real = features(rows, dim, rng.normals(rows * dim));
    let fake_base = rng.normals(rows * dim);
    let shifted = |shift: f64| {
        let fake = features(rows, dim, fake_base.iter().map(|v| v + shift).collect());
        precision_recall(&real, &fake, DEFAULT_NEIGHBOURS).unwrap()
    };
    let mut previous = (f64::INFINITY, f64::INFINITY);
    for shift in [0.0, 0.5, 1.0, 1.5] {
        let result = shifted(shift);
        assert!(
            result.precision < previous.0 && result.recall < previous.1,
            "shift {shift}: {result:?} after {previous:?}"
        );
        previous = (result.precision, result.recall);
    }
    // Two samples of one distribution overlap almost entirely.
    let unshifted = shifted(0.0);
    assert!(
        unshifted.precision > 0.9 && unshifted.recall > 0.9,
        "{unshifted:?}"
    );
    // 100 apart along every axis is far outside either manifold.
    let far = shifted(100.0);
    assert_eq!((far.precision, far.recall), (0.0, 0.0));
}

#[test]
fn precision_recall_of_a_hand_checked_line() {
    // 1-D, k = 1. Real {0, 1, 2, 3}: every radius 1. Fake {0.5, 10, 11, 12}: radii 9.5 (0.5's
    // nearest other is 10), 1, 1, 1. Precision: only 0.5 is within 1 of a real point: 1/4.
    // Recall: 0.5's ball of radius 9.5 holds all of 0..3: 4/4.
    let real = features(4, 1, vec![0.0, 1.0, 2.0, 3.0]);
    let fake = features(4, 1, vec![0.5, 10.0, 11.0, 12.0]);
    let result = precision_recall(&real, &fake, 1).unwrap();
    assert_eq!((result.precision, result.recall), (0.25, 1.0));
    // And the other way round the roles swap.
    let swapped = precision_recall(&fake, &real, 1).unwrap();
    assert_eq!((swapped.precision, swapped.recall), (1.0, 0.25));
}

#[test]
fn precision_recall_match_brute_force_across_blocks() {
    // More rows than one block (128) in both sets, unequal sizes, partial overlap.
    let mut rng = Rng(8);
    let dim = 16;
    let real = features(700, dim, rng.normals(700 * dim));
    let fake = features(
        500,
        dim,
        rng.normals(500 * dim)
            .iter()
            .map(|v| 0.8 * v + 0.3)
            .collect(),
    );
    for k in [1, 3, 5] {
        let result = precision_recall(&real, &fake, k).unwrap();
        let (precision, recall) = brute_force_precision_recall(&real, &fake, k);
        assert!(
            precision > 0.05 && precision < 0.999,
            "k = {k}: precision {precision}"
        );
        assert_eq!(
            (result.precision, result.recall),
            (precision, recall),
            "k = {k}"
        );
    }
}

#[test]
fn precision_recall_rejects_bad_input() {
    let a = features(4, 2, vec![0.0; 8]);
    let b = features(4, 3, vec![0.0; 12]);
    assert!(matches!(
        precision_recall(&a, &b, 1),
        Err(MetricError::SizeMismatch {
            left: 2,
            right: 3,
            ..
        })
    ));
    assert!(matches!(
        precision_recall(&a, &a, 0),
        Err(MetricError::Invalid(_))
    ));
    assert!(matches!(
        precision_recall(&a, &a, 4),
        Err(MetricError::TooFewSamples {
            needed: 5,
            got: 4,
            ..
        })
    ));
}

/// Not a default test (it takes seconds of both cores): `cargo test -p kiln-eval --release
/// --test metrics -- --ignored`. The ceiling is loose; it fails if the pairwise distances stop
/// being blocked GEMMs and take minutes.
#[test]
#[ignore]
fn precision_recall_of_10000_points_at_dim_128_takes_seconds() {
    let mut rng = Rng(9);
    let (rows, dim) = (10_000, 128);
    let real = features(rows, dim, rng.normals(rows * dim));
    let fake = features(rows, dim, rng.normals(rows * dim));
    let start = std::time::Instant::now();
    let result = precision_recall(&real, &fake, DEFAULT_NEIGHBOURS).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!("10000 x 10000 at dim 128: {result:?} in {seconds:.2} s");
    assert!(seconds < 60.0, "took {seconds} s");
}

// ---------------------------------------------------------------------------------------------
// MSE, PSNR, SSIM
//
// Reference values from scikit-image 0.26.0 (numpy float64, the same f32 images widened):
//
//     import numpy as np
//     from skimage.metrics import structural_similarity, peak_signal_noise_ratio
//     W, H = 28, 20
//     y, x = np.mgrid[0:H, 0:W].astype(np.float64)
//     a = (0.5 + 0.4 * np.sin(0.3 * x + 0.2 * y) * np.cos(0.15 * y)).astype(np.float32)
//     b = (0.5 + 0.4 * np.sin(0.3 * x + 0.2 * y) * np.cos(0.15 * y)
//          + 0.1 * np.cos(0.7 * x - 0.4 * y)).astype(np.float32)
//     ssim = lambda p, q, r: structural_similarity(p.astype(np.float64), q.astype(np.float64),
//         gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=r)
//     print(ssim(a, b, 1.0))                                       # 0.7432852339797456
//     print(peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64),
//                                   data_range=1.0))               # 23.00405260198785
//     a2, b2 = a * np.float32(2) - np.float32(1), b * np.float32(2) - np.float32(1)
//     print(ssim(a2, b2, 2.0))                                     # 0.5065619313470482

const WIDTH: usize = 28;
const HEIGHT: usize = 20;

/// The images of the script above, [HEIGHT, WIDTH] row-major.
fn reference_pair() -> (Vec<f32>, Vec<f32>) {
    let mut a = Vec::with_capacity(WIDTH * HEIGHT);
    let mut b = Vec::with_capacity(WIDTH * HEIGHT);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (x, y) = (x as f64, y as f64);
            let base = 0.5 + 0.4 * (0.3 * x + 0.2 * y).sin() * (0.15 * y).cos();
            a.push(base as f32);
            b.push((base + 0.1 * (0.7 * x - 0.4 * y).cos()) as f32);
        }
    }
    (a, b)
}

#[test]
fn ssim_and_psnr_match_scikit_image() {
    let (a, b) = reference_pair();
    assert_close(
        ssim(&a, &b, WIDTH, HEIGHT, 1.0).unwrap(),
        0.7432852339797456,
        1e-9,
        "SSIM",
    );
    assert_close(psnr(&a, &b, 1.0).unwrap(), 23.00405260198785, 1e-9, "PSNR");
    let to_signed = |v: &[f32]| v.iter().map(|&p| p * 2.0 - 1.0).collect::<Vec<f32>>();
    assert_close(
        ssim(&to_signed(&a), &to_signed(&b), WIDTH, HEIGHT, 2.0).unwrap(),
        0.5065619313470482,
        1e-9,
        "SSIM on [-1, 1]",
    );
}

#[test]
fn mse_and_psnr_closed_forms() {
    // Every pixel 0.25 apart (exact in binary): MSE = 1/16, PSNR = 10·log10(1 / (1/16)).
    let a = vec![0.5f32; 64];
    let b: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { 0.75 } else { 0.25 })
        .collect();
    assert_eq!(mse(&a, &b).unwrap(), 0.0625);
    assert_close(
        psnr(&a, &b, 1.0).unwrap(),
        10.0 * 16f64.log10(),
        1e-12,
        "PSNR",
    );
    // On a 0..255 scale the same images have the same PSNR.
    let scale = |v: &[f32]| v.iter().map(|&p| p * 255.0).collect::<Vec<f32>>();
    assert_close(
        psnr(&scale(&a), &scale(&b), 255.0).unwrap(),
        10.0 * 16f64.log10(),
        1e-12,
        "PSNR at 255",
    );
    assert_eq!(psnr(&a, &a, 1.0).unwrap(), f64::INFINITY);
    assert_eq!(mse(&a, &a).unwrap(), 0.0);
}

#[test]
fn ssim_of_identical_images_is_one_and_falls_with_noise() {
    let (a, _) = reference_pair();
    assert_close(
        ssim(&a, &a, WIDTH, HEIGHT, 1.0).unwrap(),
        1.0,
        1e-12,
        "SSIM(a, a)",
    );
    let mut rng = Rng(10);
    let noise = rng.normals(a.len());
    let mut previous = 1.0;
    for sigma in [0.02, 0.05, 0.1, 0.3] {
        let noisy: Vec<f32> = a
            .iter()
            .zip(&noise)
            .map(|(&p, &n)| p + (sigma * n) as f32)
            .collect();
        let value = ssim(&a, &noisy, WIDTH, HEIGHT, 1.0).unwrap();
        assert!(
            value < previous,
            "noise {sigma}: SSIM {value} after {previous}"
        );
        previous = value;
    }
    assert!(
        previous < 0.5,
        "noise of 0.3 should leave little, got {previous}"
    );
}

/// Constant images c1 and c2 have zero local variances and covariance, so every window gives
/// (2·c1·c2 + C1)·C2 / ((c1² + c2² + C1)·C2) = (2·c1·c2 + C1) / (c1² + c2² + C1).
fn constant_ssim(c1: f32, c2: f32, data_range: f64) -> f64 {
    let (c1, c2) = (c1 as f64, c2 as f64);
    let stabiliser = (0.01 * data_range).powi(2);
    (2.0 * c1 * c2 + stabiliser) / (c1 * c1 + c2 * c2 + stabiliser)
}

#[test]
fn ssim_of_constant_images_has_a_closed_form() {
    for (c1, c2, range) in [
        (0.2f32, 0.7f32, 1.0),
        (0.0, 0.1, 1.0),
        (100.0, 180.0, 255.0),
    ] {
        let a = vec![c1; 16 * 12];
        let b = vec![c2; 16 * 12];
        assert_close(
            ssim(&a, &b, 16, 12, range).unwrap(),
            constant_ssim(c1, c2, range),
            1e-12,
            "constant SSIM",
        );
    }
}

#[test]
fn ssim_batch_is_the_mean_over_pairs() {
    let (a, b) = reference_pair();
    let constant_a = vec![0.2f32; WIDTH * HEIGHT];
    let constant_b = vec![0.7f32; WIDTH * HEIGHT];
    let first: Vec<f32> = [a.clone(), a.clone(), constant_a].concat();
    let second: Vec<f32> = [a, b, constant_b].concat();
    let expected = (1.0 + 0.7432852339797456 + constant_ssim(0.2, 0.7, 1.0)) / 3.0;
    assert_close(
        ssim_batch(&first, &second, 3, WIDTH, HEIGHT, 1.0).unwrap(),
        expected,
        1e-9,
        "SSIM batch",
    );
}

#[test]
fn similarity_rejects_bad_input() {
    let a = vec![0.5f32; 12 * 12];
    let b = vec![0.5f32; 12 * 11];
    assert!(matches!(
        mse(&a, &b),
        Err(MetricError::SizeMismatch {
            left: 144,
            right: 132,
            ..
        })
    ));
    assert!(matches!(
        psnr(&a, &b, 1.0),
        Err(MetricError::SizeMismatch { .. })
    ));
    assert!(matches!(psnr(&a, &a, 0.0), Err(MetricError::Invalid(_))));
    assert!(matches!(
        mse(&[], &[]),
        Err(MetricError::TooFewSamples { .. })
    ));
    assert!(matches!(
        ssim(&a, &b, 12, 12, 1.0),
        Err(MetricError::Length {
            expected: 144,
            got: 132,
            ..
        })
    ));
    // Smaller than the 11x11 window.
    let small = vec![0.5f32; 10 * 10];
    assert!(matches!(
        ssim(&small, &small, 10, 10, 1.0),
        Err(MetricError::Invalid(_))
    ));
    let mut poisoned = a.clone();
    poisoned[3] = f32::NAN;
    assert!(matches!(
        ssim(&a, &poisoned, 12, 12, 1.0),
        Err(MetricError::NonFinite { index: 3, .. })
    ));
    assert!(matches!(
        ssim_batch(&a, &a, 2, 12, 12, 1.0),
        Err(MetricError::Length {
            expected: 288,
            got: 144,
            ..
        })
    ));
    assert!(ssim_batch(&[], &[], 0, 12, 12, 1.0).is_err());
    assert!(ssim(&a, &a, 12, 12, f64::NAN).is_err());
}
