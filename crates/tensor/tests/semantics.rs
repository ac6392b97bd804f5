//! Forward semantics of kiln-tensor's ops against hand-worked values.
//!
//! Every expected value here is worked out by hand (small cases, noted in comments), by a
//! closed form (e.g. sigmoid(ln 3) = 3 / 4), or by a plain loop written in this file; none is
//! copied from kiln's own output. Gradients here are the hand-derivable basics; the finite
//! difference checks of every backward rule are in `gradcheck.rs` beside this file.

use kiln_tensor::{no_grad, Activation, DType, Device, Error, MatmulPrecision, Tensor, Var};
use proptest::prelude::*;

type R = kiln_tensor::Result<()>;

const CPU: Device = Device::Cpu;

// ---- helpers ----

fn t32(data: &[f32], shape: &[usize]) -> kiln_tensor::Result<Tensor> {
    Tensor::from_slice(data, shape, CPU)
}

fn t64(data: &[f64], shape: &[usize]) -> kiln_tensor::Result<Tensor> {
    Tensor::from_slice(data, shape, CPU)
}

fn idx(data: &[u32], shape: &[usize]) -> kiln_tensor::Result<Tensor> {
    Tensor::from_slice(data, shape, CPU)
}

/// `data` as a tensor of `dtype` (made in f64, then converted).
fn typed(data: &[f64], shape: &[usize], dtype: DType) -> kiln_tensor::Result<Tensor> {
    t64(data, shape)?.to_dtype(dtype)
}

/// The elements of a float tensor as f64, in row-major order.
fn values(t: &Tensor) -> kiln_tensor::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.to_vec::<f64>()
}

/// 0, 1, ..., n - 1 as f32 in `shape`.
fn iota(shape: &[usize]) -> kiln_tensor::Result<Tensor> {
    let n: usize = shape.iter().product();
    t32(&(0..n).map(|i| i as f32).collect::<Vec<_>>(), shape)
}

/// Asserts `|got - expected| <= tol * (1 + |expected|)` elementwise; NaN matches only NaN and
/// infinities must match exactly.
fn close(got: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(
        got.len(),
        expected.len(),
        "lengths differ:\n     got {got:?}\nexpected {expected:?}"
    );
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() {
            g.is_nan()
        } else if e.is_infinite() {
            g == e
        } else {
            (g - e).abs() <= tol * (1.0 + e.abs())
        };
        assert!(
            ok,
            "element {i}: got {g}, expected {e} (tol {tol})\n     got {got:?}\nexpected {expected:?}"
        );
    }
}

/// Asserts `result` is an error whose message mentions each of `parts`.
fn error_mentions<T: std::fmt::Debug>(result: kiln_tensor::Result<T>, parts: &[&str]) {
    let message = result.expect_err("expected an error").to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "error {message:?} does not mention {part:?}"
        );
    }
}

// ---- views ----

#[test]
fn reshape_of_contiguous_data_is_a_view() -> R {
    let x = iota(&[2, 3])?;
    let y = x.reshape([3, 2])?;
    assert!(y.shares_storage_with(&x));
    assert_eq!(y.dims(), &[3, 2]);
    assert_eq!(y.to_vec::<f32>()?, vec![0., 1., 2., 3., 4., 5.]);
    Ok(())
}

#[test]
fn reshape_of_a_transpose_copies_in_row_major_order() -> R {
    // [[0, 1, 2], [3, 4, 5]]ᵀ = [[0, 3], [1, 4], [2, 5]], flattened row by row.
    let x = iota(&[2, 3])?;
    let y = x.t()?.reshape([6])?;
    assert!(!y.shares_storage_with(&x));
    assert_eq!(y.to_vec::<f32>()?, vec![0., 3., 1., 4., 2., 5.]);
    assert_eq!(
        x.t()?.reshape([2, 3])?.to_vec::<f32>()?,
        vec![0., 3., 1., 4., 2., 5.]
    );
    error_mentions(x.reshape([4]), &["[2, 3]", "[4]"]);
    Ok(())
}

#[test]
fn permute_transpose_and_t() -> R {
    // x[i][j][k] = 12i + 4j + k; permute([2, 0, 1]) gives y[k][i][j] = x[i][j][k].
    let x = iota(&[2, 3, 4])?;
    let y = x.permute(&[2, 0, 1])?;
    assert_eq!(y.dims(), &[4, 2, 3]);
    assert!(y.shares_storage_with(&x));
    let mut expected = Vec::new();
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                expected.push((12 * i + 4 * j + k) as f32);
            }
        }
    }
    assert_eq!(y.to_vec::<f32>()?, expected);
    // t() swaps the last two dims: z[i][k][j] = x[i][j][k].
    let z = x.t()?;
    assert_eq!(z.dims(), &[2, 4, 3]);
    assert_eq!(z.to_vec::<f32>()?[..6], [0., 4., 8., 1., 5., 9.]);
    assert_eq!(x.transpose(0, 2)?.dims(), &[4, 3, 2]);
    assert_eq!(
        iota(&[2, 3])?.transpose(0, 1)?.to_vec::<f32>()?,
        vec![0., 3., 1., 4., 2., 5.]
    );
    assert!(x.permute(&[0, 0, 1]).is_err());
    assert!(x.permute(&[0, 1]).is_err());
    assert!(x.transpose(0, 3).is_err());
    assert!(iota(&[3])?.t().is_err());
    Ok(())
}

#[test]
fn broadcast_as_follows_numpy_rules() -> R {
    // A leading dim is added: [3] -> [2, 3] repeats the row.
    let row = t32(&[1., 2., 3.], &[3])?;
    let b = row.broadcast_as([2, 3])?;
    assert!(b.shares_storage_with(&row));
    assert_eq!(b.to_vec::<f32>()?, vec![1., 2., 3., 1., 2., 3.]);
    // A size-1 dim is repeated: [2, 1] -> [2, 3] repeats each column entry.
    let col = t32(&[1., 2.], &[2, 1])?;
    assert_eq!(
        col.broadcast_as([2, 3])?.to_vec::<f32>()?,
        vec![1., 1., 1., 2., 2., 2.]
    );
    // Both at once: [3, 1] -> [2, 3, 4], element [a][b][c] = col3[b].
    let col3 = t32(&[5., 6., 7.], &[3, 1])?;
    let big = col3.broadcast_as([2, 3, 4])?;
    let expected: Vec<f32> = (0..24).map(|i| [5., 6., 7.][(i / 4) % 3]).collect();
    assert_eq!(big.to_vec::<f32>()?, expected);
    // Scalars broadcast to anything.
    let s = Tensor::scalar(2.5f32, CPU)?;
    assert_eq!(s.broadcast_as([2, 2])?.to_vec::<f32>()?, vec![2.5; 4]);
    // Incompatible: a 2 cannot become a 4, and dims cannot be dropped.
    let x = iota(&[2, 3])?;
    error_mentions(x.broadcast_as([4, 3]), &["[2, 3]", "[4, 3]"]);
    error_mentions(x.broadcast_as([3]), &["[2, 3]", "[3]"]);
    error_mentions(x.broadcast_as([2, 3, 3]), &["[2, 3]", "[2, 3, 3]"]);
    Ok(())
}

#[test]
fn narrow_reads_the_right_slice() -> R {
    // x = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]].
    let x = iota(&[3, 4])?;
    let cols = x.narrow(1, 1, 2)?;
    assert_eq!(cols.dims(), &[3, 2]);
    assert!(cols.shares_storage_with(&x));
    assert_eq!(cols.to_vec::<f32>()?, vec![1., 2., 5., 6., 9., 10.]);
    assert_eq!(x.narrow(0, 2, 1)?.to_vec::<f32>()?, vec![8., 9., 10., 11.]);
    assert_eq!(x.narrow(1, 4, 0)?.elem_count(), 0);
    // Narrow of a narrow: columns 1..3, then row 1 of that.
    assert_eq!(cols.narrow(0, 1, 1)?.to_vec::<f32>()?, vec![5., 6.]);
    error_mentions(x.narrow(1, 3, 2), &["narrow", "[3, 4]"]);
    assert!(x.narrow(0, 4, 1).is_err());
    assert!(x.narrow(2, 0, 1).is_err());
    assert!(x.narrow(0, usize::MAX, 2).is_err()); // start + len overflows
    Ok(())
}

#[test]
fn squeeze_and_unsqueeze() -> R {
    let x = iota(&[2, 1, 3])?;
    let s = x.squeeze(1)?;
    assert_eq!(s.dims(), &[2, 3]);
    assert!(s.shares_storage_with(&x));
    assert_eq!(s.to_vec::<f32>()?, vec![0., 1., 2., 3., 4., 5.]);
    error_mentions(x.squeeze(0), &["[2, 1, 3]"]);
    assert!(x.squeeze(3).is_err());
    assert_eq!(s.unsqueeze(0)?.dims(), &[1, 2, 3]);
    assert_eq!(s.unsqueeze(1)?.dims(), &[2, 1, 3]);
    assert_eq!(s.unsqueeze(2)?.dims(), &[2, 3, 1]);
    assert!(s.unsqueeze(3).is_err());
    // Unsqueeze of a transpose keeps the transposed values: [[0, 3], [1, 4], [2, 5]].
    let tu = s.t()?.unsqueeze(0)?;
    assert_eq!(tu.dims(), &[1, 3, 2]);
    assert_eq!(tu.to_vec::<f32>()?, vec![0., 3., 1., 4., 2., 5.]);
    Ok(())
}

#[test]
fn contiguous_copies_only_views_that_need_it() -> R {
    let x = iota(&[2, 3])?;
    let same = x.contiguous()?;
    assert!(same.shares_storage_with(&x));
    let t = x.t()?;
    assert!(!t.is_contiguous());
    let copy = t.contiguous()?;
    assert!(copy.is_contiguous());
    assert!(!copy.shares_storage_with(&x));
    assert_eq!(copy.to_vec::<f32>()?, vec![0., 3., 1., 4., 2., 5.]);
    // A narrowed row is contiguous already (offset into the same storage).
    let row = x.narrow(0, 1, 1)?;
    assert!(row.contiguous()?.shares_storage_with(&x));
    Ok(())
}

#[test]
fn views_of_views_read_the_right_elements() -> R {
    // x = [[0, 1, 2], [3, 4, 5]] broadcast to [4, 2, 3] (b[a][i][j] = x[i][j]), transposed
    // (0, 2) to [3, 2, 4] (c[j][i][a] = x[i][j]), narrowed to j in 1..3: d[j'][i][a] =
    // x[i][j' + 1] = 3i + j' + 1.
    let x = iota(&[2, 3])?;
    let d = x
        .broadcast_as([4, 2, 3])?
        .transpose(0, 2)?
        .narrow(0, 1, 2)?;
    assert_eq!(d.dims(), &[2, 2, 4]);
    assert!(d.shares_storage_with(&x));
    let mut expected = Vec::new();
    for j in 0..2 {
        for i in 0..2 {
            for _ in 0..4 {
                expected.push((3 * i + j + 1) as f32);
            }
        }
    }
    assert_eq!(d.to_vec::<f32>()?, expected);
    assert_eq!(d.contiguous()?.to_vec::<f32>()?, expected);
    // And arithmetic on it reads the same elements.
    assert_eq!(
        values(&d.add(&d)?)?,
        expected.iter().map(|&v| 2.0 * v as f64).collect::<Vec<_>>()
    );
    Ok(())
}

// ---- broadcasting arithmetic ----

#[test]
fn add_broadcasts_a_row() -> R {
    // [[1, 2, 3], [4, 5, 6]] + [10, 20, 30]
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let row = t32(&[10., 20., 30.], &[3])?;
    let sum = x.add(&row)?;
    assert_eq!(sum.dims(), &[2, 3]);
    assert_eq!(sum.to_vec::<f32>()?, vec![11., 22., 33., 14., 25., 36.]);
    assert_eq!(
        row.add(&x)?.to_vec::<f32>()?,
        vec![11., 22., 33., 14., 25., 36.]
    );
    Ok(())
}

