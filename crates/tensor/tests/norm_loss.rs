//! The fused batch norm (`Tensor::batch_norm_train`), group norm (`Tensor::group_norm`) and
//! binary cross-entropy with logits (`Tensor::bce_with_logits`) on the CPU against the
//! compositions of tensor ops they replace
//! (kiln-nn's formulas before the fusion, written out here): values and gradients. Gradient
//! checks by finite differences are in gradcheck.rs and higher_order.rs beside
//! this file.

use kiln_tensor::{DType, Device, Result, Tensor, Var};

/// Deterministic values in [-scale, scale) plus `offset` (a small LCG).
fn values(n: usize, seed: u64, scale: f64, offset: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            offset + ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f64, offset: f64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed, scale, offset), shape, Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes");
    for (i, (a, e)) in to_f64(actual).iter().zip(to_f64(expected)).enumerate() {
        let ok = (a.is_nan() && e.is_nan()) || *a == e || (a - e).abs() <= atol + rtol * e.abs();
        assert!(
            ok,
            "{what}: element {i}: {a} vs expected {e} (atol {atol}, rtol {rtol})"
        );
    }
}

/// kiln-nn's training-mode batch norm before the fusion: `(y, mean [C], biased var [C])`.
fn composite_batch_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let channels = x.dims()[1];
    let mut channel_dims = vec![1; x.rank()];
    channel_dims[1] = channels;
    let reduced: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let count = x.elem_count() / channels;
    let mean = x.mean(&reduced, true)?; // [1, C, 1, ..]
    let centered = x.sub(&mean)?;
    let var = centered
        .square()?
        .sum(&reduced, true)?
        .mul_scalar(1.0 / count as f64)?;
    let mut y = centered.div(&var.add_scalar(eps)?.sqrt()?)?;
    if let Some(weight) = weight {
        y = y.mul(&weight.reshape(channel_dims.clone())?)?;
    }
    if let Some(bias) = bias {
        y = y.add(&bias.reshape(channel_dims)?)?;
    }
    Ok((y, mean.reshape([channels])?, var.reshape([channels])?))
}

/// The gradients of one weighted sum through `y` and through `expected` (its composite),
/// for each present leaf, within `atol` and `rtol` (scaled up for f32: sums over a channel
/// round at ~count ulps).
fn assert_same_gradients(
    what: &str,
    (y, expected): (&Tensor, &Tensor),
    leaves: &[(&str, Option<&Var>)],
    (atol, rtol): (f64, f64),
) -> Result<()> {
    let project = tensor(y.dims(), 4, 1.0, 0.0, y.dtype());
    let grads = y.mul(&project)?.sum_all()?.backward()?;
    let expected = expected.mul(&project)?.sum_all()?.backward()?;
    let scale = if y.dtype() == DType::F64 { 1.0 } else { 50.0 };
    for &(name, leaf) in leaves {
        let Some(leaf) = leaf else { continue };
        let (g, e) = (grads.get(leaf).unwrap(), expected.get(leaf).unwrap());
        let what = format!("{what}: d{name}");
        assert_close(&what, g, e, atol * scale, rtol * scale);
    }
    Ok(())
}

/// The shapes batch norm meets in kiln's models and a few odd ones.
const SHAPES: &[&[usize]] = &[
    &[2, 3],
    &[64, 6272],
    &[64, 128, 7, 7],
    &[8, 64, 14, 14],
    &[1, 1, 5],
    &[3, 5, 1, 7],
];

