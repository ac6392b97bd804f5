//! exp, log, tanh, sigmoid, softplus and log1p for f32 as straight-line code (polynomials,
//! bit operations and selects, no branches and no libm call), so that the elementwise loops,
//! compiled for AVX-512 or AVX2+FMA, run them 16 or 8 lanes at a time. Each is within a stated
//! number of units in the last place (ulp) of the true value over the whole f32 range, measured
//! against f64 by `tests/vmath.rs`:
//!
//! | function | max error | method |
//! |---|---|---|
//! | [`exp`] | 1.5 ulp | n = round(x / ln 2), r = x − n ln 2 (two-part ln 2), Cephes' degree-7 polynomial, 2ⁿ in two factors so subnormal results round once |
//! | [`ln`] | 1 ulp | x = m · 2ᵉ with m in [√½, √2), Cephes' degree-9 polynomial in m − 1, e ln 2 in two parts |
//! | [`ln_1p`] | 2 ulp | ln(1 + t) corrected by the rounding of 1 + t |
//! | [`tanh`] | 2 ulp | an odd polynomial below 0.625, 1 − 2 / (e²ˣ + 1) above |
//! | [`sigmoid`] | 3 ulp | 1 / (1 + e⁻ˣ), or e^x / (1 + e^x) below 0, one division |
//! | [`softplus`] | 2.5 ulp | max(x, 0) + ln_1p(e^−\|x\|) |
//!
//! (The bounds are what the test asserts. Measured over all 2³² inputs on 2026-12-03: exp 0.992,
//! ln 0.829, ln_1p 1.437, tanh 1.330, sigmoid 2.402, softplus 1.990.) NaN in gives
//! NaN out; the infinities and signed zeros give what libm gives. No multiply-add is fused
//! ([`madd`]), so the baseline build, AVX2+FMA and AVX-512 give the same bits, and code that
//! stays scalar (softmax's running sum) runs at a multiply and an add per term, not a call to
//! a software `fmaf`. f64 (gradient checks) keeps libm: [`VectorMath`]'s f64 methods are std's.

// The polynomials' coefficients as Cephes publishes them, some with a digit more than an f32
// holds.
#![allow(clippy::excessive_precision)]

use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E};

/// The transcendental functions the elementwise kernels use, on a kernel's math type: the
/// straight-line f32 versions of this module for f32 (and the half types, which compute in
/// f32), std's for f64.
pub trait VectorMath: Copy {
    fn vexp(self) -> Self;
    fn vln(self) -> Self;
    fn vtanh(self) -> Self;
    fn vsigmoid(self) -> Self;
    fn vsoftplus(self) -> Self;
}

impl VectorMath for f32 {
    #[inline(always)]
    fn vexp(self) -> f32 {
        exp(self)
    }
    #[inline(always)]
    fn vln(self) -> f32 {
        ln(self)
    }
    #[inline(always)]
    fn vtanh(self) -> f32 {
        tanh(self)
    }
    #[inline(always)]
    fn vsigmoid(self) -> f32 {
        sigmoid(self)
    }
    #[inline(always)]
    fn vsoftplus(self) -> f32 {
        softplus(self)
    }
}

impl VectorMath for f64 {
    #[inline(always)]
    fn vexp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn vln(self) -> f64 {
        self.ln()
    }
    #[inline(always)]
    fn vtanh(self) -> f64 {
        self.tanh()
    }
    /// 1 / (1 + e^-x), written so that neither branch overflows.
    #[inline(always)]
    fn vsigmoid(self) -> f64 {
        let e = (-self.abs()).exp();
        let numerator = if self >= 0.0 { 1.0 } else { e };
        numerator / (1.0 + e)
    }
    /// log(1 + e^x) as `max(x, 0) + log1p(e^-|x|)`, which neither overflows nor loses the
    /// small values.
    #[inline(always)]
    fn vsoftplus(self) -> f64 {
        let positive = if self > 0.0 { self } else { 0.0 };
        positive + (-self.abs()).exp().ln_1p()
    }
}