#[test]
fn column_times_row_is_the_outer_product() -> R {
    // [1, 2]ᵀ [3, 4, 5] = [[3, 4, 5], [6, 8, 10]]
    let col = t32(&[1., 2.], &[2, 1])?;
    let row = t32(&[3., 4., 5.], &[1, 3])?;
    let outer = col.mul(&row)?;
    assert_eq!(outer.dims(), &[2, 3]);
    assert_eq!(outer.to_vec::<f32>()?, vec![3., 4., 5., 6., 8., 10.]);
    Ok(())
}

#[test]
fn scalar_operands_and_operand_order() -> R {
    let x = t64(&[1., 2., 4.], &[3])?;
    let ten = Tensor::scalar(10.0f64, CPU)?;
    assert_eq!(x.add(&ten)?.to_vec::<f64>()?, vec![11., 12., 14.]);
    assert_eq!(ten.sub(&x)?.to_vec::<f64>()?, vec![9., 8., 6.]);
    assert_eq!(x.sub(&ten)?.to_vec::<f64>()?, vec![-9., -8., -6.]);
    assert_eq!(x.div(&ten)?.to_vec::<f64>()?, vec![0.1, 0.2, 0.4]);
    assert_eq!(ten.div(&x)?.to_vec::<f64>()?, vec![10., 5., 2.5]);
    // Two scalars give a scalar.
    let both = ten.mul(&Tensor::scalar(3.0f64, CPU)?)?;
    assert_eq!(both.rank(), 0);
    assert_eq!(both.to_scalar::<f64>()?, 30.0);
    // Same-shape sub and div, in order: [6, 8] - [1, 2] and [6, 8] / [2, 4].
    let a = t64(&[6., 8.], &[2])?;
    let b = t64(&[1., 2.], &[2])?;
    assert_eq!(a.sub(&b)?.to_vec::<f64>()?, vec![5., 6.]);
    assert_eq!(b.sub(&a)?.to_vec::<f64>()?, vec![-5., -6.]);
    assert_eq!(
        a.div(&t64(&[2., 4.], &[2])?)?.to_vec::<f64>()?,
        vec![3., 2.]
    );
    // Division by zero follows IEEE: 1/0 = inf, 0/0 = NaN.
    let quotient = t64(&[1., 0.], &[2])?.div(&t64(&[0., 0.], &[2])?)?;
    close(&quotient.to_vec::<f64>()?, &[f64::INFINITY, f64::NAN], 0.0);
    Ok(())
}

#[test]
fn incompatible_shapes_and_dtypes_are_errors() -> R {
    let x = iota(&[2, 3])?;
    let y = iota(&[4])?;
    error_mentions(x.add(&y), &["[2, 3]", "[4]"]);
    error_mentions(x.mul(&iota(&[3, 2])?), &["[2, 3]", "[3, 2]"]);
    let z = t64(&[1., 2., 3.], &[3])?;
    error_mentions(x.add(&z), &["f32", "f64"]);
    // Arithmetic is for floats only.
    let ints = idx(&[1, 2, 3], &[3])?;
    assert!(matches!(
        ints.add(&ints),
        Err(Error::UnsupportedDType {
            dtype: DType::U32,
            ..
        })
    ));
    Ok(())
}

// ---- unary ops ----

/// Checks `op` on `input` against `expected` in f32 and f64.
fn check_unary(
    input: &[f64],
    op: impl Fn(&Tensor) -> kiln_tensor::Result<Tensor>,
    expected: &[f64],
) -> R {
    for (dtype, tol) in [(DType::F64, 1e-14), (DType::F32, 1e-6)] {
        let x = typed(input, &[input.len()], dtype)?;
        let y = op(&x)?;
        assert_eq!(y.dtype(), dtype);
        assert_eq!(y.dims(), x.dims());
        close(&values(&y)?, expected, tol);
    }
    Ok(())
}

#[test]
fn exp_log_sqrt_abs() -> R {
    let e = std::f64::consts::E;
    check_unary(&[0., 1., -1., 2.], |x| x.exp(), &[1., e, 1. / e, e * e])?;
    check_unary(
        &[1., e, 0.5],
        |x| x.log(),
        &[0., 1., -std::f64::consts::LN_2],
    )?;
    check_unary(
        &[0., 4., 2.],
        |x| x.sqrt(),
        &[0., 2., std::f64::consts::SQRT_2],
    )?;
    check_unary(&[-1.5, 0., 2.], |x| x.abs(), &[1.5, 0., 2.])?;
    check_unary(&[-1.5, 0., 2.], |x| x.neg(), &[1.5, 0., -2.])?;
    // Outside the domain: log(0) = -inf, log(-1) and sqrt(-1) are NaN.
    check_unary(&[0., -1.], |x| x.log(), &[f64::NEG_INFINITY, f64::NAN])?;
    check_unary(&[-1.], |x| x.sqrt(), &[f64::NAN])
}

#[test]
fn relu_and_leaky_relu() -> R {
    check_unary(&[-2., 0., 3.], |x| x.relu(), &[0., 0., 3.])?;
    // 0.2 * -2 = -0.4
    check_unary(&[-2., 0., 3.], |x| x.leaky_relu(0.2), &[-0.4, 0., 3.])?;
    // NaN stays NaN, as in PyTorch: a NaN must not be hidden as a 0.
    check_unary(&[f64::NAN], |x| x.relu(), &[f64::NAN])?;
    check_unary(&[f64::NAN], |x| x.leaky_relu(0.2), &[f64::NAN])
}

#[test]
fn leaky_relu_derivative_is_one_above_zero_and_the_slope_elsewhere() -> R {
    let input = [-2., 0., 3., f64::NAN, -0.];
    check_unary(
        &input,
        |x| x.leaky_relu_derivative(0.2),
        &[0.2, 0.2, 1., 0.2, 0.2],
    )?;
    check_unary(
        &input,
        |x| x.leaky_relu_derivative(0.0),
        &[0., 0., 1., 0., 0.],
    )?;
    // In f32 the one op gives the bits of the composition it replaced in the backward,
    // [x > 0]·(1 - slope) + slope, for slopes whose 1 - slope and sum round in f32.
    let x = t32(&[-7.5, -0.0, 0.0, 1e-30, 2.0, f32::NAN], &[6])?;
    for slope in [0.0, 0.01, 0.2, 0.3, 0.7] {
        let mask = x.gt(&x.zeros_like()?)?.to_dtype(DType::F32)?;
        assert_eq!(
            x.leaky_relu_derivative(slope)?.to_vec::<f32>()?,
            mask.affine(1.0 - slope, slope)?.to_vec::<f32>()?,
        );
    }
    Ok(())
}

#[test]
fn sigmoid_and_tanh() -> R {
    // sigmoid(ln 3) = 1 / (1 + 1/3) = 3/4; sigmoid(-ln 3) = 1/4.
    let ln3 = 3f64.ln();
    check_unary(&[0., ln3, -ln3], |x| x.sigmoid(), &[0.5, 0.75, 0.25])?;
    // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 3/5.
    let ln2 = std::f64::consts::LN_2;
    check_unary(&[0., ln2, -ln2], |x| x.tanh(), &[0., 0.6, -0.6])?;
    check_unary(&[50., -50.], |x| x.tanh(), &[1., -1.])?;
    // sigmoid(100) = 1 / (1 + e^-100) rounds to 1; sigmoid(-100) = e^-100 / (1 + e^-100),
    // which is e^-100 to double precision. Neither may be NaN or inf.
    let tiny = (-100f64).exp();
    let y = t64(&[100., -100.], &[2])?.sigmoid()?.to_vec::<f64>()?;
    assert_eq!(y[0], 1.0);
    assert!(
        (y[1] - tiny).abs() <= 1e-12 * tiny,
        "sigmoid(-100) = {}",
        y[1]
    );
    let y = t32(&[100., -100.], &[2])?.sigmoid()?.to_vec::<f32>()?;
    assert_eq!(y[0], 1.0);
    // e^-100 is an f32 subnormal: check it is finite, nonnegative and tiny.
    assert!(y[1].is_finite() && (0.0..1e-40).contains(&y[1]), "{}", y[1]);
    Ok(())
}

#[test]
fn silu_is_x_times_its_sigmoid_and_its_derivative_matches() -> R {
    // silu(0) = 0, silu(ln 3) = ln 3 · 3/4, silu(-ln 3) = -ln 3 · 1/4; the derivative
    // s·(1 + x·(1 - s)) is 1/2 at 0 and 3/4·(1 + ln 3/4) at ln 3.
    let ln3 = 3f64.ln();
    check_unary(
        &[0., ln3, -ln3],
        |x| x.silu(),
        &[0., ln3 * 0.75, -ln3 * 0.25],
    )?;
    check_unary(
        &[0., ln3],
        |x| x.silu_derivative(),
        &[0.5, 0.75 * (1.0 + ln3 / 4.0)],
    )?;
    // In f32 the fused op gives the bits of the composition x·sigmoid(x).
    let x = t32(&[-7.5, -1.25, -0.1, 0.3, 2.0, 11.0], &[6])?;
    assert_eq!(
        x.silu()?.to_vec::<f32>()?,
        x.mul(&x.sigmoid()?)?.to_vec::<f32>()?
    );
    Ok(())
}

#[test]
fn softplus_is_stable() -> R {
    // softplus(0) = ln 2, softplus(ln 3) = ln(1 + 3) = ln 4.
    let ln3 = 3f64.ln();
    check_unary(&[0., ln3], |x| x.softplus(), &[2f64.ln(), 4f64.ln()])?;
    // softplus(100) = 100 + ln(1 + e^-100) = 100 to double precision; softplus(-100) =
    // ln(1 + e^-100) = e^-100 - e^-200 / 2 + ... ≈ 3.720075976020836e-44.
    let y = t64(&[100., -100., 1000., -1000.], &[4])?
        .softplus()?
        .to_vec::<f64>()?;
    assert_eq!(y[0], 100.0);
    let tiny = (-100f64).exp();
    assert!(
        (y[1] - tiny).abs() <= 1e-12 * tiny,
        "softplus(-100) = {}",
        y[1]
    );
    assert!((3.7e-44..3.75e-44).contains(&y[1]));
    assert_eq!(y[2], 1000.0); // e^1000 would overflow
    assert_eq!(y[3], 0.0); // e^-1000 underflows to 0
    let y = t32(&[100., -100.], &[2])?.softplus()?.to_vec::<f32>()?;
    assert_eq!(y[0], 100.0);
    assert!(y[1].is_finite() && (0.0..1e-40).contains(&y[1]), "{}", y[1]);
    Ok(())
}

#[test]
fn powf_clamp_sign_affine() -> R {
    // 4^2.5 = 32, 1^2.5 = 1, 0^2.5 = 0; 2^-1 = 0.5; 9^0.5 = 3.
    check_unary(&[4., 1., 0.], |x| x.powf(2.5), &[32., 1., 0.])?;
    check_unary(&[2., 4.], |x| x.powf(-1.0), &[0.5, 0.25])?;
    check_unary(&[9.], |x| x.powf(0.5), &[3.])?;
    check_unary(
        &[-3., -1., 0.5, 2., 5.],
        |x| x.clamp(-1.0, 2.0),
        &[-1., -1., 0.5, 2., 2.],
    )?;
    check_unary(&[f64::NAN, 7.], |x| x.clamp(-1.0, 2.0), &[f64::NAN, 2.])?;
    assert!(iota(&[2])?.clamp(1.0, 0.0).is_err());
    check_unary(&[-3., 0., 2.5], |x| x.sign(), &[-1., 0., 1.])?;
    // 2x - 1
    check_unary(&[0., 1., 3.], |x| x.affine(2.0, -1.0), &[-1., 1., 5.])?;
    check_unary(&[0., 1.], |x| x.add_scalar(0.5), &[0.5, 1.5])?;
    check_unary(&[-2., 3.], |x| x.mul_scalar(-1.5), &[3., -4.5])?;
    check_unary(&[-2., 3.], |x| x.square(), &[4., 9.])
}

