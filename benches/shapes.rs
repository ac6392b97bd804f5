//! The matrix products the GEMM bench measures, shared with `benches/reference/torch_gemm.py`
//! (which lists the same cases: keep the two in step).

/// One product `[m, k] x [k, n]`; a transposed operand is a `.t()` view of stored data.
pub struct Case {
    pub name: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// The MLP GAN's Linear layers (in, out): the generator 100 -> 256 -> 512 -> 1024 -> 784, the
/// discriminator 784 -> 512 -> 256 -> 1.
pub const GAN_LAYERS: [(usize, usize); 7] = [
    (100, 256),
    (256, 512),
    (512, 1024),
    (1024, 784),
    (784, 512),
    (512, 256),
    (256, 1),
];

pub fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = [64, 128, 256, 512, 1024, 2048]
        .into_iter()
        .map(|s| Case {
            name: format!("square_{s}"),
            m: s,
            k: s,
            n: s,
            transpose_a: false,
            transpose_b: false,
        })
        .collect();
    // With the weight stored [out, in] as PyTorch stores it: forward x·Wᵀ, backward dY·W
    // (input gradient) and dYᵀ·X (weight gradient).
    for batch in [64, 256] {
        for (input, output) in GAN_LAYERS {
            let case = |kind: &str, m, k, n, transpose_a, transpose_b| Case {
                name: format!("b{batch}_{kind}_{input}x{output}"),
                m,
                k,
                n,
                transpose_a,
                transpose_b,
            };
            cases.push(case("fwd", batch, input, output, false, true));
            cases.push(case("dx", batch, output, input, false, false));
            cases.push(case("dw", output, batch, input, true, false));
        }
    }
    cases
}
