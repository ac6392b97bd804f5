//! Convolution throughput: `cargo bench --bench conv`. Every convolution DCGAN, the conv VAE,
//! the DDPM U-Net and the PixelCNN train with, at their training batch sizes, each as its
//! three primitives: `fwd` (conv2d), `dx` (its input gradient, which is also a transposed
//! convolution's forward) and `dw` (its weight gradient). A transposed layer is listed as the
//! convolution it is the adjoint of (DCGAN's 128→64 up-convolution is the `64@14→128` case:
//! its forward runs `dx`, its backward `fwd` and `dw`). Criterion reports FLOP/s as "elem/s",
//! 2·N·OC·C·kh·kw·OH·OW per call, on 1 thread and on all.
//! `benches/reference/torch_conv.py` times PyTorch (oneDNN) on the same cases and prints the
//! side-by-side table from these results.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_tensor::{Conv2dOptions, DType, Device, Generator, Tensor};

mod common;

/// One convolution `[batch, channels, size, size] → [batch, out_channels, ·, ·]` with a square
/// `kernel`, `stride` and `padding`. Keep in step with `benches/reference/torch_conv.py`.
struct Case {
    name: &'static str,
    batch: usize,
    channels: usize,
    size: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

const fn case(
    name: &'static str,
    batch: usize,
    (channels, size, out_channels): (usize, usize, usize),
    (kernel, stride, padding): (usize, usize, usize),
) -> Case {
    Case {
        name,
        batch,
        channels,
        size,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// Name: model, then `C@H→OC` and `k`kernel`s`stride (padding as the model has it).
const CASES: [Case; 27] = [
    // DCGAN, batch 64: the discriminator's convolutions; the generator's up-convolutions are
    // their adjoints (128@7→64@14 is the second, 64@14→1@28 the first).
    case("dcgan_1@28-64_k4s2", 64, (1, 28, 64), (4, 2, 1)),
    case("dcgan_64@14-128_k4s2", 64, (64, 14, 128), (4, 2, 1)),
    // The conv VAE, batch 128: encoder convolutions, decoder up-convolutions their adjoints.
    case("cvae_1@28-32_k4s2", 128, (1, 28, 32), (4, 2, 1)),
    case("cvae_32@14-64_k4s2", 128, (32, 14, 64), (4, 2, 1)),
    // The DDPM U-Net (16, 32, 64 channels), batch 64.
    case("ddpm_1@28-16_k3", 64, (1, 28, 16), (3, 1, 1)),
    case("ddpm_16@28-16_k3", 64, (16, 28, 16), (3, 1, 1)),
    case("ddpm_16@28-16_k3s2", 64, (16, 28, 16), (3, 2, 1)),
    case("ddpm_16@14-32_k3", 64, (16, 14, 32), (3, 1, 1)),
    case("ddpm_32@14-32_k3", 64, (32, 14, 32), (3, 1, 1)),
    case("ddpm_16@14-32_k1", 64, (16, 14, 32), (1, 1, 0)),
    case("ddpm_32@14-32_k3s2", 64, (32, 14, 32), (3, 2, 1)),
    case("ddpm_32@7-64_k3", 64, (32, 7, 64), (3, 1, 1)),
    case("ddpm_64@7-64_k3", 64, (64, 7, 64), (3, 1, 1)),
    case("ddpm_32@7-64_k1", 64, (32, 7, 64), (1, 1, 0)),
    case("ddpm_64@14-64_k3", 64, (64, 14, 64), (3, 1, 1)),
    case("ddpm_96@14-32_k3", 64, (96, 14, 32), (3, 1, 1)),
    case("ddpm_96@14-32_k1", 64, (96, 14, 32), (1, 1, 0)),
    case("ddpm_32@28-32_k3", 64, (32, 28, 32), (3, 1, 1)),
    case("ddpm_48@28-16_k3", 64, (48, 28, 16), (3, 1, 1)),
    case("ddpm_48@28-16_k1", 64, (48, 28, 16), (1, 1, 0)),
    case("ddpm_16@28-1_k3", 64, (16, 28, 1), (3, 1, 1)),
    // The PixelCNN (32 hidden channels), batch 64; masked convolutions run as full ones with
    // a masked weight.
    case("pixelcnn_1@28-32_k7", 64, (1, 28, 32), (7, 1, 3)),
    case("pixelcnn_32@28-16_k1", 64, (32, 28, 16), (1, 1, 0)),
    case("pixelcnn_16@28-16_k3", 64, (16, 28, 16), (3, 1, 1)),
    case("pixelcnn_16@28-32_k1", 64, (16, 28, 32), (1, 1, 0)),
    case("pixelcnn_32@28-32_k1", 64, (32, 28, 32), (1, 1, 0)),
    case("pixelcnn_32@28-1_k1", 64, (32, 28, 1), (1, 1, 0)),
];

fn conv(c: &mut Criterion) {
    let mut rng = Generator::new(0);
    let mut rand = |dims: [usize; 4]| Tensor::rand(dims, DType::F32, Device::Cpu, &mut rng);
    for (threads, pool) in common::thread_pools() {
        let mut group = common::group(c, &format!("conv_{threads}t"));
        for case in &CASES {
            let options = Conv2dOptions {
                stride: [case.stride; 2],
                padding: [case.padding; 2],
                dilation: [1, 1],
            };
            let k = case.kernel;
            let x = rand([case.batch, case.channels, case.size, case.size]).unwrap();
            let w = rand([case.out_channels, case.channels, k, k]).unwrap();
            let y = x.conv2d(&w, options).unwrap();
            let gy = rand(y.dims().try_into().unwrap()).unwrap();
            let out_size = y.dims()[2];
            let flops =
                2 * case.batch * case.out_channels * case.channels * k * k * out_size.pow(2);
            group.throughput(Throughput::Elements(flops as u64));
            let input_size = [case.size; 2];
            group.bench_function(format!("{}_fwd", case.name), |b| {
                pool.install(|| b.iter(|| x.conv2d(&w, options).unwrap()))
            });
            group.bench_function(format!("{}_dx", case.name), |b| {
                pool.install(|| b.iter(|| gy.conv2d_input_grad(&w, input_size, options).unwrap()))
            });
            group.bench_function(format!("{}_dw", case.name), |b| {
                pool.install(|| b.iter(|| x.conv2d_weight_grad(&gy, [k, k], options).unwrap()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