#[test]
fn unary_ops_on_non_contiguous_input() -> R {
    // relu of [[-1, 2], [3, -4]]ᵀ = relu([[-1, 3], [2, -4]]) = [[0, 3], [2, 0]].
    let x = t32(&[-1., 2., 3., -4.], &[2, 2])?;
    assert_eq!(x.t()?.relu()?.to_vec::<f32>()?, vec![0., 3., 2., 0.]);
    Ok(())
}

#[test]
fn unary_ops_reject_integer_tensors() -> R {
    let x = idx(&[1, 2], &[2])?;
    assert!(matches!(
        x.exp(),
        Err(Error::UnsupportedDType {
            dtype: DType::U32,
            ..
        })
    ));
    assert!(Tensor::from_slice(&[1u8], [1], CPU)?.relu().is_err());
    Ok(())
}

#[test]
fn half_types_compute_in_f32_and_round() -> R {
    // f16 has 10 mantissa bits: spacing 2^-10 on [1, 2). 1 + 2^-11 is halfway between 1 and
    // 1 + 2^-10 and ties round to the even mantissa, 1.0. 1 + 3 * 2^-11 is halfway between
    // 1 + 2^-10 (odd) and 1 + 2^-9 (even), so it rounds up to 1 + 2^-9. (Both operands are
    // exact in f16, and their f32 sum is exact: only the store rounds.)
    let one = typed(&[1.0, 1.0], &[2], DType::F16)?;
    let small = typed(&[2f64.powi(-11), 3.0 * 2f64.powi(-11)], &[2], DType::F16)?;
    let sum = one.add(&small)?;
    assert_eq!(sum.dtype(), DType::F16);
    close(&values(&sum)?, &[1.0, 1.0 + 2f64.powi(-9)], 0.0);
    // e in f16: spacing 2^-9 on [2, 4); e * 2^9 = 1391.8 -> 1392 * 2^-9 = 2.71875.
    // In bf16 (7 mantissa bits): spacing 2^-6; e * 2^6 = 173.97 -> 174 * 2^-6 = 2.71875 too.
    for dtype in [DType::F16, DType::BF16] {
        let e = typed(&[1.0], &[1], dtype)?.exp()?;
        assert_eq!(e.dtype(), dtype);
        close(&values(&e)?, &[2.71875], 0.0);
    }
    // sqrt(2) in f16: 1.41421 * 2^10 = 1448.15 -> 1448 / 1024 = 1.4140625.
    close(
        &values(&typed(&[2.0], &[1], DType::F16)?.sqrt()?)?,
        &[1.4140625],
        0.0,
    );
    // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and rounds to even, 1.0.
    let b = typed(&[1.0], &[1], DType::BF16)?.add(&typed(&[2f64.powi(-8)], &[1], DType::BF16)?)?;
    close(&values(&b)?, &[1.0], 0.0);
    // Sums accumulate in wide precision: a running f16 sum of ones would stop at 2048 (where
    // f16's spacing becomes 2), a bf16 one at 256. 3000 and 1000 are representable (even, and
    // a multiple of 4 where bf16's spacing on [512, 1024) is 4).
    close(
        &values(&Tensor::ones([3000], DType::F16, CPU)?.sum_all()?)?,
        &[3000.0],
        0.0,
    );
    close(
        &values(&Tensor::ones([1000], DType::BF16, CPU)?.sum_all()?)?,
        &[1000.0],
        0.0,
    );
    // f16's largest finite value is 65504: 60000 + 60000 overflows to inf.
    let big = typed(&[60000.0], &[1], DType::F16)?;
    close(&values(&big.add(&big)?)?, &[f64::INFINITY], 0.0);
    // ...while bf16 keeps f32's range: 60000 is 59904 in bf16 (spacing 256 on [2^15, 2^16)),
    // and 2 * 59904 = 119808 is representable.
    let big = typed(&[60000.0], &[1], DType::BF16)?;
    close(&values(&big.add(&big)?)?, &[119808.0], 0.0);
    Ok(())
}

// ---- reductions ----

#[test]
fn sum_mean_max_over_one_dim() -> R {
    // x = [[1, 2, 3], [4, 5, 6]]
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let s0 = x.sum(&[0], false)?;
    assert_eq!(s0.dims(), &[3]);
    assert_eq!(s0.to_vec::<f32>()?, vec![5., 7., 9.]);
    let s0k = x.sum(&[0], true)?;
    assert_eq!(s0k.dims(), &[1, 3]);
    assert_eq!(s0k.to_vec::<f32>()?, vec![5., 7., 9.]);
    assert_eq!(x.sum(&[1], false)?.to_vec::<f32>()?, vec![6., 15.]);
    assert_eq!(x.sum(&[1], true)?.dims(), &[2, 1]);
    assert_eq!(x.mean(&[1], false)?.to_vec::<f32>()?, vec![2., 5.]);
    assert_eq!(x.mean(&[0], true)?.to_vec::<f32>()?, vec![2.5, 3.5, 4.5]);
    assert_eq!(x.max(&[1], false)?.to_vec::<f32>()?, vec![3., 6.]);
    assert_eq!(x.max(&[0], true)?.to_vec::<f32>()?, vec![4., 5., 6.]);
    // All negative: the max is not the initial value.
    let neg = t64(&[-5., -3., -4.], &[3])?;
    assert_eq!(neg.max(&[0], false)?.to_scalar::<f64>()?, -3.0);
    Ok(())
}