#[test]
fn batch_norm_matches_the_composite_and_its_gradients() -> Result<()> {
    for &shape in SHAPES {
        for (dtype, atol, rtol) in [
            (DType::F64, 1e-12, 1e-12),
            (DType::F32, 2e-5, 2e-5),
            (DType::BF16, 0.1, 0.02),
            (DType::F16, 1e-2, 5e-3),
        ] {
            let c = shape[1];
            for affine in 0..4 {
                let x = Var::new(&tensor(shape, 1, 1.5, 0.3, dtype))?;
                let weight = Var::new(&tensor(&[c], 2, 0.5, 1.0, dtype))?;
                let bias = Var::new(&tensor(&[c], 3, 0.5, 0.0, dtype))?;
                let w = (affine & 1 == 1).then_some(weight.as_tensor());
                let b = (affine & 2 == 2).then_some(bias.as_tensor());
                let what = format!("{shape:?} {dtype} affine {affine}");
                let (y, mean, var) = x.batch_norm_train(w, b, 1e-5)?;
                let (ey, emean, evar) = composite_batch_norm(&x, w, b, 1e-5)?;
                assert_close(&format!("{what}: y"), &y, &ey, atol, rtol);
                assert_close(&format!("{what}: mean"), &mean, &emean, atol, rtol);
                assert_close(&format!("{what}: var"), &var, &evar, atol, rtol);
                if dtype != DType::F64 && dtype != DType::F32 {
                    continue;
                }
                let leaves = [
                    ("x", Some(&x)),
                    ("weight", w.map(|_| &weight)),
                    ("bias", b.map(|_| &bias)),
                ];
                assert_same_gradients(&what, (&y, &ey), &leaves, (atol, rtol))?;
            }
        }
    }
    Ok(())
}

/// Group norm written out in tensor ops: each sample's groups normalised over their channels
/// and positions with the biased variance, then the per-channel affine map.
fn composite_group_norm(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    let channels = dims[1];
    let grouped = x.reshape([dims[0], groups, x.elem_count() / (dims[0] * groups)])?;
    let mean = grouped.mean(&[2], true)?;
    let centered = grouped.sub(&mean)?;
    let var = centered.square()?.mean(&[2], true)?;
    let mut y = centered.div(&var.add_scalar(eps)?.sqrt()?)?.reshape(dims)?;
    let mut channel_dims = vec![1; x.rank()];
    channel_dims[1] = channels;
    if let Some(weight) = weight {
        y = y.mul(&weight.reshape(channel_dims.clone())?)?;
    }
    if let Some(bias) = bias {
        y = y.add(&bias.reshape(channel_dims)?)?;
    }
    Ok(y)
}

