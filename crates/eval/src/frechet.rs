//! The Fréchet distance between two sets of feature vectors, each summarised by a Gaussian (mean
//! and covariance), in f64: the FID formula of Heusel et al. 2017 (pytorch-fid's conventions),
//! applied to whatever features the caller supplies. Also home of [`Features`], the plain
//! row-major matrix every metric in this crate takes, and of [`MetricError`], their one error
//! type. It does not compute features (see `classifier`) or save statistics to disk.

use nalgebra::{DMatrix, SymmetricEigen};

/// What was wrong with a metric's input. Every metric in this crate returns it instead of
/// panicking; the message names the argument and the numbers involved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// A buffer's length does not match the shape it came with.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    /// Two inputs that must agree in size do not.
    #[error("{what}: sizes differ, {left} vs {right}")]
    SizeMismatch {
        what: String,
        left: usize,
        right: usize,
    },
    /// Too few samples (rows, images) for the statistic to be defined.
    #[error("{what}: needs at least {needed} samples, got {got}")]
    TooFewSamples {
        what: String,
        needed: usize,
        got: usize,
    },
    /// A NaN or infinity in the input.
    #[error("{what}: value {value} at index {index} is not finite")]
    NonFinite {
        what: String,
        index: usize,
        value: f64,
    },
    /// Any other argument outside its domain (zero classes, k = 0, a negative probability...).
    #[error("{0}")]
    Invalid(String),
    /// The symmetric eigensolver gave up (not seen for finite input; kept as a value, not a panic).
    #[error("{what}: symmetric eigendecomposition of a {dim}x{dim} matrix did not converge")]
    NoConvergence { what: String, dim: usize },
}

/// Returns the first non-finite value of `values` as an error naming `what`.
pub(crate) fn check_finite<T: Copy + Into<f64>>(
    what: &str,
    values: &[T],
) -> Result<(), MetricError> {
    match values.iter().position(|&v| !v.into().is_finite()) {
        None => Ok(()),
        Some(index) => Err(MetricError::NonFinite {
            what: what.to_string(),
            index,
            value: values[index].into(),
        }),
    }
}

/// A set of `rows` feature vectors of length `dim`, row-major in `values` (`rows * dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub rows: usize,
    pub dim: usize,
    pub values: Vec<f64>,
}

impl Features {
    /// Checks that `values` holds `rows * dim` finite numbers and `dim > 0`.
    pub fn new(rows: usize, dim: usize, values: Vec<f64>) -> Result<Self, MetricError> {
        let features = Features { rows, dim, values };
        features.validate("features")?;
        Ok(features)
    }

    /// [`Features::new`] from f32 values (what a network outputs), widened to f64.
    pub fn from_f32(rows: usize, dim: usize, values: &[f32]) -> Result<Self, MetricError> {
        Self::new(rows, dim, values.iter().map(|&v| v as f64).collect())
    }

    /// Row `index` (`dim` values). Panics if `index >= rows`, like slice indexing.
    pub fn row(&self, index: usize) -> &[f64] {
        &self.values[index * self.dim..(index + 1) * self.dim]
    }

    /// The checks of [`Features::new`], for values built by hand; `what` names them in errors.
    pub fn validate(&self, what: &str) -> Result<(), MetricError> {
        if self.dim == 0 {
            return Err(MetricError::Invalid(format!(
                "{what}: feature dimension must be at least 1, got 0"
            )));
        }
        let expected = self.rows.checked_mul(self.dim).ok_or_else(|| {
            MetricError::Invalid(format!(
                "{what}: {} rows of {} values overflow usize",
                self.rows, self.dim
            ))
        })?;
        if self.values.len() != expected {
            return Err(MetricError::Length {
                what: format!("{what} ({} rows x {} dims)", self.rows, self.dim),
                expected,
                got: self.values.len(),
            });
        }
        check_finite(what, &self.values)
    }
}

/// A Gaussian fitted to a set of features: the mean and the unbiased (n - 1) covariance, as
/// `numpy.cov(features, rowvar=False)` and pytorch-fid compute them.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// `dim` values.
    pub mean: Vec<f64>,
    /// `dim x dim`, row-major, symmetric.
    pub covariance: Vec<f64>,
    pub dim: usize,
    /// How many feature vectors the statistics were estimated from; at least 2. For a known
    /// distribution rather than a sample, any count of at least 2 will do: it is not used in the
    /// distance, only checked.
    pub count: usize,
}

impl GaussianStats {
    /// Mean and unbiased covariance of `features`, in f64 (two passes: mean, then the centred
    /// product, so large means do not cost precision). Needs at least 2 rows.
    pub fn from_features(features: &Features) -> Result<Self, MetricError> {
        features.validate("features")?;
        let (rows, dim) = (features.rows, features.dim);
        if rows < 2 {
            return Err(MetricError::TooFewSamples {
                what: "covariance of features".to_string(),
                needed: 2,
                got: rows,
            });
        }
        let mut mean = vec![0.0; dim];
        for row in features.values.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        for m in &mut mean {
            *m /= rows as f64;
        }
        // centred: [dim, rows] (the row-major [rows, dim] buffer read column-major), each
        // column a centred feature vector; covariance = centred·centredᵀ / (rows - 1): [dim, dim].
        // `*` goes to matrixmultiply's GEMM; nalgebra's `tr_mul` would take dot products one by one.
        let mut centred = DMatrix::from_column_slice(dim, rows, &features.values);
        for mut column in centred.column_iter_mut() {
            for (v, m) in column.iter_mut().zip(&mean) {
                *v -= m;
            }
        }
        let mut covariance = &centred * centred.transpose();
        covariance /= (rows - 1) as f64;
        // The GEMM need not round (i, j) and (j, i) alike; the eigensolvers want exact symmetry.
        let covariance = symmetrised(&covariance);
        Ok(GaussianStats {
            mean,
            // Symmetric, so the column-major storage is also the row-major one.
            covariance: covariance.as_slice().to_vec(),
            dim,
            count: rows,
        })
    }