/// e^x.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5 · 2²³ rounds a value of magnitude below 2²² to an integer, which is then
    // also the low bits of the sum's representation.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Beyond these the result is inf or 0 already; clamping keeps n within 2⁸. NaN passes.
    let x = x.clamp(-104.0, 89.0);
    let shifted = madd(x, LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = madd(n, -LN2_LO, madd(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = madd(p, r, 1.398_199_9e-3);
    p = madd(p, r, 8.333_452e-3);
    p = madd(p, r, 4.166_579_6e-2);
    p = madd(p, r, 1.666_666_5e-1);
    p = madd(p, r, 5.000_000_1e-1);
    let p = madd(p * r, r, r) + 1.0;
    // 2ⁿ as two powers of two, each a normal float: n in [-150, 128].
    let k = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let k1 = k >> 1;
    let k2 = k - k1;
    p * pow2(k1) * pow2(k2)
}

/// a·b + c with two roundings, as Cephes evaluates its polynomials. Not `mul_add`: on baseline
/// x86-64 (no FMA) that is a call to a software `fmaf` per use, and code that stays scalar or
/// is not inlined into the SIMD loops is compiled for that baseline.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// 2ᵏ for k in [-126, 127].
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) << 23) as u32)
}

/// The natural logarithm: NaN below 0, -inf at ±0.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Subnormals scaled into the normal range first.
    let subnormal = x < f32::MIN_POSITIVE;
    let scaled = if subnormal { x * 8_388_608.0 } else { x };
    let bits = scaled.to_bits() as i32;
    // scaled = m · 2^e, m in [0.5, 1).
    let e = ((bits >> 23) & 0xff) - 126 - if subnormal { 23 } else { 0 };
    let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32);
    // m in [√½, √2), as f = m - 1.
    let low = m < FRAC_1_SQRT_2;
    let e = (e - i32::from(low)) as f32;
    let f = if low { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2_f32;
    y = madd(y, f, -1.151_461e-1);
    y = madd(y, f, 1.167_699_9e-1);
    y = madd(y, f, -1.242_014_1e-1);
    y = madd(y, f, 1.424_932_3e-1);
    y = madd(y, f, -1.666_805_8e-1);
    y = madd(y, f, 2.000_071_4e-1);
    y = madd(y, f, -2.499_999_4e-1);
    y = madd(y, f, 3.333_333_1e-1);
    let y = madd(e, LN2_LO, y * f * z);
    let y = madd(z, -0.5, y);
    let result = madd(e, LN2_HI, f + y);
    if x == f32::INFINITY {
        x
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x >= 0.0 {
        result
    } else {
        f32::NAN // below 0, or NaN
    }
}

/// ln(1 + t), exact for the t too small for 1 + t to hold.
#[inline(always)]
pub fn ln_1p(t: f32) -> f32 {
    let u = 1.0 + t;
    // ln(u) is ln(1 + t) for the t that u holds; u - 1 - t is what the addition lost, and
    // ln(1 + t) = ln(u) - lost / u to first order.
    let lost = (u - 1.0) - t;
    let result = ln(u) - lost / u;
    // ln(u) alone at u = inf and at u = 0 (t = -1: -inf), where lost / u would be NaN.
    if u == f32::INFINITY || u == 0.0 {
        ln(u)
    } else {
        result
    }
}

/// tanh(x).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let z = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = madd(p, z, 2.063_908_9e-2);
    p = madd(p, z, -5.373_971_6e-2);
    p = madd(p, z, 1.333_144_2e-1);
    p = madd(p, z, -3.333_328_2e-1);
    let small = madd(p * z, x, x);
    let a = x.abs();
    let large = (1.0 - 2.0 / (exp(a + a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// 1 / (1 + e^-x), with one division and no overflow.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

/// ln(1 + e^x) as max(x, 0) + ln_1p(e^-|x|), which neither overflows nor loses the small
/// values.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let positive = if x > 0.0 { x } else { 0.0 };
    positive + ln_1p(exp(-x.abs()))
}
