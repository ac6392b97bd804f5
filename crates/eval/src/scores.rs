//! Scores of a generated set from a classifier's view of it: the classifier score (the Inception
//! Score formula on any classifier's probabilities), class coverage (which classes the set
//! contains and how evenly), and k-NN precision/recall in feature space (Kynkäänniemi et al.
//! 2019). Pure functions of plain data; they do not run the classifier.

use rayon::prelude::*;

use crate::frechet::{check_finite, Features, MetricError};

/// How far a row of probabilities may sum from 1 (f32 softmax rounding is ~1e-6); beyond it the
/// input is taken to be something else, such as logits or scores.
const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

/// Checks `probabilities` as rows of `num_classes` non-negative values summing to 1 and returns
/// the number of rows (at least 1).
fn check_probabilities(probabilities: &[f64], num_classes: usize) -> Result<usize, MetricError> {
    if num_classes == 0 {
        return Err(MetricError::Invalid(
            "probabilities: num_classes must be at least 1, got 0".to_string(),
        ));
    }
    if probabilities.is_empty() {
        return Err(MetricError::TooFewSamples {
            what: "probabilities".to_string(),
            needed: 1,
            got: 0,
        });
    }
    if !probabilities.len().is_multiple_of(num_classes) {
        return Err(MetricError::Invalid(format!(
            "probabilities: {} values are not whole rows of {num_classes} classes",
            probabilities.len()
        )));
    }
    check_finite("probabilities", probabilities)?;
    for (row_index, row) in probabilities.chunks_exact(num_classes).enumerate() {
        if let Some(class) = row.iter().position(|&p| p < 0.0) {
            return Err(MetricError::Invalid(format!(
                "probabilities: row {row_index} class {class} is {}, expected a probability >= 0",
                row[class]
            )));
        }
        let sum: f64 = row.iter().sum();
        if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
            return Err(MetricError::Invalid(format!(
                "probabilities: row {row_index} sums to {sum}, expected probabilities (a softmax) \
                 summing to 1"
            )));
        }
    }
    Ok(probabilities.len() / num_classes)
}

/// `p · ln(p / q)`, with the limit 0 · ln 0 = 0 for p = 0.
fn kl_term(p: f64, q: f64) -> f64 {
    if p > 0.0 {
        p * (p / q).ln()
    } else {
        0.0
    }
}

/// The classifier score `exp(E_x KL(p(y|x) || p(y)))`, with p(y) the mean of the rows: the
/// Inception Score formula (Salimans et al. 2016) over the whole set as one split, on whatever
/// classifier produced `probabilities` (rows of `num_classes`, each summing to 1).
///
/// Ranges from 1 (every row the same) to `num_classes` (each row one-hot and the classes equally
/// often). Where p(y|x) = 0 the term is 0 (the limit of p ln p); this is what the usual epsilon
/// inside the log approximates, and it never takes the log of 0, since p(y|x) > 0 implies
/// p(y) >= p(y|x) / n > 0.
pub fn classifier_score(probabilities: &[f64], num_classes: usize) -> Result<f64, MetricError> {
    let rows = check_probabilities(probabilities, num_classes)?;
    let mut marginal = vec![0.0; num_classes];
    for row in probabilities.chunks_exact(num_classes) {
        for (m, &p) in marginal.iter_mut().zip(row) {
            *m += p;
        }
    }
    for m in &mut marginal {
        *m /= rows as f64;
    }
    let total_kl: f64 = probabilities
        .chunks_exact(num_classes)
        .map(|row| {
            row.iter()
                .zip(&marginal)
                .map(|(&p, &q)| kl_term(p, q))
                .sum::<f64>()
        })
        .sum();
    Ok((total_kl / rows as f64).exp())
}