#[test]
fn group_norm_matches_the_composite_and_its_gradients() -> Result<()> {
    // The U-Net's shapes (past the kernels' parallel threshold), odd ones, one group (layer
    // norm) and a group per channel (instance norm), rank 2 to 4.
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 6, 4, 5], &[1, 2, 3, 6]),
        (&[64, 32, 7, 7], &[8]),
        (&[8, 16, 14, 14], &[4]),
        (&[3, 4, 7], &[2]),
        (&[4, 6], &[3]),
        (&[1, 1, 1, 1], &[1]),
    ];
    for &(shape, group_counts) in cases {
        for &groups in group_counts {
            for (dtype, atol, rtol) in [
                (DType::F64, 1e-12, 1e-12),
                (DType::F32, 2e-5, 2e-5),
                (DType::BF16, 0.1, 0.02),
                (DType::F16, 1e-2, 5e-3),
            ] {
                let c = shape[1];
                for affine in 0..4 {
                    let x = Var::new(&tensor(shape, 1, 1.5, 0.3, dtype))?;
                    let weight = Var::new(&tensor(&[c], 2, 0.5, 1.0, dtype))?;
                    let bias = Var::new(&tensor(&[c], 3, 0.5, 0.0, dtype))?;
                    let w = (affine & 1 == 1).then_some(weight.as_tensor());
                    let b = (affine & 2 == 2).then_some(bias.as_tensor());
                    let what = format!("{shape:?} {groups} groups {dtype} affine {affine}");
                    let y = x.group_norm(groups, w, b, 1e-5)?;
                    let expected = composite_group_norm(&x, groups, w, b, 1e-5)?;
                    assert_close(&format!("{what}: y"), &y, &expected, atol, rtol);
                    if dtype != DType::F64 && dtype != DType::F32 {
                        continue;
                    }
                    let leaves = [
                        ("x", Some(&x)),
                        ("weight", w.map(|_| &weight)),
                        ("bias", b.map(|_| &bias)),
                    ];
                    assert_same_gradients(&what, (&y, &expected), &leaves, (atol, rtol))?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn group_norm_of_strided_and_empty_inputs() -> Result<()> {
    // [N, C, H, W] read from NHWC memory: the same bits as its contiguous copy, gradients too.
    let nhwc = Var::new(&tensor(&[4, 5, 6, 6], 5, 2.0, 0.0, DType::F32))?;
    let strided = nhwc.permute(&[0, 3, 1, 2])?;
    assert!(!strided.is_contiguous());
    let copy = Var::new(&strided.contiguous()?.detach())?;
    let weight = tensor(&[6], 6, 0.5, 1.0, DType::F32);
    let bias = tensor(&[6], 7, 0.5, 0.0, DType::F32);
    let project = tensor(strided.dims(), 8, 1.0, 0.0, DType::F32);
    let outputs = [&strided, copy.as_tensor()].map(|x| {
        let y = x.group_norm(3, Some(&weight), Some(&bias), 1e-5).unwrap();
        let grads = y
            .mul(&project)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (y, grads)
    });
    let [(y, grads), (ey, egrads)] = &outputs;
    assert_close("y", y, ey, 0.0, 0.0);
    let dx = grads.get(&nhwc).unwrap().permute(&[0, 3, 1, 2])?;
    assert_close("dx", &dx, egrads.get(&copy).unwrap(), 0.0, 0.0);
    // No samples, or no positions: an empty result of the input's shape.
    for shape in [[0, 6, 3], [2, 6, 0]] {
        let empty = Tensor::zeros(shape, DType::F32, Device::Cpu)?;
        let y = empty.group_norm(2, Some(&weight), Some(&bias), 1e-5)?;
        assert_eq!(y.dims(), shape);
    }
    // Channels that do not split, a bad weight: one-line errors.
    let x = tensor(&[2, 6, 3], 9, 1.0, 0.0, DType::F32);
    let errors = [
        x.group_norm(4, None, None, 1e-5).unwrap_err().to_string(),
        x.group_norm(2, Some(&bias.reshape([2, 3])?), None, 1e-5)
            .unwrap_err()
            .to_string(),
    ];
    assert!(
        errors[0].contains("6 channels do not split into 4 groups"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("weight should be [6]"), "{}", errors[1]);
    Ok(())
}

#[test]
fn batch_norm_of_strided_inputs_matches_its_contiguous_copy() -> Result<()> {
    // [N, C, H, W] read from NHWC memory, and a transposed [N, C].
    let nhwc = Var::new(&tensor(&[4, 5, 6, 3], 5, 2.0, 0.0, DType::F32))?;
    let transposed = Var::new(&tensor(&[7, 4], 6, 2.0, 1.0, DType::F32))?;
    let cases = [
        (nhwc.permute(&[0, 3, 1, 2])?, &nhwc),
        (transposed.t()?, &transposed),
    ];
    for (strided, x) in cases {
        assert!(!strided.is_contiguous());
        let (y, mean, var) = strided.batch_norm_train(None, None, 1e-5)?;
        let (ey, emean, evar) = strided
            .contiguous()?
            .detach()
            .batch_norm_train(None, None, 1e-5)?;
        assert_close("y", &y, &ey, 0.0, 0.0);
        assert_close("mean", &mean, &emean, 0.0, 0.0);
        assert_close("var", &var, &evar, 0.0, 0.0);
        let project = tensor(strided.dims(), 8, 1.0, 0.0, DType::F32);
        // d sum(out·project) / dx.
        let dx = |out: &Tensor| -> Result<Tensor> {
            Ok(out
                .mul(&project)?
                .sum_all()?
                .backward()?
                .get(x)
                .unwrap()
                .clone())
        };
        let (cy, _, _) = composite_batch_norm(&strided, None, None, 1e-5)?;
        let (dx, edx) = (dx(&y)?, dx(&cy)?);
        assert_close("dx", &dx, &edx, 1e-4, 1e-4);
    }
    Ok(())
}

#[test]
fn batch_norm_statistics_do_not_cancel() -> Result<()> {
    // Channels at 1e4 with noise of 1e-2, and constant channels: var exactly 0, y exactly 0.
    let x = tensor(&[64, 8, 7, 7], 9, 1e-2, 1e4, DType::F64);
    let (_, mean, var) = x.to_dtype(DType::F32)?.batch_norm_train(None, None, 1e-5)?;
    // The f32 inputs' own statistics in f64, independently of kiln's kernels.
    let rounded = to_f64(&x.to_dtype(DType::F32)?);
    let per_channel = 49;
    for c in 0..8 {
        let values: Vec<f64> = (0..64)
            .flat_map(|n| {
                let start = (n * 8 + c) * per_channel;
                rounded[start..start + per_channel].to_vec()
            })
            .collect();
        let m = values.iter().sum::<f64>() / values.len() as f64;
        let v = values.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / values.len() as f64;
        let (got_m, got_v) = (to_f64(&mean)[c], to_f64(&var)[c]);
        assert!(
            (got_m - m).abs() <= 1e-3,
            "channel {c}: mean {got_m} vs {m}"
        );
        assert!(
            (got_v - v).abs() <= 1e-6 * v.max(1e-30) + 1e-12,
            "channel {c}: var {got_v} vs {v}"
        );
    }
    let constant = Tensor::full(3.25, [5, 4, 3], DType::F32, Device::Cpu)?;
    let (y, mean, var) = constant.batch_norm_train(None, None, 1e-5)?;
    assert!(to_f64(&var).iter().all(|&v| v == 0.0));
    assert!(to_f64(&mean).iter().all(|&m| m == 3.25));
    assert!(to_f64(&y).iter().all(|&v| v == 0.0));
    Ok(())
}

#[test]
fn batch_norm_rejects_bad_inputs() {
    let x = Tensor::zeros([4, 3], DType::F32, Device::Cpu).unwrap();
    let vector = Tensor::zeros([4], DType::F32, Device::Cpu).unwrap();
    let err = x
        .batch_norm_train(Some(&vector), None, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3]") && err.contains("[4]"), "{err}");
    let err = vector
        .batch_norm_train(None, None, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[N, C, ..]"), "{err}");
    let empty = Tensor::zeros([0, 3], DType::F32, Device::Cpu).unwrap();
    assert!(empty.batch_norm_train(None, None, 1e-5).is_err());
}

/// Logits of every kind: ordinary, large, ±inf, NaN, signed zeros; targets in [0, 1].
fn extreme_logits() -> (Vec<f64>, Vec<f64>) {
    let mut logits = vec![
        0.0,
        -0.0,
        1e-8,
        -1e-8,
        0.5,
        -0.5,
        3.0,
        -3.0,
        17.0,
        -17.0,
        88.0,
        -88.0,
        100.0,
        -100.0,
        1e4,
        -1e4,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    logits.extend(values(101, 11, 8.0, 0.0));
    let targets = values(logits.len(), 12, 0.5, 0.5);
    (logits, targets)
}

#[test]
fn bce_with_logits_is_the_composite_bit_for_bit() -> Result<()> {
    let (logits, targets) = extreme_logits();
    let n = logits.len();
    for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
        let x = Tensor::from_vec(logits.clone(), [n], Device::Cpu)?.to_dtype(dtype)?;
        let y = Tensor::from_vec(targets.clone(), [n], Device::Cpu)?.to_dtype(dtype)?;
        let fused = x.bce_with_logits(&y)?;
        let composite = x.softplus()?.sub(&x.mul(&y)?)?;
        let (a, b) = (to_f64(&fused), to_f64(&composite));
        for i in 0..n {
            assert!(
                a[i].to_bits() == b[i].to_bits() || (a[i].is_nan() && b[i].is_nan()),
                "{dtype}: logit {} target {}: {} vs composite {}",
                logits[i],
                targets[i],
                a[i],
                b[i]
            );
        }
        // A strided pair (reversed views) gives the same values.
        let reversed = |t: &Tensor| -> Result<Tensor> {
            t.reshape([1, n])?
                .broadcast_as([2, n])?
                .t()?
                .narrow(1, 1, 1)?
                .reshape([n])
        };
        let strided = reversed(&x)?.bce_with_logits(&reversed(&y)?)?;
        assert_eq!(
            to_f64(&strided)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn bce_with_logits_gradients_match_the_composite() -> Result<()> {
    let (logits, targets) = extreme_logits();
    let n = logits.len();
    let finite: Vec<usize> = (0..n).filter(|&i| logits[i].is_finite()).collect();
    let pick = |v: &[f64]| finite.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let m = finite.len();
    for (dtype, tolerance) in [(DType::F64, 1e-15), (DType::F32, 1e-7)] {
        let x = Var::new(&Tensor::from_vec(pick(&logits), [m], Device::Cpu)?.to_dtype(dtype)?)?;
        let y = Var::new(&Tensor::from_vec(pick(&targets), [m], Device::Cpu)?.to_dtype(dtype)?)?;
        let project = tensor(&[m], 13, 1.0, 0.0, dtype);
        let fused = x
            .bce_with_logits(&y)?
            .mul(&project)?
            .sum_all()?
            .backward()?;
        let composite = x
            .softplus()?
            .sub(&x.mul(&y)?)?
            .mul(&project)?
            .sum_all()?
            .backward()?;
        for (name, leaf) in [("logits", &x), ("targets", &y)] {
            assert_close(
                &format!("{dtype}: d{name}"),
                fused.get(leaf).unwrap(),
                composite.get(leaf).unwrap(),
                tolerance,
                tolerance,
            );
        }
    }
    Ok(())
}

#[test]
fn bce_with_logits_rejects_mismatched_shapes() {
    let x = Tensor::zeros([4, 3], DType::F32, Device::Cpu).unwrap();
    let y = Tensor::zeros([3, 4], DType::F32, Device::Cpu).unwrap();
    let err = x.bce_with_logits(&y).unwrap_err().to_string();
    assert!(err.contains("[4, 3]") && err.contains("[3, 4]"), "{err}");
}

#[test]
fn evaluation_batch_norm_matches_the_composite() -> Result<()> {
    // kiln-nn's evaluation mode before the fusion: (x - mean) / √(var + eps) · weight + bias.
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for shape in [&[4, 3][..], &[2, 5, 3, 3], &[3, 6272]] {
            let channels = shape[1];
            let x = tensor(shape, 1, 2.0, 0.5, dtype);
            let mean = tensor(&[channels], 2, 1.0, 0.0, dtype);
            let var = tensor(&[channels], 3, 0.5, 1.0, dtype); // in [0.5, 1.5)
            let weight = tensor(&[channels], 4, 1.0, 1.0, dtype);
            let bias = tensor(&[channels], 5, 0.3, 0.0, dtype);
            let mut dims = vec![1; shape.len()];
            dims[1] = channels;
            for affine in [true, false] {
                let (w, b) = if affine {
                    (Some(&weight), Some(&bias))
                } else {
                    (None, None)
                };
                let fused = x.batch_norm_eval(&mean, &var, w, b, 1e-5)?;
                let mut expected = x
                    .sub(&mean.reshape(dims.clone())?)?
                    .div(&var.reshape(dims.clone())?.add_scalar(1e-5)?.sqrt()?)?;
                if affine {
                    expected = expected
                        .mul(&weight.reshape(dims.clone())?)?
                        .add(&bias.reshape(dims.clone())?)?;
                }
                // invstd·x instead of x / √: a rounding or two of the dtype apart.
                let rtol = match dtype {
                    DType::F64 => 1e-14,
                    DType::F32 => 1e-6,
                    DType::F16 => 4e-3,
                    _ => 2e-2,
                };
                assert_close(
                    &format!("{dtype} {shape:?} affine {affine}"),
                    &fused,
                    &expected,
                    rtol,
                    rtol,
                );
                assert!(!fused.is_tracked());
            }
        }
    }
    let x = tensor(&[4, 3], 1, 1.0, 0.0, DType::F32);
    let short = tensor(&[2], 1, 1.0, 0.0, DType::F32);
    assert!(x.batch_norm_eval(&short, &short, None, None, 1e-5).is_err());
    Ok(())
}