#[test]
fn reductions_over_several_and_all_dims() -> R {
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let all = x.sum(&[0, 1], false)?;
    assert_eq!(all.rank(), 0);
    assert_eq!(all.to_scalar::<f32>()?, 21.0);
    assert_eq!(x.sum(&[1, 0], true)?.dims(), &[1, 1]);
    assert_eq!(x.sum_all()?.to_scalar::<f32>()?, 21.0);
    assert_eq!(x.mean_all()?.to_scalar::<f32>()?, 3.5);
    assert_eq!(x.max_all()?.to_scalar::<f32>()?, 6.0);
    // y[i][j][k] = 12i + 4j + k over [2, 3, 4]. Summing over i and k:
    // sum_{i,k} (12i + 4j + k) = 4 * 12 + 8 * 4j + 2 * (0 + 1 + 2 + 3) = 60 + 32j.
    let y = iota(&[2, 3, 4])?;
    let s = y.sum(&[0, 2], false)?;
    assert_eq!(s.dims(), &[3]);
    assert_eq!(s.to_vec::<f32>()?, vec![60., 92., 124.]);
    assert_eq!(y.sum(&[2, 0], true)?.dims(), &[1, 3, 1]);
    // Max over i and j: 12 + 8 + k.
    assert_eq!(
        y.max(&[0, 1], false)?.to_vec::<f32>()?,
        vec![20., 21., 22., 23.]
    );
    // Mean over i and k: (60 + 32j) / 8.
    assert_eq!(
        y.mean(&[0, 2], false)?.to_vec::<f32>()?,
        vec![7.5, 11.5, 15.5]
    );
    // Reducing over no dims leaves the values.
    assert_eq!(x.sum(&[], false)?.to_vec::<f32>()?, x.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn reductions_of_non_contiguous_inputs() -> R {
    // xᵀ = [[1, 4], [2, 5], [3, 6]]
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let t = x.t()?;
    assert_eq!(t.sum(&[0], false)?.to_vec::<f32>()?, vec![6., 15.]);
    assert_eq!(t.sum(&[1], false)?.to_vec::<f32>()?, vec![5., 7., 9.]);
    assert_eq!(t.max(&[0], false)?.to_vec::<f32>()?, vec![3., 6.]);
    assert_eq!(t.mean(&[1], true)?.to_vec::<f32>()?, vec![2.5, 3.5, 4.5]);
    // A broadcast view: [1, 2, 3] repeated 4 times sums to 4 * [1, 2, 3].
    let b = t32(&[1., 2., 3.], &[3])?.broadcast_as([4, 3])?;
    assert_eq!(b.sum(&[0], false)?.to_vec::<f32>()?, vec![4., 8., 12.]);
    assert_eq!(b.sum_all()?.to_scalar::<f32>()?, 24.0);
    // A narrowed view: columns 1..3 of x are [[2, 3], [5, 6]].
    assert_eq!(
        x.narrow(1, 1, 2)?.sum(&[0], false)?.to_vec::<f32>()?,
        vec![7., 9.]
    );
    Ok(())
}

#[test]
fn max_propagates_nan() -> R {
    let nan = f64::NAN;
    let x = t64(&[1., nan, 3.], &[3])?;
    assert!(x.max_all()?.to_scalar::<f64>()?.is_nan());
    // NaN first, last, and in one row only.
    assert!(t64(&[nan, 1.], &[2])?
        .max_all()?
        .to_scalar::<f64>()?
        .is_nan());
    assert!(t64(&[1., nan], &[2])?
        .max_all()?
        .to_scalar::<f64>()?
        .is_nan());
    let m = t64(&[1., nan, 2., 3.], &[2, 2])?.max(&[1], false)?;
    close(&m.to_vec::<f64>()?, &[nan, 3.], 0.0);
    // Sum propagates it too.
    assert!(x.sum_all()?.to_scalar::<f64>()?.is_nan());
    Ok(())
}

#[test]
fn bad_reduction_dims_are_errors() -> R {
    let x = iota(&[2, 3])?;
    error_mentions(x.sum(&[0, 0], false), &["sum", "repeat"]);
    error_mentions(x.sum(&[2], false), &["sum", "2", "[2, 3]"]);
    assert!(x.mean(&[1, 1], true).is_err());
    assert!(x.max(&[5], true).is_err());
    assert!(x.mean(&[3], false).is_err());
    assert!(idx(&[1, 2], &[2])?.sum_all().is_err());
    assert!(Tensor::zeros([2, 0], DType::F32, CPU)?
        .max(&[1], false)
        .is_err());
    // Sums over an empty dim are 0 (the empty sum); its mean is 0 / 0 = NaN, as in PyTorch.
    let empty = Tensor::zeros([2, 0], DType::F64, CPU)?;
    assert_eq!(empty.sum(&[1], false)?.to_vec::<f64>()?, vec![0., 0.]);
    close(
        &empty.mean(&[1], false)?.to_vec::<f64>()?,
        &[f64::NAN, f64::NAN],
        0.0,
    );
    Ok(())
}

// ---- softmax and log_softmax ----

/// softmax of one row by the textbook formula, in f64.
fn softmax_row(row: &[f64]) -> Vec<f64> {
    let total: f64 = row.iter().map(|x| x.exp()).sum();
    row.iter().map(|x| x.exp() / total).collect()
}

#[test]
fn softmax_of_a_hand_worked_row() -> R {
    // softmax([1, 2, 3])_i = e^(i - 2) / (e^-2 + e^-1 + 1) = [0.0900306, 0.2447285, 0.6652410].
    let x = t64(&[1., 2., 3.], &[3])?;
    let y = x.softmax(0)?.to_vec::<f64>()?;
    close(&y, &softmax_row(&[1., 2., 3.]), 1e-14);
    close(&y, &[0.0900306, 0.2447285, 0.6652410], 1e-6);
    close(&[y.iter().sum::<f64>()], &[1.0], 1e-15);
    // log_softmax([1, 2, 3]) = x - ln(e + e^2 + e^3) = x - 3 - ln(1 + e^-1 + e^-2).
    let lse = 3.0 + (1.0 + (-1f64).exp() + (-2f64).exp()).ln();
    close(
        &x.log_softmax(0)?.to_vec::<f64>()?,
        &[1.0 - lse, 2.0 - lse, 3.0 - lse],
        1e-14,
    );
    // f32 agrees to f32 precision.
    let y32 = values(&t32(&[1., 2., 3.], &[3])?.softmax(0)?)?;
    close(&y32, &softmax_row(&[1., 2., 3.]), 1e-6);
    Ok(())
}

#[test]
fn softmax_is_stable_for_large_inputs() -> R {
    // Softmax is shift-invariant: [1000, 1001, 1002] gives the same as [0, 1, 2], while the
    // naive formula would compute inf / inf.
    let expected = softmax_row(&[0., 1., 2.]);
    for dtype in [DType::F64, DType::F32] {
        let big = typed(&[1000., 1001., 1002.], &[3], dtype)?;
        close(&values(&big.softmax(0)?)?, &expected, 1e-6);
        let log = values(&big.log_softmax(0)?)?;
        let expected_log: Vec<f64> = expected.iter().map(|p| p.ln()).collect();
        close(&log, &expected_log, 1e-6);
        let small = typed(&[-1000., -1001., -1002.], &[3], dtype)?;
        close(
            &values(&small.softmax(0)?)?,
            &softmax_row(&[0., -1., -2.]),
            1e-6,
        );
    }
    // -inf entries get probability 0.
    close(
        &t64(&[f64::NEG_INFINITY, 0.], &[2])?
            .softmax(0)?
            .to_vec::<f64>()?,
        &[0., 1.],
        0.0,
    );
    Ok(())
}

#[test]
fn softmax_along_each_dim_of_a_matrix() -> R {
    // Columns of [[0, 0], [ln 3, -ln 3]]: column 0 is [1, 3] / 4, column 1 is [1, 1/3] / (4/3).
    let ln3 = 3f64.ln();
    let x = t64(&[0., 0., ln3, -ln3], &[2, 2])?;
    close(
        &x.softmax(0)?.to_vec::<f64>()?,
        &[0.25, 0.75, 0.75, 0.25],
        1e-14,
    );
    // Rows: [1, 1] / 2 and [3, 1/3] / (10/3) = [0.9, 0.1].
    close(
        &x.softmax(1)?.to_vec::<f64>()?,
        &[0.5, 0.5, 0.9, 0.1],
        1e-14,
    );
    close(
        &x.log_softmax(1)?.to_vec::<f64>()?,
        &[0.5f64.ln(), 0.5f64.ln(), 0.9f64.ln(), 0.1f64.ln()],
        1e-14,
    );
    // Along dim 0 of xᵀ is along dim 1 of x.
    close(
        &x.t()?.softmax(0)?.to_vec::<f64>()?,
        &[0.5, 0.9, 0.5, 0.1],
        1e-14,
    );
    assert!(x.softmax(2).is_err());
    Ok(())
}

#[test]
fn softmax_rows_sum_to_one_along_a_middle_dim() -> R {
    // [2, 5, 3] with values sin(i); softmax along dim 1, checked against the formula.
    let data: Vec<f64> = (0..30).map(|i| (i as f64).sin() * 3.0).collect();
    let x = t64(&data, &[2, 5, 3])?;
    let y = x.softmax(1)?.to_vec::<f64>()?;
    for a in 0..2 {
        for c in 0..3 {
            let row: Vec<f64> = (0..5).map(|b| data[a * 15 + b * 3 + c]).collect();
            let got: Vec<f64> = (0..5).map(|b| y[a * 15 + b * 3 + c]).collect();
            close(&got, &softmax_row(&row), 1e-14);
            close(&[got.iter().sum::<f64>()], &[1.0], 1e-14);
        }
    }
    Ok(())
}

// ---- matmul ----

#[test]
fn matmul_of_a_hand_worked_pair() -> R {
    // [[1, 2, 3], [4, 5, 6]] x [[7, 8], [9, 10], [11, 12]]:
    // 1*7 + 2*9 + 3*11 = 58, 1*8 + 2*10 + 3*12 = 64, 4*7 + 5*9 + 6*11 = 139, 4*8 + 5*10 + 6*12 = 154.
    let a = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let b = t32(&[7., 8., 9., 10., 11., 12.], &[3, 2])?;
    let c = a.matmul(&b)?;
    assert_eq!(c.dims(), &[2, 2]);
    assert_eq!(c.to_vec::<f32>()?, vec![58., 64., 139., 154.]);
    let c64 = a.to_dtype(DType::F64)?.matmul(&b.to_dtype(DType::F64)?)?;
    assert_eq!(c64.to_vec::<f64>()?, vec![58., 64., 139., 154.]);
    Ok(())
}

#[test]
fn matmul_reads_transposed_views() -> R {
    let expected = vec![58., 64., 139., 154.];
    // at is aᵀ stored contiguously (3x2); at.t() is a as a view.
    let at = t32(&[1., 4., 2., 5., 3., 6.], &[3, 2])?;
    let b = t32(&[7., 8., 9., 10., 11., 12.], &[3, 2])?;
    assert_eq!(at.t()?.matmul(&b)?.to_vec::<f32>()?, expected);
    assert_eq!(at.t()?.contiguous()?.matmul(&b)?.to_vec::<f32>()?, expected);
    // bt is bᵀ stored contiguously (2x3).
    let a = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let bt = t32(&[7., 9., 11., 8., 10., 12.], &[2, 3])?;
    assert_eq!(a.matmul(&bt.t()?)?.to_vec::<f32>()?, expected);
    assert_eq!(at.t()?.matmul(&bt.t()?)?.to_vec::<f32>()?, expected);
    // (a b)ᵀ = bᵀ aᵀ = [[58, 139], [64, 154]].
    assert_eq!(bt.matmul(&at)?.to_vec::<f32>()?, vec![58., 139., 64., 154.]);
    Ok(())
}

#[test]
fn batched_matmul() -> R {
    // Batch 0 is the hand-worked pair; batch 1 picks rows 0 and 1 of [[1, 2], [3, 4], [5, 6]].
    let a = t32(
        &[1., 2., 3., 4., 5., 6., 1., 0., 0., 0., 1., 0.],
        &[2, 2, 3],
    )?;
    let b = t32(
        &[7., 8., 9., 10., 11., 12., 1., 2., 3., 4., 5., 6.],
        &[2, 3, 2],
    )?;
    let c = a.matmul(&b)?;
    assert_eq!(c.dims(), &[2, 2, 2]);
    assert_eq!(
        c.to_vec::<f32>()?,
        vec![58., 64., 139., 154., 1., 2., 3., 4.]
    );
    // Transposed batches: a.t() is [2, 3, 2] and a.t()ᵀ is a again.
    assert_eq!(a.t()?.t()?.matmul(&b)?.to_vec::<f32>()?, c.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn matmul_broadcasts_batch_dims() -> R {
    // [2, 2, 3] x [3, 4]: the right side is shared. Its columns give each row's entries
    // r0, r1, r2 and r0 + r1 + r2.
    let a = iota(&[2, 2, 3])?;
    let b = t32(&[1., 0., 0., 1., 0., 1., 0., 1., 0., 0., 1., 1.], &[3, 4])?;
    let c = a.matmul(&b)?;
    assert_eq!(c.dims(), &[2, 2, 4]);
    assert_eq!(
        c.to_vec::<f32>()?,
        vec![0., 1., 2., 3., 3., 4., 5., 12., 6., 7., 8., 21., 9., 10., 11., 30.]
    );
    // [1, 2, 3] x [2, 3, 2] shares the left side across both batches.
    let left = t32(&[1., 2., 3., 4., 5., 6.], &[1, 2, 3])?;
    let right = t32(
        &[7., 8., 9., 10., 11., 12., 1., 2., 3., 4., 5., 6.],
        &[2, 3, 2],
    )?;
    // Batch 1: [[1, 2, 3], [4, 5, 6]] x [[1, 2], [3, 4], [5, 6]] = [[22, 28], [49, 64]].
    assert_eq!(
        left.matmul(&right)?.to_vec::<f32>()?,
        vec![58., 64., 139., 154., 22., 28., 49., 64.]
    );
    Ok(())
}

#[test]
fn matmul_shape_errors_name_both_shapes() -> R {
    let a = iota(&[2, 3])?;
    error_mentions(a.matmul(&iota(&[4, 2])?), &["[2, 3]", "[4, 2]"]);
    error_mentions(a.matmul(&iota(&[3])?), &["[2, 3]", "[3]"]);
    // Batch dims 2 and 3 do not broadcast; the error names the whole operands.
    error_mentions(
        iota(&[2, 2, 3])?.matmul(&iota(&[3, 3, 2])?),
        &["[2, 2, 3]", "[3, 3, 2]"],
    );
    assert!(a.matmul(&t64(&[1., 2., 3.], &[3, 1])?).is_err());
    Ok(())
}

#[test]
fn matmul_with_unit_dims() -> R {
    // k = 1: [1, 2, 3]ᵀ [4, 5] is the outer product.
    let col = t32(&[1., 2., 3.], &[3, 1])?;
    let row = t32(&[4., 5.], &[1, 2])?;
    assert_eq!(
        col.matmul(&row)?.to_vec::<f32>()?,
        vec![4., 5., 8., 10., 12., 15.]
    );
    // m = 1: [1, 2, 3] x b is the first row of the hand-worked product.
    let b = t32(&[7., 8., 9., 10., 11., 12.], &[3, 2])?;
    let first = t32(&[1., 2., 3.], &[1, 3])?.matmul(&b)?;
    assert_eq!(first.dims(), &[1, 2]);
    assert_eq!(first.to_vec::<f32>()?, vec![58., 64.]);
    // n = 1: multiplying by a column of ones gives row sums, also through a transposed view.
    let a = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let ones = t32(&[1., 1., 1.], &[3, 1])?;
    assert_eq!(a.matmul(&ones)?.to_vec::<f32>()?, vec![6., 15.]);
    let ones_t = t32(&[1., 1., 1.], &[1, 3])?.t()?;
    assert_eq!(a.matmul(&ones_t)?.to_vec::<f32>()?, vec![6., 15.]);
    // k = 0: an empty sum is 0. m = 0: no rows.
    let empty =
        Tensor::zeros([2, 0], DType::F32, CPU)?.matmul(&Tensor::zeros([0, 3], DType::F32, CPU)?)?;
    assert_eq!(empty.to_vec::<f32>()?, vec![0.; 6]);
    assert_eq!(
        Tensor::zeros([0, 3], DType::F32, CPU)?
            .matmul(&iota(&[3, 2])?)?
            .dims(),
        &[0, 2]
    );
    // m = k = n = 1.
    let one = t32(&[3.], &[1, 1])?.matmul(&t32(&[-2.], &[1, 1])?)?;
    assert_eq!(one.to_vec::<f32>()?, vec![-6.]);
    Ok(())
}

/// A plain triple loop over row-major `a` (m x k) and `b` (k x n), in f64.
fn naive_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

#[test]
fn larger_matmul_matches_a_triple_loop() -> R {
    // Small integers over 4: every product and sum is exact in f32, so results match exactly.
    let (m, k, n) = (37, 53, 29);
    let a: Vec<f64> = (0..m * k)
        .map(|i| (((i / k) * 7 + (i % k) * 3) % 11) as f64 / 4.0 - 1.25)
        .collect();
    let b: Vec<f64> = (0..k * n)
        .map(|i| (((i / n) * 5 + (i % n) * 2) % 13) as f64 / 4.0 - 1.5)
        .collect();
    let expected = naive_matmul(&a, &b, m, k, n);
    for dtype in [DType::F32, DType::F64] {
        let ta = typed(&a, &[m, k], dtype)?;
        let tb = typed(&b, &[k, n], dtype)?;
        close(&values(&ta.matmul(&tb)?)?, &expected, 0.0);
        // The same product from transposed views of the transposes.
        let ta_view = ta.t()?.contiguous()?.t()?;
        let tb_view = tb.t()?.contiguous()?.t()?;
        assert!(!ta_view.is_contiguous() && !tb_view.is_contiguous());
        close(&values(&ta_view.matmul(&tb_view)?)?, &expected, 0.0);
        close(&values(&ta.matmul(&tb_view)?)?, &expected, 0.0);
    }
    Ok(())
}

// ---- cat, stack and indexing ----

#[test]
fn cat_along_each_dim() -> R {
    let a = t32(&[1., 2.], &[1, 2])?;
    let b = t32(&[3., 4., 5., 6.], &[2, 2])?;
    let rows = Tensor::cat(&[&a, &b], 0)?;
    assert_eq!(rows.dims(), &[3, 2]);
    assert_eq!(rows.to_vec::<f32>()?, vec![1., 2., 3., 4., 5., 6.]);
    // [[3, 4], [5, 6]] beside [[7], [8]] beside [[7, 9], [8, 10]] (a transposed view).
    let c = t32(&[7., 8.], &[2, 1])?;
    let d = t32(&[7., 8., 9., 10.], &[2, 2])?.t()?;
    let cols = Tensor::cat(&[&b, &c, &d], 1)?;
    assert_eq!(cols.dims(), &[2, 5]);
    assert_eq!(
        cols.to_vec::<f32>()?,
        vec![3., 4., 7., 7., 9., 5., 6., 8., 8., 10.]
    );
    // Empty parts contribute nothing.
    let none = Tensor::zeros([0, 2], DType::F32, CPU)?;
    assert_eq!(
        Tensor::cat(&[&none, &a, &none], 0)?.to_vec::<f32>()?,
        vec![1., 2.]
    );
    // A single part is a copy.
    assert_eq!(
        Tensor::cat(&[&d], 0)?.to_vec::<f32>()?,
        vec![7., 9., 8., 10.]
    );
    error_mentions(Tensor::cat(&[&a, &c], 0), &["[1, 2]", "[2, 1]"]);
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::cat(&[&a, &b], 2).is_err());
    assert!(Tensor::cat(&[&a, &t64(&[1., 2.], &[1, 2])?], 0).is_err());
    Ok(())
}

#[test]
fn stack_along_each_dim() -> R {
    let a = t32(&[1., 2.], &[2])?;
    let b = t32(&[3., 4.], &[2])?;
    let s0 = Tensor::stack(&[&a, &b], 0)?;
    assert_eq!(s0.dims(), &[2, 2]);
    assert_eq!(s0.to_vec::<f32>()?, vec![1., 2., 3., 4.]);
    let s1 = Tensor::stack(&[&a, &b], 1)?;
    assert_eq!(s1.dims(), &[2, 2]);
    assert_eq!(s1.to_vec::<f32>()?, vec![1., 3., 2., 4.]);
    // Stacking matrices, one a transposed view: [[1, 3], [2, 4]] and [[5, 6], [7, 8]].
    let m = t32(&[1., 2., 3., 4.], &[2, 2])?.t()?;
    let n = t32(&[5., 6., 7., 8.], &[2, 2])?;
    let s = Tensor::stack(&[&m, &n], 0)?;
    assert_eq!(s.dims(), &[2, 2, 2]);
    assert_eq!(s.to_vec::<f32>()?, vec![1., 3., 2., 4., 5., 6., 7., 8.]);
    // Along the last dim: s[i][j][k] = [m, n][k][i][j].
    let s2 = Tensor::stack(&[&m, &n], 2)?;
    assert_eq!(s2.to_vec::<f32>()?, vec![1., 5., 3., 6., 2., 7., 4., 8.]);
    // The error names the shapes passed in, not their unsqueezed forms.
    error_mentions(
        Tensor::stack(&[&a, &iota(&[3])?], 0),
        &["stack", "[2] and [3]"],
    );
    assert!(Tensor::stack(&[], 0).is_err());
    Ok(())
}

#[test]
fn index_select_picks_slices() -> R {
    // x = [[1, 2], [3, 4], [5, 6]]
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[3, 2])?;
    let rows = x.index_select(0, &idx(&[2, 0, 2], &[3])?)?;
    assert_eq!(rows.dims(), &[3, 2]);
    assert_eq!(rows.to_vec::<f32>()?, vec![5., 6., 1., 2., 5., 6.]);
    let cols = x.index_select(1, &idx(&[1, 1, 0], &[3])?)?;
    assert_eq!(cols.dims(), &[3, 3]);
    assert_eq!(
        cols.to_vec::<f32>()?,
        vec![2., 2., 1., 4., 4., 3., 6., 6., 5.]
    );
    // From a transposed view xᵀ = [[1, 3, 5], [2, 4, 6]]: columns 2 and 1.
    let from_t = x.t()?.index_select(1, &idx(&[2, 1], &[2])?)?;
    assert_eq!(from_t.to_vec::<f32>()?, vec![5., 3., 6., 4.]);
    // An empty index gives an empty dim; u32 data can be selected too.
    assert_eq!(x.index_select(0, &idx(&[], &[0])?)?.dims(), &[0, 2]);
    let labels = idx(&[7, 8, 9], &[3])?;
    assert_eq!(
        labels
            .index_select(0, &idx(&[2, 2], &[2])?)?
            .to_vec::<u32>()?,
        vec![9, 9]
    );
    Ok(())
}

#[test]
fn gather_follows_torch_semantics() -> R {
    // torch.gather's documented example: dim 1, [[1, 2], [3, 4]] with [[0, 0], [1, 0]]
    // gives out[i][j] = x[i][index[i][j]] = [[1, 1], [4, 3]].
    let x = t32(&[1., 2., 3., 4.], &[2, 2])?;
    let g = x.gather(1, &idx(&[0, 0, 1, 0], &[2, 2])?)?;
    assert_eq!(g.to_vec::<f32>()?, vec![1., 1., 4., 3.]);
    // dim 0 with an index smaller than the input: out[0][j] = y[index[0][j]][j].
    // y = [[1, 2, 3], [4, 5, 6]], index [[1, 0, 1]] -> [[4, 2, 6]].
    let y = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let g0 = y.gather(0, &idx(&[1, 0, 1], &[1, 3])?)?;
    assert_eq!(g0.dims(), &[1, 3]);
    assert_eq!(g0.to_vec::<f32>()?, vec![4., 2., 6.]);
    // dim 1 with more picks than columns (picking labels: column index per row).
    let g1 = y.gather(1, &idx(&[2, 2, 0, 1, 1, 1, 0, 0], &[2, 4])?)?;
    assert_eq!(g1.to_vec::<f32>()?, vec![3., 3., 1., 2., 5., 5., 4., 4.]);
    // From a transposed view: yᵀ = [[1, 4], [2, 5], [3, 6]], picking [1, 0, 1] per row.
    let gt = y.t()?.gather(1, &idx(&[1, 0, 1], &[3, 1])?)?;
    assert_eq!(gt.to_vec::<f32>()?, vec![4., 2., 6.]);
    error_mentions(
        y.gather(1, &idx(&[0, 0, 0], &[3, 1])?),
        &["[3, 1]", "[2, 3]"],
    );
    Ok(())
}

#[test]
fn scatter_add_accumulates_repeated_indices() -> R {
    // dim 1: out[i][index[i][j]] += src[i][j]. Row 0: slot 0 gets 1 + 2, slot 2 gets 3.
    // Row 1: slot 1 gets 4 + 5 + 6.
    let base = Tensor::zeros([2, 3], DType::F32, CPU)?;
    let index = idx(&[0, 0, 2, 1, 1, 1], &[2, 3])?;
    let src = t32(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let out = base.scatter_add(1, &index, &src)?;
    assert_eq!(out.to_vec::<f32>()?, vec![3., 0., 3., 0., 15., 0.]);
    // dim 0: out[index[i][j]][j] += src[i][j]; (0,0) -> [1][0] += 1, (0,1) -> [1][1] += 2,
    // (1,0) -> [1][0] += 3, (1,1) -> [0][1] += 4. On a base of ones.
    let out = Tensor::ones([2, 2], DType::F64, CPU)?.scatter_add(
        0,
        &idx(&[1, 1, 1, 0], &[2, 2])?,
        &t64(&[1., 2., 3., 4.], &[2, 2])?,
    )?;
    assert_eq!(out.to_vec::<f64>()?, vec![1., 5., 5., 3.]);
    // The base is unchanged.
    assert_eq!(base.to_vec::<f32>()?, vec![0.; 6]);
    Ok(())
}

#[test]
fn index_add_accumulates_repeated_indices() -> R {
    // Rows 0, 2, 0 of a base of ones get [1, 2], [3, 4], [5, 6]:
    // row 0 = 1 + [1, 2] + [5, 6] = [7, 9], row 1 = [1, 1], row 2 = 1 + [3, 4] = [4, 5].
    let base = Tensor::ones([3, 2], DType::F32, CPU)?;
    let src = t32(&[1., 2., 3., 4., 5., 6.], &[3, 2])?;
    let out = base.index_add(0, &idx(&[0, 2, 0], &[3])?, &src)?;
    assert_eq!(out.to_vec::<f32>()?, vec![7., 9., 1., 1., 4., 5.]);
    // dim 1: columns 1, 1, 0 of a zero [2, 2] base get columns 0, 1, 2 of src [2, 3]:
    // column 0 = [2, 5], column 1 = [0 + 1, 3 + 4].
    let src = iota(&[2, 3])?; // [[0, 1, 2], [3, 4, 5]]
    let out =
        Tensor::zeros([2, 2], DType::F32, CPU)?.index_add(1, &idx(&[1, 1, 0], &[3])?, &src)?;
    assert_eq!(out.to_vec::<f32>()?, vec![2., 1., 5., 7.]);
    error_mentions(
        base.index_add(0, &idx(&[0], &[1])?, &iota(&[1, 3])?),
        &["[1, 3]", "[3, 2]"],
    );
    Ok(())
}

#[test]
fn out_of_range_indices_are_errors() -> R {
    let x = t32(&[1., 2., 3., 4., 5., 6.], &[3, 2])?;
    let bad = idx(&[0, 3], &[2])?;
    let err = x.index_select(0, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                index: 3,
                size: 3,
                ..
            }
        ),
        "{err}"
    );
    error_mentions(x.index_select(1, &idx(&[2], &[1])?), &["index 2", "size 2"]);
    assert!(x.index_add(0, &bad, &iota(&[2, 2])?).is_err());
    let bad2 = idx(&[0, 2, 1, 0, 0, 0], &[3, 2])?;
    assert!(matches!(
        x.gather(1, &bad2),
        Err(Error::IndexOutOfRange { index: 2, .. })
    ));
    assert!(x.scatter_add(1, &bad2, &iota(&[3, 2])?).is_err());
    assert!(x.index_select(2, &idx(&[0], &[1])?).is_err());
    Ok(())
}

#[test]
fn non_u32_indices_are_errors() -> R {
    let x = t32(&[1., 2., 3., 4.], &[2, 2])?;
    let float_index = t32(&[0., 1.], &[2])?;
    error_mentions(x.index_select(0, &float_index), &["u32", "f32"]);
    let byte_index = Tensor::from_slice(&[0u8, 1, 1, 0], [2, 2], CPU)?;
    error_mentions(x.gather(1, &byte_index), &["u32", "u8"]);
    assert!(x.scatter_add(1, &byte_index, &x).is_err());
    assert!(x.index_add(0, &float_index, &x).is_err());
    Ok(())
}

// ---- where_cond and comparisons ----

#[test]
fn where_cond_broadcasts_all_three() -> R {
    // condition [[1], [0]] picks row [1, 2, 3] for row 0 and the scalar 0 for row 1.
    let condition = Tensor::from_slice(&[1u8, 0], [2, 1], CPU)?;
    let on_true = t32(&[1., 2., 3.], &[3])?;
    let on_false = Tensor::scalar(0f32, CPU)?;
    let out = Tensor::where_cond(&condition, &on_true, &on_false)?;
    assert_eq!(out.dims(), &[2, 3]);
    assert_eq!(out.to_vec::<f32>()?, vec![1., 2., 3., 0., 0., 0.]);
    // Elementwise with a computed mask: max(x, y) as where(x > y, x, y).
    let x = t64(&[1., 5., 3.], &[3])?;
    let y = t64(&[4., 2., 3.], &[3])?;
    let m = Tensor::where_cond(&x.gt(&y)?, &x, &y)?;
    assert_eq!(m.to_vec::<f64>()?, vec![4., 5., 3.]);
    // Any nonzero condition value counts as true (a float condition too).
    let fc = t64(&[0., -2., 0.5], &[3])?;
    assert_eq!(
        Tensor::where_cond(&fc, &x, &y)?.to_vec::<f64>()?,
        vec![4., 5., 3.]
    );
    assert!(Tensor::where_cond(&condition, &on_true, &t64(&[0.], &[1])?).is_err());
    error_mentions(
        Tensor::where_cond(
            &Tensor::from_slice(&[1u8, 0, 1, 0], [4], CPU)?,
            &on_true,
            &on_false,
        ),
        &["[4]", "[3]"],
    );
    Ok(())
}

#[test]
fn comparisons_return_u8_masks() -> R {
    let a = t32(&[1., 2., 3.], &[3])?;
    let b = t32(&[2., 2., 2.], &[3])?;
    let check = |mask: Tensor, expected: [u8; 3]| -> R {
        assert_eq!(mask.dtype(), DType::U8);
        assert_eq!(mask.to_vec::<u8>()?, expected.to_vec());
        Ok(())
    };
    check(a.eq(&b)?, [0, 1, 0])?;
    check(a.ne(&b)?, [1, 0, 1])?;
    check(a.lt(&b)?, [1, 0, 0])?;
    check(a.le(&b)?, [1, 1, 0])?;
    check(a.gt(&b)?, [0, 0, 1])?;
    check(a.ge(&b)?, [0, 1, 1])?;
    // Broadcasting against a scalar, and on integer dtypes.
    check(a.gt(&Tensor::scalar(1.5f32, CPU)?)?, [0, 1, 1])?;
    let labels = idx(&[3, 1, 4], &[3])?;
    check(labels.eq(&idx(&[3, 0, 4], &[3])?)?, [1, 0, 1])?;
    // Column vs row: [[1], [2]] < [1, 2, 3] = [[0, 1, 1], [0, 0, 1]].
    let col = t32(&[1., 2.], &[2, 1])?;
    assert_eq!(col.lt(&a)?.to_vec::<u8>()?, vec![0, 1, 1, 0, 0, 1]);
    // NaN equals nothing, itself included.
    let nan = t64(&[f64::NAN], &[1])?;
    assert_eq!(nan.eq(&nan)?.to_vec::<u8>()?, vec![0]);
    assert_eq!(nan.ne(&nan)?.to_vec::<u8>()?, vec![1]);
    assert!(a.eq(&t64(&[1., 2., 3.], &[3])?).is_err());
    Ok(())
}

// ---- dtype conversion and readback ----

#[test]
fn to_dtype_round_trips_and_rounds() -> R {
    // f32 -> f64 is exact, so back to f32 gives the same bits.
    let data = [0.1f32, -3.75, 1e30, f32::MIN_POSITIVE, 16777215.0];
    let x = t32(&data, &[5])?;
    let back = x.to_dtype(DType::F64)?.to_dtype(DType::F32)?;
    assert_eq!(back.to_vec::<f32>()?, data.to_vec());
    assert_eq!(
        x.to_dtype(DType::F64)?.to_vec::<f64>()?,
        data.iter().map(|&v| v as f64).collect::<Vec<_>>()
    );
    // f32 -> f16: 0.1 lies in [2^-4, 2^-3) where f16's spacing is 2^-14; 0.1 * 2^14 = 1638.4
    // -> 1638 * 2^-14 = 0.0999755859375. 1 + 2^-11 ties to 1.0; 1e5 is past 65504 -> inf.
    let h = t32(&[0.1, 1.0 + 2f32.powi(-11), 1e5, -2.5], &[4])?.to_dtype(DType::F16)?;
    assert_eq!(h.dtype(), DType::F16);
    close(
        &values(&h)?,
        &[0.0999755859375, 1.0, f64::INFINITY, -2.5],
        0.0,
    );
    // f32 -> u8 truncates toward zero and saturates at 0 and 255.
    let bytes = t32(&[3.7, 0.2, 255.9, -1.0, 300.0], &[5])?.to_dtype(DType::U8)?;
    assert_eq!(bytes.to_vec::<u8>()?, vec![3, 0, 255, 0, 255]);
    assert_eq!(
        t32(&[3.99, 7.0], &[2])?
            .to_dtype(DType::U32)?
            .to_vec::<u32>()?,
        vec![3, 7]
    );
    // u8 -> f32 is exact; from a transposed view too.
    let m = Tensor::from_slice(&[0u8, 1, 254, 255], [2, 2], CPU)?;
    assert_eq!(
        m.t()?.to_dtype(DType::F32)?.to_vec::<f32>()?,
        vec![0., 254., 1., 255.]
    );
    // Converting to the same dtype is the same tensor.
    assert!(x.to_dtype(DType::F32)?.shares_storage_with(&x));
    Ok(())
}

#[test]
fn readback_checks_dtype_and_size() -> R {
    let x = t32(&[1., 2.], &[2])?;
    assert!(matches!(
        x.to_vec::<f64>(),
        Err(Error::DTypeMismatch {
            lhs: DType::F32,
            rhs: DType::F64,
            ..
        })
    ));
    assert!(x.to_vec::<u8>().is_err());
    error_mentions(x.to_scalar::<f32>(), &["to_scalar", "[2]"]);
    assert_eq!(t32(&[4.], &[1, 1])?.to_scalar::<f32>()?, 4.0);
    assert_eq!(Tensor::scalar(7u32, CPU)?.to_scalar::<u32>()?, 7);
    assert!(Tensor::scalar(7u32, CPU)?.to_scalar::<f32>().is_err());
    error_mentions(
        Tensor::from_vec(vec![1f32; 5], [2, 3], CPU),
        &["5", "[2, 3]"],
    );
    Ok(())
}

// ---- devices ----

#[test]
fn cuda_is_an_error_not_a_panic() {
    if kiln_tensor::cuda::availability().is_ok() {
        // With a GPU, a device that does not exist is still an error value.
        let err = Tensor::zeros([2], DType::F32, Device::Cuda(1000)).unwrap_err();
        assert!(err.to_string().contains("cuda:1000"), "{err}");
        return;
    }
    let err = Tensor::zeros([2], DType::F32, Device::Cuda(0)).unwrap_err();
    assert!(matches!(
        err,
        Error::DeviceUnavailable {
            device: Device::Cuda(0),
            ..
        }
    ));
    assert!(err.to_string().contains("cuda:0"), "{err}");
    assert!(Tensor::from_vec(vec![1f32], [1], Device::Cuda(1)).is_err());
    assert!(Tensor::scalar(1f64, Device::Cuda(0)).is_err());
}

#[test]
fn devices_parse_and_print() -> R {
    assert_eq!("cuda:1".parse::<Device>()?, Device::Cuda(1));
    assert_eq!("cuda".parse::<Device>()?, Device::Cuda(0));
    assert_eq!("cpu".parse::<Device>()?, Device::Cpu);
    error_mentions("tpu".parse::<Device>(), &["tpu"]);
    assert!("cuda:x".parse::<Device>().is_err());
    assert!("cuda:".parse::<Device>().is_err());
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    assert_eq!(Device::Cpu.to_string().parse::<Device>()?, Device::Cpu);
    Ok(())
}

// ---- Var ----

#[test]
fn var_set_is_seen_through_earlier_views_only() -> R {
    let initial = t32(&[1., 2., 3., 4.], &[2, 2])?;
    let v = Var::new(&initial)?;
    assert!(v.requires_grad());
    let view = v.t()?; // made before the update
    let before = v.mul_scalar(10.0)?; // computed before the update
    v.set(&t32(&[5., 6., 7., 8.], &[2, 2])?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![5., 6., 7., 8.]);
    assert_eq!(view.to_vec::<f32>()?, vec![5., 7., 6., 8.]);
    assert_eq!(before.to_vec::<f32>()?, vec![10., 20., 30., 40.]);
    // Var::new copied: the tensor it was made from is untouched.
    assert_eq!(initial.to_vec::<f32>()?, vec![1., 2., 3., 4.]);
    // Setting from a view of itself (an in-place transpose).
    v.set(&v.t()?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![5., 7., 6., 8.]);
    Ok(())
}

#[test]
fn var_set_owned_moves_a_fresh_tensor_in_and_copies_anything_shared() -> R {
    let v = Var::new(&iota(&[2, 2])?)?;
    let view = v.t()?; // made before the updates: sees each one, as with `set`
    let before = v.mul_scalar(10.0)?;
    // A fresh, whole tensor: its storage moves in.
    v.set_owned(t32(&[5., 6., 7., 8.], &[2, 2])?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![5., 6., 7., 8.]);
    assert_eq!(view.to_vec::<f32>()?, vec![5., 7., 6., 8.]);
    assert_eq!(before.to_vec::<f32>()?, vec![0., 10., 20., 30.]);
    // A tensor someone else still holds: copied, so the other handle keeps its values.
    let kept = t32(&[1., 1., 2., 2.], &[2, 2])?;
    v.set_owned(kept.clone())?;
    v.set_owned(v.add_scalar(1.0)?)?;
    assert_eq!(kept.to_vec::<f32>()?, vec![1., 1., 2., 2.]);
    assert_eq!(v.to_vec::<f32>()?, vec![2., 2., 3., 3.]);
    // A part of a larger storage, and a view of the variable itself: copied.
    v.set_owned(iota(&[8])?.narrow(0, 4, 4)?.reshape([2, 2])?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![4., 5., 6., 7.]);
    v.set_owned(v.t()?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![4., 6., 5., 7.]);
    // The same checks as `set`.
    error_mentions(v.set_owned(iota(&[4])?), &["[2, 2]", "[4]"]);
    Ok(())
}

#[test]
fn var_set_checks_shape_and_dtype() -> R {
    let v = Var::new(&iota(&[2, 2])?)?;
    error_mentions(v.set(&iota(&[4])?), &["[2, 2]", "[4]"]);
    error_mentions(
        v.set(&iota(&[2, 2])?.to_dtype(DType::F64)?),
        &["f32", "f64"],
    );
    assert_eq!(v.to_vec::<f32>()?, vec![0., 1., 2., 3.]);
    // A Var made from a view holds that view's values, contiguously.
    let w = Var::new(&iota(&[2, 2])?.t()?)?;
    assert!(w.is_contiguous());
    assert_eq!(w.to_vec::<f32>()?, vec![0., 2., 1., 3.]);
    assert!(Var::new(&idx(&[1], &[1])?).is_err());
    Ok(())
}

// ---- large inputs (the parallel paths, > 32768 elements) ----

const ROWS: usize = 300;
const COLS: usize = 200;

/// Small integers, exact in f32: x[i][j] = (31i + 17j) mod 101 - 50.
fn big_values(salt: usize) -> Vec<f32> {
    (0..ROWS * COLS)
        .map(|n| (((n / COLS) * 31 + (n % COLS) * 17 + salt) % 101) as f32 - 50.0)
        .collect()
}

#[test]
fn large_elementwise_ops_match_sequential_loops() -> R {
    let (a, b) = (big_values(0), big_values(7));
    let ta = t32(&a, &[ROWS, COLS])?;
    let tb = t32(&b, &[ROWS, COLS])?;
    let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(ta.add(&tb)?.to_vec::<f32>()?, sum);
    let relu: Vec<f32> = a.iter().map(|&x| x.max(0.0)).collect();
    assert_eq!(ta.relu()?.to_vec::<f32>()?, relu);
    // A column broadcast across rows (the row-against-scalar path): x[i][j] * c[i].
    let c: Vec<f32> = (0..ROWS).map(|i| (i % 7) as f32).collect();
    let scaled: Vec<f32> = (0..ROWS * COLS).map(|n| a[n] * c[n / COLS]).collect();
    assert_eq!(ta.mul(&t32(&c, &[ROWS, 1])?)?.to_vec::<f32>()?, scaled);
    // Mixed strides: a + bᵀᵀ where the right side is a transposed copy read through a view.
    let tb_view = tb.t()?.contiguous()?.t()?;
    assert_eq!(ta.add(&tb_view)?.to_vec::<f32>()?, sum);
    // Comparison masks.
    let gt: Vec<u8> = a.iter().zip(&b).map(|(x, y)| (x > y) as u8).collect();
    assert_eq!(ta.gt(&tb)?.to_vec::<u8>()?, gt);
    Ok(())
}

#[test]
fn sums_and_maxima_over_leading_dims_match_the_general_walk_to_the_bit() -> R {
    // Irrational-ish values, so a different order of f64 additions would show in the bits.
    let mut rng = kiln_tensor::Generator::new(5);
    let x = Tensor::randn([3, 500, 700], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng)?;
    // The same values laid out backwards: a reduction over them takes the general walk.
    let strided = x.permute(&[2, 1, 0])?.contiguous()?.permute(&[2, 1, 0])?;
    assert!(!strided.is_contiguous());
    for dims in [&[0][..], &[0, 1][..]] {
        let fast = x.sum(dims, false)?.to_vec::<f32>()?;
        let general = strided.sum(dims, false)?.to_vec::<f32>()?;
        assert!(fast_eq(&fast, &general));
        let fast = x.max(dims, false)?.to_vec::<f32>()?;
        assert_eq!(fast, strided.max(dims, false)?.to_vec::<f32>()?);
        // One thread: the same bits as the parallel cut into column ranges.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let single = pool.install(|| x.sum(dims, false)?.to_vec::<f32>())?;
        assert!(fast_eq(&single, &x.sum(dims, false)?.to_vec::<f32>()?));
    }
    // NaN wins a column's maximum wherever it is.
    let mut values = vec![1.0f32; 4 * 300];
    values[2 * 300 + 7] = f32::NAN;
    let maxima = t32(&values, &[4, 300])?.max(&[0], false)?.to_vec::<f32>()?;
    assert!(maxima[7].is_nan() && maxima.iter().filter(|m| m.is_nan()).count() == 1);
    Ok(())
}

fn fast_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn large_transpose_copy_and_unary_of_a_view() -> R {
    let a = big_values(3);
    let ta = t32(&a, &[ROWS, COLS])?;
    // t[j][i] = a[i][j]
    let mut expected = vec![0.0f32; ROWS * COLS];
    for i in 0..ROWS {
        for j in 0..COLS {
            expected[j * ROWS + i] = a[i * COLS + j];
        }
    }
    assert_eq!(ta.t()?.contiguous()?.to_vec::<f32>()?, expected);
    let relu_t: Vec<f32> = expected.iter().map(|&x| x.max(0.0)).collect();
    assert_eq!(ta.t()?.relu()?.to_vec::<f32>()?, relu_t);
    let doubled: Vec<f64> = expected.iter().map(|&x| 2.0 * x as f64).collect();
    assert_eq!(values(&ta.t()?.affine(2.0, 0.0)?)?, doubled);
    let as_f64: Vec<f64> = expected.iter().map(|&x| x as f64).collect();
    assert_eq!(ta.t()?.to_dtype(DType::F64)?.to_vec::<f64>()?, as_f64);
    Ok(())
}

#[test]
fn large_reductions_match_sequential_sums() -> R {
    let a = big_values(5);
    let ta = t32(&a, &[ROWS, COLS])?;
    let mut row_sums = vec![0.0f32; ROWS];
    let mut col_sums = vec![0.0f32; COLS];
    let mut col_max = vec![f32::NEG_INFINITY; COLS];
    for i in 0..ROWS {
        for j in 0..COLS {
            let x = a[i * COLS + j];
            row_sums[i] += x;
            col_sums[j] += x;
            col_max[j] = col_max[j].max(x);
        }
    }
    assert_eq!(ta.sum(&[1], false)?.to_vec::<f32>()?, row_sums);
    assert_eq!(ta.sum(&[0], false)?.to_vec::<f32>()?, col_sums);
    assert_eq!(ta.t()?.sum(&[1], false)?.to_vec::<f32>()?, col_sums);
    assert_eq!(ta.max(&[0], false)?.to_vec::<f32>()?, col_max);
    let total: f32 = row_sums.iter().sum();
    assert_eq!(ta.sum_all()?.to_scalar::<f32>()?, total);
    // Softmax rows of a large tensor still sum to 1.
    let p = ta.mul_scalar(0.1)?.softmax(1)?.to_vec::<f32>()?;
    for row in p.chunks(COLS) {
        let s: f64 = row.iter().map(|&x| x as f64).sum();
        assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
    }
    Ok(())
}

// ---- autograd basics ----

#[test]
fn gradient_of_a_product_sum() -> R {
    // d/dx sum(x * y) = y and d/dy = x.
    let x = t64(&[1., 2., 3.], &[3])?.track()?;
    let y = t64(&[4., 5., 6.], &[3])?.track()?;
    let grads = x.mul(&y)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![4., 5., 6.]);
    assert_eq!(grads.get(&y).unwrap().to_vec::<f64>()?, vec![1., 2., 3.]);
    Ok(())
}