/// The most probable class of each row of `probabilities` (the first, on ties).
pub fn predicted_labels(
    probabilities: &[f64],
    num_classes: usize,
) -> Result<Vec<usize>, MetricError> {
    check_probabilities(probabilities, num_classes)?;
    Ok(probabilities
        .chunks_exact(num_classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (class, &p)| {
                    if p > best.1 {
                        (class, p)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect())
}

/// Which classes a set of samples falls into, and how evenly.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Coverage {
    /// Samples per class: `num_classes` counts.
    pub histogram: Vec<usize>,
    /// `histogram` divided by the number of samples.
    pub fractions: Vec<f64>,
    /// Classes holding at least 5% of the samples (exactly 5% counts).
    pub classes_at_least_5_percent: usize,
    /// KL(fractions || uniform) in nats: 0 for a perfectly even set, ln(num_classes) for a set
    /// that is all one class.
    pub kl_to_uniform: f64,
}

/// [`Coverage`] of predicted class labels (each below `num_classes`; at least one label).
pub fn class_coverage(labels: &[usize], num_classes: usize) -> Result<Coverage, MetricError> {
    if num_classes == 0 {
        return Err(MetricError::Invalid(
            "class coverage: num_classes must be at least 1, got 0".to_string(),
        ));
    }
    if labels.is_empty() {
        return Err(MetricError::TooFewSamples {
            what: "class coverage labels".to_string(),
            needed: 1,
            got: 0,
        });
    }
    let mut histogram = vec![0usize; num_classes];
    for (index, &label) in labels.iter().enumerate() {
        if label >= num_classes {
            return Err(MetricError::Invalid(format!(
                "class coverage: label {index} is {label}, expected below {num_classes}"
            )));
        }
        histogram[label] += 1;
    }
    let total = labels.len();
    let fractions: Vec<f64> = histogram
        .iter()
        .map(|&count| count as f64 / total as f64)
        .collect();
    // count / total >= 1/20, in integers so that exactly 5% is not lost to rounding.
    let classes_at_least_5_percent = histogram
        .iter()
        .filter(|&&count| count * 20 >= total)
        .count();
    let uniform = 1.0 / num_classes as f64;
    let kl_to_uniform = fractions.iter().map(|&f| kl_term(f, uniform)).sum();
    Ok(Coverage {
        histogram,
        fractions,
        classes_at_least_5_percent,
        kl_to_uniform,
    })
}

/// [`class_coverage`] of the most probable class of each row of `probabilities`.
pub fn class_coverage_of_probabilities(
    probabilities: &[f64],
    num_classes: usize,
) -> Result<Coverage, MetricError> {
    class_coverage(&predicted_labels(probabilities, num_classes)?, num_classes)
}

/// The k of Kynkäänniemi et al.'s k-NN manifold estimate that their paper uses.
pub const DEFAULT_NEIGHBOURS: usize = 3;

/// Improved precision and recall, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PrecisionRecall {
    /// Fraction of generated samples inside the real manifold: how many are realistic.
    pub precision: f64,
    /// Fraction of real samples inside the generated manifold: how much of the real variety
    /// the generator covers.
    pub recall: f64,
}

/// Improved precision and recall (Kynkäänniemi et al. 2019) with `k` nearest neighbours
/// ([`DEFAULT_NEIGHBOURS`] in the paper).
///
/// Each set's manifold is the union of balls around its points, each ball's radius the
/// Euclidean distance from the point to its k-th nearest neighbour in the same set (not counting
/// itself). Precision is the fraction of `fake` points within some real point's ball (distance
/// <= radius, as in the authors' code), recall the fraction of `real` points within some fake
/// point's ball. Each set needs more than `k` points.
///
/// Distances are computed in f64 as |a|² + |b|² - 2·a·b in blocks of query rows (a GEMM per
/// block, blocks in parallel with rayon), so memory stays at a block times the other set, never
/// the full N x M matrix. Four such passes: radii within each set, then each direction.
pub fn precision_recall(
    real: &Features,
    fake: &Features,
    k: usize,
) -> Result<PrecisionRecall, MetricError> {
    real.validate("real features")?;
    fake.validate("fake features")?;
    if real.dim != fake.dim {
        return Err(MetricError::SizeMismatch {
            what: "precision/recall: feature dimensions of real and fake".to_string(),
            left: real.dim,
            right: fake.dim,
        });
    }
    if k == 0 {
        return Err(MetricError::Invalid(
            "precision/recall: k (neighbours) must be at least 1, got 0".to_string(),
        ));
    }
    for (what, set) in [("real features", real), ("fake features", fake)] {
        if set.rows <= k {
            return Err(MetricError::TooFewSamples {
                what: format!("precision/recall with k = {k}: {what}"),
                needed: k + 1,
                got: set.rows,
            });
        }
    }
    let real_radii = squared_knn_radii(real, k);
    let fake_radii = squared_knn_radii(fake, k);
    Ok(PrecisionRecall {
        precision: fraction_inside(fake, real, &real_radii),
        recall: fraction_inside(real, fake, &fake_radii),
    })
}

/// Squared distance from each point of `set` to its k-th nearest other point of `set`.
fn squared_knn_radii(set: &Features, k: usize) -> Vec<f64> {
    map_squared_distance_rows(set, set, |query, distances| {
        // The point itself is at distance 0 (rounding may say otherwise): with it counted as the
        // smallest, the k-th nearest other point is at sorted index k.
        distances[query] = 0.0;
        *distances.select_nth_unstable_by(k, f64::total_cmp).1
    })
}

/// Fraction of `queries` within the squared radius of at least one point of `references`.
fn fraction_inside(queries: &Features, references: &Features, squared_radii: &[f64]) -> f64 {
    let inside = map_squared_distance_rows(queries, references, |_, distances| {
        distances.iter().zip(squared_radii).any(|(d, r)| d <= r)
    });
    inside.iter().filter(|&&inside| inside).count() as f64 / queries.rows as f64
}

/// Query rows per block: a block's distances take 8·BLOCK_ROWS·references.rows bytes (10 MB for
/// 10,000 references), and 128 rows keep the GEMM efficient.
const BLOCK_ROWS: usize = 128;

/// `per_row(query_index, squared distances from that query to every reference)` for every
/// query row, in order. Distances are clamped at 0 (rounding can make |a|² + |b|² - 2a·b < 0).
fn map_squared_distance_rows<T: Send>(
    queries: &Features,
    references: &Features,
    per_row: impl Fn(usize, &mut [f64]) -> T + Sync,
) -> Vec<T> {
    let dim = queries.dim;
    // references: [num_references, dim]
    let reference_matrix =
        nalgebra::DMatrix::from_row_slice(references.rows, dim, &references.values);
    let reference_norms: Vec<f64> = references
        .values
        .chunks_exact(dim)
        .map(|row| row.iter().map(|v| v * v).sum())
        .collect();
    queries
        .values
        .par_chunks(BLOCK_ROWS * dim)
        .enumerate()
        .flat_map_iter(|(block_index, block)| {
            let block_rows = block.len() / dim;
            // The row-major [block_rows, dim] block read column-major is its transpose:
            // [dim, block_rows]. dots = references·blockᵀ: [num_references, block_rows], one
            // contiguous column of dot products per query.
            let block_transposed = nalgebra::DMatrix::from_column_slice(dim, block_rows, block);
            let mut dots = &reference_matrix * &block_transposed;
            let results: Vec<T> = dots
                .as_mut_slice()
                .chunks_exact_mut(references.rows)
                .zip(block.chunks_exact(dim))
                .enumerate()
                .map(|(row_in_block, (distances, query))| {
                    let query_norm: f64 = query.iter().map(|v| v * v).sum();
                    for (d, reference_norm) in distances.iter_mut().zip(&reference_norms) {
                        *d = (query_norm + reference_norm - 2.0 * *d).max(0.0);
                    }
                    per_row(block_index * BLOCK_ROWS + row_in_block, distances)
                })
                .collect();
            results
        })
        .collect()
}
