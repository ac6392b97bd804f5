//! Times one CPU primitive in a process of its own: a convolution's forward pass, input
//! gradient or weight gradient, or a matrix product, run back to back `--runs` times (after one
//! untimed run) on random f32 operands. Prints one JSON line: the fastest and the median run in
//! ms, and GFLOP/s at the fastest. On a shared machine whose speed drifts from minute to minute
//! the fastest of many short runs is the steadiest figure of a kernel's speed; two builds timed
//! in turn (`just bench-ab OLD NEW --ops "..."`, benches/ab.py) tell a change of a few percent
//! in one layer where a whole step cannot. Threads: rayon's pool (`RAYON_NUM_THREADS`); the
//! kernel: `KILN_CPU_KERNEL` as everywhere.
//!
//! Usage: cargo run --release --example op_time -- OP DIMS... [--runs N]
//!   conv-fwd | conv-dx | conv-dw  BATCH CHANNELS SIZE OUT_CHANNELS KERNEL STRIDE PADDING
//!   matmul                        M K N [TRANSPOSED_A TRANSPOSED_B] (0 or 1: stored transposed)
//! e.g. `op_time conv-dw 64 64 14 128 4 2 1` (DCGAN's second layer's weight gradient).

use std::time::Instant;

use kiln_tensor::{Conv2dOptions, DType, Device, Generator, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: op_time conv-fwd|conv-dx|conv-dw B C SIZE OC K STRIDE PAD \
                     | matmul M K N [TA TB] [--runs N]";

/// One run of the primitive, set up once.
type Run = Box<dyn Fn() -> Result<Tensor>>;

/// The primitive `op` on operands of `dims`, and its multiply-adds times two.
fn primitive(op: &str, dims: &[usize]) -> Result<(Run, f64)> {
    let mut rng = Generator::new(0);
    let mut rand = |shape: &[usize]| Tensor::rand(shape, DType::F32, Device::Cpu, &mut rng);
    match (op, dims) {
        ("conv-fwd" | "conv-dx" | "conv-dw", &[batch, channels, size, out, k, stride, pad]) => {
            let options = Conv2dOptions {
                stride: [stride; 2],
                padding: [pad; 2],
                dilation: [1, 1],
            };
            let x = rand(&[batch, channels, size, size])?;
            let w = rand(&[out, channels, k, k])?;
            let y = x.conv2d(&w, options)?;
            let gy = rand(y.dims())?;
            let flops = 2.0 * (batch * out * channels * k * k * y.dims()[2] * y.dims()[3]) as f64;
            let run: Run = match op {
                "conv-fwd" => Box::new(move || Ok(x.conv2d(&w, options)?)),
                "conv-dx" => Box::new(move || Ok(gy.conv2d_input_grad(&w, [size; 2], options)?)),
                _ => Box::new(move || Ok(x.conv2d_weight_grad(&gy, [k, k], options)?)),
            };
            Ok((run, flops))
        }
        ("matmul", &[m, k, n]) | ("matmul", &[m, k, n, 0 | 1, 0 | 1]) => {
            let transposed = |i: usize| dims.get(i) == Some(&1);
            let mut operand = |rows: usize, cols: usize, transposed: bool| -> Result<Tensor> {
                Ok(if transposed {
                    rand(&[cols, rows])?.t()?
                } else {
                    rand(&[rows, cols])?
                })
            };
            let a = operand(m, k, transposed(3))?;
            let b = operand(k, n, transposed(4))?;
            Ok((
                Box::new(move || Ok(a.matmul(&b)?)),
                2.0 * (m * k * n) as f64,
            ))
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let op = args.next().ok_or(USAGE)?;
    let (mut dims, mut runs) = (Vec::new(), 50usize);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            runs = args.next().ok_or(USAGE)?.parse()?;
        } else {
            dims.push(
                arg.parse::<usize>()
                    .map_err(|e| format!("{arg}: {e}; {USAGE}"))?,
            );
        }
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    // As the kiln binary runs: the allocator tuned, the work on a rayon worker.
    kiln_tensor::cpu::tune_allocator();
    let line =
        kiln_tensor::cpu::on_worker(|| time_runs(&op, &dims, runs).map_err(|e| e.to_string()))?;
    println!("{line}");
    Ok(())
}

/// The JSON line for `runs` timed runs of the primitive.
fn time_runs(op: &str, dims: &[usize], runs: usize) -> Result<String> {
    let (run, flops) = primitive(op, dims)?;
    run()?; // untimed: buffers, packed weights and caches settle
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(run()?);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let fastest = ms[0];
    Ok(serde_json::json!({
        "op": op,
        "dims": dims,
        "cpu_kernel": std::env::var("KILN_CPU_KERNEL").unwrap_or_default(),
        "threads": rayon::current_num_threads(),
        "runs": runs,
        "min_ms": fastest,
        "median_ms": ms[runs / 2],
        "per_s": 1e3 / fastest,
        "gflops": flops / fastest / 1e6,
    })
    .to_string())
}