#[test]
fn gradient_of_a_mean() -> R {
    // d/dx mean(x) = 1/n for each of n = 4 elements.
    let x = t64(&[1., -2., 3., 0.], &[2, 2])?.track()?;
    let grads = x.mean_all()?.backward()?;
    let g = grads.get(&x).unwrap();
    assert_eq!(g.dims(), &[2, 2]);
    assert_eq!(g.to_vec::<f64>()?, vec![0.25; 4]);
    // d/dx sum(mean(x, dim 1)) = 1/2 everywhere.
    let grads = x.mean(&[1], false)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![0.5; 4]);
    Ok(())
}

#[test]
fn gradients_accumulate_over_uses() -> R {
    // x * x uses x twice: d/dx sum(x^2) = 2x.
    let x = t64(&[1., -2., 3.], &[3])?.track()?;
    let grads = x.mul(&x)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![2., -4., 6.]);
    // sum(x) + sum(3x): 1 + 3 = 4 each.
    let grads = x
        .sum_all()?
        .add(&x.mul_scalar(3.0)?.sum_all()?)?
        .backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![4.; 3]);
    // Through a broadcast: sum(b + m) for b [3] and m [2, 3] gives b the gradient 2.
    let b = t64(&[1., 2., 3.], &[3])?.track()?;
    let m = iota(&[2, 3])?.to_dtype(DType::F64)?.track()?;
    let grads = b.add(&m)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&b).unwrap().to_vec::<f64>()?, vec![2.; 3]);
    assert_eq!(grads.get(&m).unwrap().to_vec::<f64>()?, vec![1.; 6]);
    Ok(())
}

