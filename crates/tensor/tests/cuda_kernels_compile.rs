//! Every kernels/*.cu source compiles with NVRTC, to a cubin, for Hopper (sm_90), and for
//! every arch in `KILN_TEST_ARCHS` (e.g. `80,90`) when that is set. This needs only libnvrtc,
//! not a GPU, so it runs on any machine that has the library (e.g. from the
//! `nvidia-cuda-nvrtc` wheel on `LD_LIBRARY_PATH`); it says it skipped otherwise, and
//! `KILN_REQUIRE_CUDA=1` makes a missing library a failure. (One arch by default: the files
//! take about 100 s of compiling per arch on one core, compiled a file per core at a time.)
//! The sm_90 cubin of elementwise.cu is also checked for every kernel name
//! src/cuda/elementwise.rs can launch. Each cubin goes into the kernel cache
//! (`$KILN_CACHE_DIR`), so later processes on a GPU of that arch skip the compile.

mod cuda_common;

use cuda_common::ALL_DTYPES;
use kiln_tensor::cuda::registry::{self, ALL};
use kiln_tensor::cuda::Arch;

/// The archs to compile for: `KILN_TEST_ARCHS` (comma-separated, e.g. `80,90`), else sm_90.
fn archs() -> Vec<Arch> {
    let list = std::env::var("KILN_TEST_ARCHS").unwrap_or_else(|_| "90".into());
    list.split(',')
        .map(|a| {
            let a: u32 = a
                .trim()
                .parse()
                .expect("KILN_TEST_ARCHS: numbers such as 80,90");
            Arch {
                major: a / 10,
                minor: a % 10,
            }
        })
        .collect()
}

const SM_90: Arch = Arch { major: 9, minor: 0 };

/// Whether libnvrtc can be used; otherwise `false` after printing why `test` skipped, or a
/// panic when `KILN_REQUIRE_CUDA=1` (on a GPU machine a skip would hide a missing library).
fn nvrtc(test: &str) -> bool {
    match registry::nvrtc_availability() {
        Ok(()) => true,
        Err(reason) => {
            assert!(
                std::env::var("KILN_REQUIRE_CUDA").as_deref() != Ok("1"),
                "{test}: KILN_REQUIRE_CUDA=1 but {reason}"
            );
            eprintln!("{test}: skipped: {reason}");
            false
        }
    }
}

#[test]
fn every_kernel_source_compiles() {
    if !nvrtc("every_kernel_source_compiles") {
        return;
    }
    let version = registry::nvrtc_version().expect("nvrtc version");
    eprintln!("NVRTC {}.{}", version.0, version.1);
    // The files compile independently (NVRTC is thread-safe): one per core at a time.
    let jobs: Vec<_> = archs()
        .into_iter()
        .flat_map(|arch| ALL.iter().map(move |source| (arch, *source)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(jobs.len()) {
            scope.spawn(|| loop {
                let job = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(arch, source)) = jobs.get(job) else {
                    break;
                };
                let start = std::time::Instant::now();
                let cubin = registry::compile(source, arch).unwrap_or_else(|e| panic!("{}", e));
                eprintln!(
                    "{}.cu for sm_{arch}: {:.1} s",
                    source.name,
                    start.elapsed().as_secs_f64()
                );
                // An ELF image: a cubin, not PTX text.
                assert_eq!(&cubin[..4], b"\x7fELF", "{}.cu for sm_{arch}", source.name);
                // Later test processes (on a GPU machine, scripts/gpu-check.sh) load it
                // from the disk cache instead of compiling again.
                registry::store_in_disk_cache(source, arch, &cubin)
                    .unwrap_or_else(|e| panic!("{e}"));
                if source.name == "elementwise" && arch == SM_90 {
                    every_launched_elementwise_kernel_is_in(&cubin);
                }
            });
        }
    });
}

#[test]
fn a_compile_error_carries_the_nvrtc_log() {
    if !nvrtc("a_compile_error_carries_the_nvrtc_log") {
        return;
    }
    let broken = registry::KernelSource {
        name: "broken",
        code: "extern \"C\" __global__ void k(float* out) { out[0] = undeclared_name; }",
    };
    let message = registry::compile(&broken, SM_90).unwrap_err().to_string();
    assert!(
        message.contains("broken.cu failed to compile for sm_90"),
        "{message}"
    );
    assert!(message.contains("undeclared_name"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

/// Every kernel name src/cuda/elementwise.rs can launch is a symbol of elementwise.cu's cubin.
fn every_launched_elementwise_kernel_is_in(cubin: &[u8]) {
    let dtypes = ALL_DTYPES.map(|d| d.as_str());
    let floats = ["f16", "bf16", "f32", "f64"];
    let mut names = Vec::new();
    for dtype in dtypes {
        names.push(format!("fill_{dtype}"));
        names.push(format!("copy_{dtype}"));
        for other in dtypes {
            names.push(format!("convert_{dtype}_{other}"));
            names.push(format!("where_{dtype}_{other}"));
        }
        for op in ["eq", "ne", "lt", "le", "gt", "ge"] {
            names.push(format!("compare_{op}_{dtype}"));
        }
    }
    let unary = [
        "neg",
        "exp",
        "log",
        "sqrt",
        "abs",
        "sign",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "softplus",
        "powf",
        "clamp",
        "affine",
    ];
    for dtype in floats {
        for op in unary {
            names.push(format!("unary_{op}_{dtype}"));
        }
        for op in ["add", "sub", "mul", "div"] {
            names.push(format!("binary_{op}_{dtype}"));
        }
    }
    for name in names {
        // Symbol names are NUL-terminated in the ELF string table.
        let symbol = format!("{name}\0");
        assert!(
            cubin.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
            "elementwise.cu has no kernel {name}"
        );
    }
}