    /// Stats given directly (a known distribution, or stats computed elsewhere), checked as
    /// [`frechet_distance`] checks them.
    pub fn new(mean: Vec<f64>, covariance: Vec<f64>, count: usize) -> Result<Self, MetricError> {
        let stats = GaussianStats {
            dim: mean.len(),
            mean,
            covariance,
            count,
        };
        stats.validate("stats")?;
        Ok(stats)
    }

    fn validate(&self, what: &str) -> Result<(), MetricError> {
        if self.dim == 0 {
            return Err(MetricError::Invalid(format!(
                "{what}: dimension must be at least 1, got 0"
            )));
        }
        if self.mean.len() != self.dim {
            return Err(MetricError::Length {
                what: format!("{what} mean (dim {})", self.dim),
                expected: self.dim,
                got: self.mean.len(),
            });
        }
        let expected = self.dim * self.dim;
        if self.covariance.len() != expected {
            return Err(MetricError::Length {
                what: format!("{what} covariance ({0}x{0})", self.dim),
                expected,
                got: self.covariance.len(),
            });
        }
        if self.count < 2 {
            return Err(MetricError::TooFewSamples {
                what: format!("{what} count"),
                needed: 2,
                got: self.count,
            });
        }
        check_finite(&format!("{what} mean"), &self.mean)?;
        check_finite(&format!("{what} covariance"), &self.covariance)
    }

    fn covariance_matrix(&self) -> DMatrix<f64> {
        symmetrised(&DMatrix::from_row_slice(
            self.dim,
            self.dim,
            &self.covariance,
        ))
    }
}

/// (m + mᵀ) / 2.
fn symmetrised(m: &DMatrix<f64>) -> DMatrix<f64> {
    (m + m.transpose()) * 0.5
}

/// Eigenvalues and eigenvectors of a symmetric matrix, as a value rather than a panic.
fn symmetric_eigen(
    what: &str,
    m: DMatrix<f64>,
) -> Result<SymmetricEigen<f64, nalgebra::Dyn>, MetricError> {
    let dim = m.nrows();
    // Implicit QR needs a few sweeps per eigenvalue; this bound is only a guard against a hang.
    SymmetricEigen::try_new(m, f64::EPSILON, 1000 * dim.max(1)).ok_or_else(|| {
        MetricError::NoConvergence {
            what: what.to_string(),
            dim,
        }
    })
}

/// The Fréchet distance between Gaussians a and b:
/// `|μa - μb|² + tr(Σa) + tr(Σb) - 2·tr((Σa^½ Σb Σa^½)^½)`.
///
/// The trace of the matrix square root is taken without a non-symmetric `sqrtm`:
/// Σa^½ comes from the eigendecomposition of Σa (eigenvalues below 0, which are rounding, set to
/// 0), then `tr((Σa^½ Σb Σa^½)^½)` is the sum of the square roots of the eigenvalues of that
/// symmetric positive semi-definite product (again clamped at 0). This equals pytorch-fid's
/// `tr(sqrtm(Σa Σb))`, since Σa·Σb and Σa^½ Σb Σa^½ have the same eigenvalues, but needs no
/// complex arithmetic and no epsilon on the diagonal for singular covariances. Covariances are
/// symmetrised ((Σ + Σᵀ)/2) before use. A squared distance, so a result that rounding takes
/// below 0 (order 1e-12 of the traces for equal stats) is reported as 0.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64, MetricError> {
    a.validate("first stats")?;
    b.validate("second stats")?;
    if a.dim != b.dim {
        return Err(MetricError::SizeMismatch {
            what: "Fréchet distance: feature dimensions".to_string(),
            left: a.dim,
            right: b.dim,
        });
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let (sigma_a, sigma_b) = (a.covariance_matrix(), b.covariance_matrix());
    // Σa = V·diag(λ)·Vᵀ, Σa^½ = V·diag(√max(λ, 0))·Vᵀ: [dim, dim]
    let eigen_a = symmetric_eigen("first covariance", sigma_a.clone())?;
    let root_eigenvalues = eigen_a.eigenvalues.map(|l| l.max(0.0).sqrt());
    let vectors = &eigen_a.eigenvectors;
    let sqrt_a = vectors * DMatrix::from_diagonal(&root_eigenvalues) * vectors.transpose();
    // Σa^½·Σb·Σa^½: [dim, dim], symmetric positive semi-definite up to rounding
    let product = symmetrised(&(&sqrt_a * &sigma_b * &sqrt_a));
    let eigen_product = symmetric_eigen("Σa^½ Σb Σa^½", product)?;
    let trace_sqrt: f64 = eigen_product
        .eigenvalues
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    let distance = mean_term + sigma_a.trace() + sigma_b.trace() - 2.0 * trace_sqrt;
    Ok(distance.max(0.0))
}

/// [`frechet_distance`] of the Gaussians fitted to two feature sets.
pub fn frechet_distance_of_features(a: &Features, b: &Features) -> Result<f64, MetricError> {
    if a.dim != b.dim {
        return Err(MetricError::SizeMismatch {
            what: "Fréchet distance: feature dimensions".to_string(),
            left: a.dim,
            right: b.dim,
        });
    }
    frechet_distance(
        &GaussianStats::from_features(a)?,
        &GaussianStats::from_features(b)?,
    )
}
