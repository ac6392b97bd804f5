//! The straight-line f32 transcendentals of `kiln_tensor::cpu::vmath` against f64 over the
//! whole f32 range: every 257th bit pattern (16.7 million inputs a function; every one of the
//! 2³² with `KILN_VMATH_EXHAUSTIVE=1`), plus the special values, each error in units in the
//! last place of the f32 result. The bounds asserted here are the ones vmath.rs documents.
//! Then the tensor ops, which run these functions in the loops compiled for this CPU's SIMD,
//! give the same bits as the scalar functions.

use kiln_tensor::cpu::vmath;
use kiln_tensor::{Device, Tensor};
use rayon::prelude::*;

type F32 = fn(f32) -> f32;
type F64 = fn(f64) -> f64;

/// The error of `got` against the exact `want`, in ulps of f32 at `want` (subnormal spacing
/// below the normal range; inf counted as 2¹²⁸). NaN must meet NaN.
fn ulps(got: f32, want: f64) -> f64 {
    if want.is_nan() || got.is_nan() {
        return if want.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if want.is_infinite() {
        return if got as f64 == want {
            0.0
        } else {
            f64::INFINITY
        };
    }
    // Beyond f32's range the right answer is inf, counted as 2^128 like `got`'s.
    let want = want.clamp(-(2f64.powi(128)), 2f64.powi(128));
    let as_f64 = |v: f32| {
        if v.is_infinite() {
            2f64.powi(128).copysign(v as f64)
        } else {
            v as f64
        }
    };
    let exponent = want.abs().log2().floor().max(-126.0);
    let ulp = 2f64.powf(exponent - 23.0);
    (as_f64(got) - want).abs() / ulp
}

/// The inputs: every `stride`-th bit pattern, and the special ones.
fn inputs(stride: u64) -> Vec<f32> {
    let mut values: Vec<f32> = (0..1u64 << 32)
        .step_by(stride as usize)
        .map(|bits| f32::from_bits(bits as u32))
        .collect();
    values.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
        88.72283,
        88.72284,
        -87.33655,
        -103.97208,
        -103.97209,
        0.625,
        -0.625,
        0.624_999_94,
        9.0,
        std::f32::consts::FRAC_1_SQRT_2,
        std::f32::consts::SQRT_2,
    ]);
    values
}

fn stride() -> u64 {
    match std::env::var("KILN_VMATH_EXHAUSTIVE").as_deref() {
        Ok("1") => 1,
        _ => 257,
    }
}

/// The largest error of `f` against `reference` over the inputs where `reference` is
/// defined, and the input that gave it.
fn worst(f: F32, reference: F64, values: &[f32]) -> (f64, f32) {
    values
        .par_iter()
        .map(|&x| (ulps(f(x), reference(x as f64)), x))
        .reduce(|| (0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
}

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

fn softplus64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[test]
fn each_function_is_within_its_stated_ulps_over_the_whole_range() {
    let values = inputs(stride());
    let cases: [(&str, F32, F64, f64); 6] = [
        ("exp", vmath::exp, f64::exp, 1.5),
        ("ln", vmath::ln, f64::ln, 1.0),
        ("ln_1p", vmath::ln_1p, f64::ln_1p, 2.0),
        ("tanh", vmath::tanh, f64::tanh, 2.0),
        ("sigmoid", vmath::sigmoid, sigmoid64, 3.0),
        ("softplus", vmath::softplus, softplus64, 2.5),
    ];
    let mut failures = Vec::new();
    for (name, f, reference, bound) in cases {
        let (error, at) = worst(f, reference, &values);
        println!(
            "{name}: at most {error:.3} ulp over {} inputs (worst at {at:e})",
            values.len()
        );
        if error > bound {
            failures.push(format!("{name}: {error:.3} ulp at {at:e} > {bound}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn the_tensor_ops_give_the_scalar_functions_bits() -> kiln_tensor::Result<()> {
    // Every 4099th bit pattern: a million values, above the loops' parallel threshold.
    let values = inputs(4099);
    let x = Tensor::from_slice(&values, [values.len()], Device::Cpu)?;
    let cases: [(&str, Tensor, F32); 5] = [
        ("exp", x.exp()?, vmath::exp),
        ("log", x.log()?, vmath::ln),
        ("tanh", x.tanh()?, vmath::tanh),
        ("sigmoid", x.sigmoid()?, vmath::sigmoid),
        ("softplus", x.softplus()?, vmath::softplus),
    ];
    for (name, out, f) in cases {
        for (got, &x) in out.to_vec::<f32>()?.iter().zip(&values) {
            let want = f(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{name}({x:e}): the op gives {got:e}, the scalar function {want:e}"
            );
        }
    }
    Ok(())
}