#[test]
fn gradient_of_a_matmul() -> R {
    // d/da sum(a b) = 1 bᵀ: every row is b's row sums [7 + 8, 9 + 10, 11 + 12].
    // d/db sum(a b) = aᵀ 1: every column is a's column sums [1 + 4, 2 + 5, 3 + 6].
    let a = t64(&[1., 2., 3., 4., 5., 6.], &[2, 3])?.track()?;
    let b = t64(&[7., 8., 9., 10., 11., 12.], &[3, 2])?.track()?;
    let grads = a.matmul(&b)?.sum_all()?.backward()?;
    assert_eq!(
        grads.get(&a).unwrap().to_vec::<f64>()?,
        vec![15., 19., 23., 15., 19., 23.]
    );
    assert_eq!(
        grads.get(&b).unwrap().to_vec::<f64>()?,
        vec![5., 5., 7., 7., 9., 9.]
    );
    Ok(())
}

#[test]
fn detach_and_no_grad_stop_tracking() -> R {
    // sum(x * detach(x)) treats the second factor as a constant: the gradient is x, not 2x.
    let x = t64(&[1., -2., 3.], &[3])?.track()?;
    let grads = x.mul(&x.detach())?.sum_all()?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![1., -2., 3.]);
    assert!(!x.detach().is_tracked());
    // Inside no_grad nothing is recorded, and grad mode comes back afterwards.
    let y = no_grad(|| x.mul(&x))?;
    assert!(!y.is_tracked());
    assert_eq!(y.to_vec::<f64>()?, vec![1., 4., 9.]);
    assert!(kiln_tensor::is_grad_enabled());
    assert!(x.mul(&x)?.is_tracked());
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    // A leaf that does not feed the output gets no gradient.
    let unused = t64(&[1.], &[1])?.track()?;
    let grads = x.sum_all()?.backward()?;
    assert!(grads.get(&unused).is_none());
    Ok(())
}

#[test]
fn backward_and_track_reject_bad_inputs() -> R {
    let x = t64(&[1., 2.], &[2])?.track()?;
    error_mentions(x.mul_scalar(2.0)?.backward(), &["backward", "[2]"]);
    assert!(matches!(
        idx(&[1, 2], &[2])?.track(),
        Err(Error::UnsupportedDType {
            dtype: DType::U32,
            ..
        })
    ));
    // A one-element tensor of any rank is fine.
    let grads = x.sum(&[0], true)?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![1., 1.]);
    Ok(())
}

// ---- properties ----

proptest! {
    #[test]
    fn matmul_matches_the_triple_loop(
        m in 1usize..6, k in 1usize..6, n in 1usize..6, seed in 0usize..1000,
    ) {
        // Integers below 8 in magnitude: exact in f32.
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 + seed) % 15) as f64 - 7.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 + seed * 3) % 15) as f64 - 7.0).collect();
        let got = t64(&a, &[m, k]).unwrap().to_dtype(DType::F32).unwrap()
            .matmul(&t64(&b, &[k, n]).unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        prop_assert_eq!(values(&got).unwrap(), naive_matmul(&a, &b, m, k, n));
    }

    #[test]
    fn transposed_copy_is_the_row_major_transpose(rows in 1usize..9, cols in 1usize..9) {
        let x = iota(&[rows, cols]).unwrap();
        let mut expected = Vec::new();
        for j in 0..cols {
            for i in 0..rows {
                expected.push((i * cols + j) as f32);
            }
        }
        prop_assert_eq!(x.t().unwrap().contiguous().unwrap().to_vec::<f32>().unwrap(), expected);
    }
}

// ---- deep graphs ----

#[test]
fn a_graph_200k_ops_deep_backpropagates_and_drops() -> R {
    // Neither the backward walk nor freeing the graph may recurse once per op: test threads
    // have 2 MiB stacks, which 200K nested drops would overflow.
    let x = Var::new(&Tensor::from_vec(vec![1.0f32], [1], Device::Cpu)?)?;
    let mut y = x.as_tensor().clone();
    for _ in 0..200_000 {
        y = y.mul_scalar(1.0)?;
    }
    let grads = y.sum_all()?.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec::<f32>()?, vec![1.0]);
    drop(y);
    Ok(())
}

#[test]
fn squeeze_and_unsqueeze_are_views_of_strided_data() -> R {
    // A transposed [3, 1, 2] -> [2, 1, 3]: squeezing and unsqueezing must not copy.
    let x = Tensor::from_vec((0..6).map(|v| v as f32).collect(), [3, 1, 2], Device::Cpu)?;
    let t = x.permute(&[2, 1, 0])?;
    let squeezed = t.squeeze(1)?; // [2, 3]: [[0, 2, 4], [1, 3, 5]]
    assert!(squeezed.shares_storage_with(&x));
    assert_eq!(
        squeezed.to_vec::<f32>()?,
        vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    );
    let unsqueezed = squeezed.unsqueeze(2)?; // [2, 3, 1]
    assert!(unsqueezed.shares_storage_with(&x));
    assert_eq!(unsqueezed.dims(), &[2, 3, 1]);
    assert_eq!(
        unsqueezed.to_vec::<f32>()?,
        vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    );
    // A broadcast stays a broadcast (stride 0), not a materialized copy.
    let row = Tensor::from_vec(vec![1.0f32, 2.0], [2], Device::Cpu)?.broadcast_as([4, 2])?;
    assert!(row.unsqueeze(0)?.shares_storage_with(&row));
    Ok(())
}

#[test]
fn a_transposed_weight_gets_a_row_major_gradient() -> kiln_tensor::Result<()> {
    // y = x·Wᵀ (a Linear layer): W's gradient gᵀ·x comes back row-major, so optimizer ops on
    // it stream through memory. Values: x = [[1, 2]], g = ones [1, 3] → dW[i][j] = x[j].
    let x = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2], Device::Cpu)?;
    let w = Var::new(&Tensor::zeros([3, 2], DType::F32, Device::Cpu)?)?;
    let grads = x.matmul(&w.t()?)?.sum_all()?.backward()?;
    let dw = grads.get(&w).unwrap();
    assert!(dw.is_contiguous());
    assert_eq!(dw.to_vec::<f32>()?, vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
    Ok(())
}

// ---- fused matrix product ----

/// `activation(pre)` by the unary op of its name.
/// Every activation a fused op applies, a leaky ReLU's with slope 0.2.
const ACTIVATIONS: [Activation; 5] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu(0.2),
    Activation::Tanh,
    Activation::Sigmoid,
];

fn activated(pre: &Tensor, activation: Activation) -> kiln_tensor::Result<Tensor> {
    match activation {
        Activation::Identity => Ok(pre.clone()),
        Activation::Relu => pre.relu(),
        Activation::LeakyRelu(slope) => pre.leaky_relu(slope),
        Activation::Tanh => pre.tanh(),
        Activation::Sigmoid => pre.sigmoid(),
    }
}

#[test]
fn matmul_bias_act_is_the_composition() -> R {
    let x = Tensor::from_vec(
        (0..6).map(|v| v as f32 * 0.5 - 1.0).collect(),
        [2, 3],
        Device::Cpu,
    )?;
    let w = Tensor::from_vec(
        (0..12).map(|v| 0.3 - v as f32 * 0.1).collect(),
        [3, 4],
        Device::Cpu,
    )?;
    let b = Tensor::from_vec(vec![0.5f32, -0.25, 0.0, 1.0], [4], Device::Cpu)?;
    for activation in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ] {
        let expected = activated(&x.matmul(&w)?.add(&b)?, activation)?;
        let fused = x.matmul_bias_act(&w, Some(&b), activation)?;
        assert_eq!(
            fused.to_vec::<f32>()?,
            expected.to_vec::<f32>()?,
            "{activation:?}"
        );
        // Transposed operands and no bias.
        let fused = w.t()?.matmul_bias_act(&x.t()?, None, activation)?;
        assert_eq!(fused.dims(), &[4, 2]);
    }
    let err = x
        .matmul_bias_act(&w, Some(&b.narrow(0, 0, 3)?), Activation::Relu)
        .unwrap_err();
    assert!(
        err.to_string().contains("expected shape [4], got [3]"),
        "{err}"
    );
    let err = x
        .matmul_bias_act(&w, None, Activation::LeakyRelu(-0.1))
        .unwrap_err();
    assert!(err.to_string().contains("slope must be >= 0"), "{err}");
    let err = x
        .matmul_bias_act(&w.t()?, None, Activation::Relu)
        .unwrap_err();
    assert!(err.to_string().contains("cannot multiply"), "{err}");
    Ok(())
}

/// The fused convolution gives the composition's values and gradients to the last bit, on
/// the direct kernels' tiles (16+ channels) and on the GEMM-based ones (a few channels),
/// forward and transposed, with and without a bias, for each activation.
#[test]
fn conv_bias_act_is_the_composition() -> R {
    use kiln_tensor::{Conv2dOptions, ConvTranspose2dOptions, Generator};
    let mut rng = Generator::new(7);
    let mut rand = |shape: &[usize]| -> kiln_tensor::Result<Tensor> {
        Tensor::rand(shape, DType::F32, Device::Cpu, &mut rng)?.affine(2.0, -1.0)
    };
    // (batch, in, size, out, kernel, stride, padding)
    for (n, c, size, oc, k, stride, padding) in [(3, 16, 9, 32, 4, 2, 1), (2, 3, 7, 2, 3, 1, 1)] {
        for transposed in [false, true] {
            let (x, w) = if transposed {
                (rand(&[n, c, size, size])?, rand(&[c, oc, k, k])?)
            } else {
                (rand(&[n, c, size, size])?, rand(&[oc, c, k, k])?)
            };
            let (x, w, b) = (Var::new(&x)?, Var::new(&w)?, Var::new(&rand(&[oc])?)?);
            let forward = Conv2dOptions {
                stride: [stride; 2],
                padding: [padding; 2],
                ..Default::default()
            };
            let backward = ConvTranspose2dOptions {
                stride: [stride; 2],
                padding: [padding; 2],
                ..Default::default()
            };
            for activation in ACTIVATIONS {
                for bias in [Some(b.as_tensor()), None] {
                    let (fused, mut pre) = if transposed {
                        let fused = x.conv_transpose2d_bias_act(&w, bias, backward, activation)?;
                        (fused, x.conv_transpose2d(&w, backward)?)
                    } else {
                        let fused = x.conv2d_bias_act(&w, bias, forward, activation)?;
                        (fused, x.conv2d(&w, forward)?)
                    };
                    if let Some(bias) = bias {
                        pre = pre.add(&bias.reshape([1, oc, 1, 1])?)?;
                    }
                    let composed = activated(&pre, activation)?;
                    let case = format!(
                        "{c}->{oc} transposed {transposed} {activation:?} bias {}",
                        bias.is_some()
                    );
                    assert_eq!(fused.to_vec::<f32>()?, composed.to_vec::<f32>()?, "{case}");
                    // A gradient that is not all ones, so each input's rule is seen.
                    let weights = rand(fused.dims())?;
                    let fused_grads = fused.mul(&weights)?.sum_all()?.backward()?;
                    let composed_grads = composed.mul(&weights)?.sum_all()?.backward()?;
                    for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                        let (got, want) = (fused_grads.get(v), composed_grads.get(v));
                        assert_eq!(got.is_some(), want.is_some(), "{case}: {name}");
                        if let (Some(got), Some(want)) = (got, want) {
                            assert_eq!(
                                got.to_vec::<f32>()?,
                                want.to_vec::<f32>()?,
                                "{case}: {name}"
                            );
                        }
                    }
                }
            }
        }
    }
    let (x, w) = (rand(&[1, 2, 5, 5])?, rand(&[3, 2, 3, 3])?);
    let options = Conv2dOptions::default();
    let err = x
        .conv2d_bias_act(&w, Some(&rand(&[2])?), options, Activation::Relu)
        .unwrap_err();
    assert!(
        err.to_string().contains("expected shape [3], got [2]"),
        "{err}"
    );
    let err = x
        .conv2d_bias_act(&w, None, options, Activation::LeakyRelu(-0.1))
        .unwrap_err();
    assert!(err.to_string().contains("slope must be >= 0"), "{err}");
    let err = x
        .conv2d_bias_act(&rand(&[3, 4, 3, 3])?, None, options, Activation::Relu)
        .unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
    Ok(())
}

/// `batch_norm_train_act` equals batch norm then the activation's op, values and the
/// gradients of x, weight and bias bit for bit: f32 and f64 (the fused kernels) and f16 (the
/// composition), planes of many values (the fused backward's runs) and of one
/// (`[N, C]`, BatchNorm1d's), with and without the affine map, for each activation.
#[test]
fn batch_norm_train_act_is_the_composition() -> R {
    use kiln_tensor::Generator;
    let mut rng = Generator::new(11);
    for dtype in [DType::F32, DType::F64, DType::F16] {
        let values = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec::<f64>();
        for dims in [vec![4, 3, 5, 6], vec![16, 7]] {
            let c = dims[1];
            let mut rand = |shape: &[usize]| -> kiln_tensor::Result<Tensor> {
                Tensor::rand(shape, DType::F32, Device::Cpu, &mut rng)?
                    .affine(2.0, -1.0)?
                    .to_dtype(dtype)
            };
            let (x, weight, bias) = (
                Var::new(&rand(&dims)?)?,
                Var::new(&rand(&[c])?)?,
                Var::new(&rand(&[c])?)?,
            );
            let weights = rand(&dims)?;
            for activation in ACTIVATIONS {
                for affine in [true, false] {
                    let (w, b) = if affine {
                        (Some(weight.as_tensor()), Some(bias.as_tensor()))
                    } else {
                        (None, None)
                    };
                    let (fused, mean, var) = x.batch_norm_train_act(w, b, 1e-5, activation)?;
                    let (pre, mean_c, var_c) = x.batch_norm_train(w, b, 1e-5)?;
                    let composed = activated(&pre, activation)?;
                    let case = format!("{dtype:?} {dims:?} {activation:?} affine {affine}");
                    assert_eq!(values(&fused)?, values(&composed)?, "{case}");
                    assert_eq!(values(&mean)?, values(&mean_c)?, "{case}");
                    assert_eq!(values(&var)?, values(&var_c)?, "{case}");
                    let fused_grads = fused.mul(&weights)?.sum_all()?.backward()?;
                    let composed_grads = composed.mul(&weights)?.sum_all()?.backward()?;
                    for (name, v) in [("x", &x), ("w", &weight), ("b", &bias)] {
                        let (got, want) = (fused_grads.get(v), composed_grads.get(v));
                        assert_eq!(got.is_some(), want.is_some(), "{case}: {name}");
                        if let (Some(got), Some(want)) = (got, want) {
                            assert_eq!(values(got)?, values(want)?, "{case}: {name}");
                        }
                    }
                }
            }
        }
    }
    let x = Tensor::ones([4, 2, 3], DType::F32, Device::Cpu)?;
    let err = x
        .batch_norm_train_act(None, None, 1e-5, Activation::LeakyRelu(-0.1))
        .unwrap_err();
    assert!(err.to_string().contains("slope must be >= 0"), "{err}");
    Ok(())
}

#[test]
fn matmul_precision_parses_and_sticks() -> R {
    assert_eq!("tf32".parse::<MatmulPrecision>()?, MatmulPrecision::Tf32);
    assert_eq!("bf16".parse::<MatmulPrecision>()?, MatmulPrecision::Bf16);
    assert!("fp16".parse::<MatmulPrecision>().is_err());
    assert_eq!(kiln_tensor::matmul_precision(), MatmulPrecision::Fp32);
    Ok(())
}

/// A CPU sum is the same to the last bit whatever the thread count: a row long enough to be
/// split over the threads gives what one thread's pass over it gives (issue 24's soak compares
/// a resumed run with an uninterrupted one bit for bit; issue 23 asks it of every reduction).
#[test]
fn a_long_sum_is_the_same_on_any_number_of_threads() -> R {
    // 4 rows of 300,000: one thread sums each row whole, more threads split each row (at
    // 262,144, a multiple of the 1,024-element blocks). Each row: 1e20 at 0, -1e20 at 262,144,
    // and 1 at every other multiple of 1,024. In order, the 255 ones between the two big values
    // vanish beside 1e20 and the 36 after them count: 36. Added as two partial sums (1e20, and
    // -1e20 + 36, in which the 36 vanish) the total would be 0.
    let row: Vec<f32> = (0..300_000)
        .map(|i| match i {
            0 => 1e20,
            262_144 => -1e20,
            i if i % 1024 == 0 => 1.0,
            _ => 0.0,
        })
        .collect();
    let data = row.repeat(4);
    let rows = t32(&data, &[4, 300_000])?;
    let whole = t32(&data, &[1_200_000])?;
    let on = |threads: usize| -> kiln_tensor::Result<(Vec<u32>, u32)> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let per_row = rows.sum(&[1], false)?.to_vec::<f32>()?;
            let all = whole.sum_all()?.to_vec::<f32>()?[0];
            Ok((per_row.iter().map(|x| x.to_bits()).collect(), all.to_bits()))
        })
    };
    let one = on(1)?;
    assert_eq!(one.0, [36f32.to_bits(); 4]);
    for threads in [2, 3, 8] {
        assert_eq!(on(threads)?, one, "{threads} threads");
    }
    Ok(())
}
