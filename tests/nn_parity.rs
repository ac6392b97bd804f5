//! PyTorch parity for kiln-nn: every op, layer, loss and optimizer the models use, compared
//! with PyTorch's own numbers in tests/fixtures/nn_parity.safetensors, made by
//! tests/fixtures/make_fixtures.py (torch 2.15.0, CPU, float32). Each test names its case in
//! that script, whose configuration it repeats. Layers load their weights from the fixture's
//! state dict by PyTorch's keys, so the names are checked too. The fixture file is read with
//! the `safetensors` crate directly, not with kiln's checkpoint code.
//!
//! Tolerances are for f32: outputs and gradients agree to `ATOL + RTOL·|expected|` with the
//! values stated per case (sums over hundreds of products reorder rounding differently from
//! PyTorch's kernels).

use std::collections::HashMap;
use std::sync::OnceLock;

use kiln_nn::layers::{
    AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, ConvTranspose2d,
    ConvTranspose2dConfig, Embedding, Flatten, GroupNorm, LayerNorm, LeakyReLU, Linear, MaxPool2d,
    ReLU, Sequential, SiLU, Sigmoid, Tanh, Unflatten, UpsampleNearest2d,
};
use kiln_nn::loss::{self, Reduction};
use kiln_nn::optim::{
    clip_grad_norm, Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig,
};
use kiln_nn::schedule::{CosineAnnealingLr, Schedule, StepLr};
use kiln_nn::{Module, ModuleT, ParamStore, Path};
use kiln_tensor::{
    Conv2dOptions, ConvTranspose2dOptions, DType, Device, Pool2dOptions, Tensor, Var,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/nn_parity.safetensors"
);

/// Every fixture tensor by name (all float32).
fn fixtures() -> &'static HashMap<String, Tensor> {
    static TENSORS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    TENSORS.get_or_init(|| {
        let bytes = std::fs::read(FIXTURES).expect("the committed fixture file");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
        file.tensors()
            .into_iter()
            .map(|(name, view)| {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let tensor = Tensor::from_vec(values, view.shape(), Device::Cpu).unwrap();
                (name, tensor)
            })
            .collect()
    })
}

fn get(case: &str, name: &str) -> Tensor {
    let key = format!("{case}.{name}");
    fixtures()
        .get(&key)
        .unwrap_or_else(|| panic!("fixture `{key}` is missing: rerun make_fixtures.py"))
        .clone()
}

/// The case's PyTorch state dict (`<case>.state.<key>`), keys as PyTorch wrote them.
fn state(case: &str) -> Vec<(String, Tensor)> {
    let prefix = format!("{case}.state.");
    let mut entries: Vec<(String, Tensor)> = fixtures()
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

#[derive(Clone, Copy)]
struct Tolerance {
    atol: f32,
    rtol: f32,
}

const TIGHT: Tolerance = Tolerance {
    atol: 1e-5,
    rtol: 1e-4,
};

fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: Tolerance) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let actual = actual
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let expected = expected.to_vec::<f32>().unwrap();
    let mut worst = (0.0f32, 0);
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        let excess = (a - e).abs() - (tolerance.atol + tolerance.rtol * e.abs());
        if excess > worst.0 || excess.is_nan() {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: element {i} is {} but PyTorch gives {} (tolerance {} + {}·|x|)",
        actual[i],
        expected[i],
        tolerance.atol,
        tolerance.rtol
    );
}

/// Runs `forward` on the case's inputs (as tracked leaves), compares the output with
/// PyTorch's, then backpropagates sum(output · grad_output) and compares the gradients of
/// the inputs and of the store's parameters (`grad.param.<key>`).
fn check(
    case: &str,
    inputs: &[&str],
    store: Option<&ParamStore>,
    tolerance: Tolerance,
    forward: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|name| get(case, name).track())
        .collect::<kiln_tensor::Result<_>>()?;
    let output = forward(&leaves)?;
    assert_close(
        &format!("{case} output"),
        &output,
        &get(case, "output"),
        tolerance,
    );
    let grads = output
        .mul(&get(case, "grad_output"))?
        .sum_all()?
        .backward()?;
    for (name, leaf) in inputs.iter().zip(&leaves) {
        let grad = grads.get(leaf).expect("every input gets a gradient");
        assert_close(
            &format!("{case} grad of {name}"),
            grad,
            &get(case, &format!("grad.{name}")),
            tolerance,
        );
    }
    if let Some(store) = store {
        for (key, var) in store.parameters() {
            let grad = grads.get(&var).expect("every parameter gets a gradient");
            assert_close(
                &format!("{case} grad of {key}"),
                grad,
                &get(case, &format!("grad.param.{key}")),
                tolerance,
            );
        }
    }
    Ok(())
}

/// A store with PyTorch's weights for the case, loaded by name (every key must match).
fn store_for(case: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<ParamStore> {
    let store = ParamStore::new(Device::Cpu, DType::F32, 0);
    build(&store.root())?;
    store.load_state_dict(&state(case), case)?;
    Ok(store)
}

/// Compares the store's buffers after the forward pass with PyTorch's (`after.<key>`).
fn check_buffers(case: &str, store: &ParamStore, tolerance: Tolerance) {
    for (key, var) in store.buffers() {
        assert_close(
            &format!("{case} {key} after the step"),
            &var,
            &get(case, &format!("after.{key}")),
            tolerance,
        );
    }
}

// ---- ops ----

#[test]
fn conv2d_general() -> Result<()> {
    // F.conv2d(x [2,3,7,6], w [4,3,3,2], stride=(2,1), padding=(1,2), dilation=(2,1))
    let options = Conv2dOptions {
        stride: [2, 1],
        padding: [1, 2],
        dilation: [2, 1],
    };
    check("conv2d_general", &["input", "weight"], None, TIGHT, |t| {
        Ok(t[0].conv2d(&t[1], options)?)
    })
}

#[test]
fn conv2d_dcgan() -> Result<()> {
    // F.conv2d(x [3,1,28,28], w [8,1,4,4], stride=2, padding=1): DCGAN's first layer.
    let options = Conv2dOptions {
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
    };
    check("conv2d_dcgan", &["input", "weight"], None, TIGHT, |t| {
        Ok(t[0].conv2d(&t[1], options)?)
    })
}

#[test]
fn conv_transpose2d_dcgan() -> Result<()> {
    // F.conv_transpose2d(x [2,4,3,3], w [4,2,4,4], stride=2, padding=1)
    let options = ConvTranspose2dOptions {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    check(
        "conv_transpose2d_dcgan",
        &["input", "weight"],
        None,
        TIGHT,
        |t| Ok(t[0].conv_transpose2d(&t[1], options)?),
    )
}

#[test]
fn conv_transpose2d_general() -> Result<()> {
    // F.conv_transpose2d(x [2,3,4,5], w [3,2,3,2], stride=(3,2), padding=(1,0),
    //                    output_padding=(2,1), dilation=(1,2))
    let options = ConvTranspose2dOptions {
        stride: [3, 2],
        padding: [1, 0],
        output_padding: [2, 1],
        dilation: [1, 2],
    };
    check(
        "conv_transpose2d_general",
        &["input", "weight"],
        None,
        TIGHT,
        |t| Ok(t[0].conv_transpose2d(&t[1], options)?),
    )
}

#[test]
fn pooling_and_upsampling() -> Result<()> {
    // F.max_pool2d / F.avg_pool2d(x [2,3,7,7], 3, stride=2, padding=1);
    // F.interpolate(x [2,2,3,5], size=(7,11), mode="nearest").
    let options = Pool2dOptions {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
    };
    check("max_pool2d", &["input"], None, TIGHT, |t| {
        Ok(MaxPool2d::with_options(options).forward(&t[0])?)
    })?;
    check("avg_pool2d", &["input"], None, TIGHT, |t| {
        Ok(AvgPool2d::with_options(options).forward(&t[0])?)
    })?;
    check("upsample_nearest2d", &["input"], None, TIGHT, |t| {
        Ok(UpsampleNearest2d::with_size([7, 11]).forward(&t[0])?)
    })
}

// ---- layers ----

#[test]
fn linear() -> Result<()> {
    // nn.Linear(6, 4) on x [5, 6].
    let mut layer = None;
    let store = store_for("linear", |p| {
        layer = Some(Linear::new(p, 6, 4)?);
        Ok(())
    })?;
    let layer = layer.unwrap();
    check("linear", &["input"], Some(&store), TIGHT, |t| {
        Ok(layer.forward(&t[0])?)
    })
}

#[test]
fn conv_layers() -> Result<()> {
    // nn.Conv2d(3, 5, 3, stride=1, padding=1) on [2,3,6,6];
    // nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1) on [2,3,4,4].
    let mut conv = None;
    let store = store_for("conv2d_layer", |p| {
        let config = Conv2dConfig {
            padding: [1, 1],
            ..Default::default()
        };
        conv = Some(Conv2d::new(p, 3, 5, [3, 3], config)?);
        Ok(())
    })?;
    let conv = conv.unwrap();
    check("conv2d_layer", &["input"], Some(&store), TIGHT, |t| {
        Ok(conv.forward(&t[0])?)
    })?;
    let mut transposed = None;
    let store = store_for("conv_transpose2d_layer", |p| {
        let config = ConvTranspose2dConfig {
            stride: [2, 2],
            padding: [1, 1],
            ..Default::default()
        };
        transposed = Some(ConvTranspose2d::new(p, 3, 2, [4, 4], config)?);
        Ok(())
    })?;
    let transposed = transposed.unwrap();
    check(
        "conv_transpose2d_layer",
        &["input"],
        Some(&store),
        TIGHT,
        |t| Ok(transposed.forward(&t[0])?),
    )
}

#[test]
fn batch_norm_in_training_updates_running_statistics() -> Result<()> {
    // nn.BatchNorm1d(4).train() on [6, 4]; nn.BatchNorm2d(3, momentum=0.2).train() on
    // [4, 3, 5, 5]; weights, biases and running statistics randomized.
    let mut bn1 = None;
    let store1 = store_for("batch_norm1d_train", |p| {
        bn1 = Some(BatchNorm1d::new(p, 4)?);
        Ok(())
    })?;
    let bn1 = bn1.unwrap();
    check(
        "batch_norm1d_train",
        &["input"],
        Some(&store1),
        TIGHT,
        |t| Ok(bn1.forward_t(&t[0], true)?),
    )?;
    check_buffers("batch_norm1d_train", &store1, TIGHT);

    let mut bn2 = None;
    let store2 = store_for("batch_norm2d_train", |p| {
        let config = BatchNormConfig {
            momentum: 0.2,
            ..Default::default()
        };
        bn2 = Some(BatchNorm2d::with_config(p, 3, config)?);
        Ok(())
    })?;
    let bn2 = bn2.unwrap();
    check(
        "batch_norm2d_train",
        &["input"],
        Some(&store2),
        TIGHT,
        |t| Ok(bn2.forward_t(&t[0], true)?),
    )?;
    check_buffers("batch_norm2d_train", &store2, TIGHT);
    Ok(())
}

#[test]
fn batch_norm_in_evaluation_uses_running_statistics() -> Result<()> {
    // nn.BatchNorm2d(3).eval() on [4, 3, 5, 5].
    let mut bn = None;
    let store = store_for("batch_norm2d_eval", |p| {
        bn = Some(BatchNorm2d::new(p, 3)?);
        Ok(())
    })?;
    let bn = bn.unwrap();
    check("batch_norm2d_eval", &["input"], Some(&store), TIGHT, |t| {
        Ok(bn.forward_t(&t[0], false)?)
    })?;
    check_buffers(
        "batch_norm2d_eval",
        &store,
        Tolerance {
            atol: 0.0,
            rtol: 0.0,
        },
    );
    Ok(())
}

#[test]
fn layer_norm() -> Result<()> {
    // nn.LayerNorm([4, 5]) on [3, 4, 5], weight and bias randomized.
    let mut norm = None;
    let store = store_for("layer_norm", |p| {
        norm = Some(LayerNorm::new(p, &[4, 5])?);
        Ok(())
    })?;
    let norm = norm.unwrap();
    check("layer_norm", &["input"], Some(&store), TIGHT, |t| {
        Ok(norm.forward(&t[0])?)
    })
}

#[test]
fn group_norm() -> Result<()> {
    // nn.GroupNorm(2, 6) on [3, 6, 4, 5], weight and bias randomized.
    let mut norm = None;
    let store = store_for("group_norm", |p| {
        norm = Some(GroupNorm::new(p, 2, 6)?);
        Ok(())
    })?;
    let norm = norm.unwrap();
    check("group_norm", &["input"], Some(&store), TIGHT, |t| {
        Ok(norm.forward(&t[0])?)
    })
}

#[test]
fn embedding() -> Result<()> {
    // nn.Embedding(10, 4) looked up at [[1, 7, 3], [7, 0, 9]] (row 7 twice: its gradient sums).
    let mut table = None;
    let store = store_for("embedding", |p| {
        table = Some(Embedding::new(p, 10, 4)?);
        Ok(())
    })?;
    let table = table.unwrap();
    let indices = get("embedding", "indices").to_dtype(DType::U32)?;
    check("embedding", &[], Some(&store), TIGHT, |_| {
        Ok(table.forward(&indices)?)
    })
}

// ---- the DCGAN models at test size ----

#[test]
fn dcgan_discriminator() -> Result<()> {
    // Sequential(main=Sequential(Conv2d(1,8,4,2,1), LeakyReLU(0.2), Conv2d(8,16,4,2,1),
    // BatchNorm2d(16), LeakyReLU(0.2), Flatten(), Linear(784, 1))), train mode, on [4,1,28,28].
    let down = Conv2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let mut model = None;
    let store = store_for("dcgan_discriminator", |p| {
        let main = p.sub("main");
        model = Some(
            Sequential::new()
                .add(Conv2d::new(&main.sub(0), 1, 8, [4, 4], down)?)
                .add(LeakyReLU::new(0.2))
                .add(Conv2d::new(&main.sub(2), 8, 16, [4, 4], down)?)
                .add(BatchNorm2d::new(&main.sub(3), 16)?)
                .add(LeakyReLU::new(0.2))
                .add(Flatten::default())
                .add(Linear::new(&main.sub(6), 16 * 7 * 7, 1)?),
        );
        Ok(())
    })?;
    let model = model.unwrap();
    let loose = Tolerance {
        atol: 2e-5,
        rtol: 2e-4,
    };
    check(
        "dcgan_discriminator",
        &["input"],
        Some(&store),
        loose,
        |t| Ok(model.forward_t(&t[0], true)?),
    )?;
    check_buffers("dcgan_discriminator", &store, loose);
    Ok(())
}

#[test]
fn dcgan_generator() -> Result<()> {
    // Sequential(main=Sequential(Linear(16, 1568), BatchNorm1d(1568), ReLU(),
    // Unflatten(1, (32, 7, 7)), ConvTranspose2d(32,16,4,2,1), BatchNorm2d(16), ReLU(),
    // ConvTranspose2d(16,1,4,2,1), Tanh())), train mode, on z [4, 16].
    let up = ConvTranspose2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let mut model = None;
    let store = store_for("dcgan_generator", |p| {
        let main = p.sub("main");
        model = Some(
            Sequential::new()
                .add(Linear::new(&main.sub(0), 16, 32 * 7 * 7)?)
                .add(BatchNorm1d::new(&main.sub(1), 32 * 7 * 7)?)
                .add(ReLU)
                .add(Unflatten::new(1, vec![32, 7, 7]))
                .add(ConvTranspose2d::new(&main.sub(4), 32, 16, [4, 4], up)?)
                .add(BatchNorm2d::new(&main.sub(5), 16)?)
                .add(ReLU)
                .add(ConvTranspose2d::new(&main.sub(7), 16, 1, [4, 4], up)?)
                .add(Tanh),
        );
        Ok(())
    })?;
    let model = model.unwrap();
    let loose = Tolerance {
        atol: 2e-5,
        rtol: 2e-4,
    };
    check("dcgan_generator", &["input"], Some(&store), loose, |t| {
        Ok(model.forward_t(&t[0], true)?)
    })?;
    check_buffers("dcgan_generator", &store, loose);
    Ok(())
}

// ---- losses ----

#[test]
fn losses() -> Result<()> {
    let target = |case: &str| get(case, "target");
    // F.binary_cross_entropy(sigmoid(randn(4,3)), rand(4,3)), mean.
    check("bce", &["input"], None, TIGHT, |t| {
        Ok(loss::binary_cross_entropy(
            &t[0],
            &target("bce"),
            Reduction::Mean,
        )?)
    })?;
    // F.binary_cross_entropy_with_logits at logits ±100, ±30, ±17 and small, mean and sum.
    check("bce_with_logits", &["input"], None, TIGHT, |t| {
        Ok(loss::binary_cross_entropy_with_logits(
            &t[0],
            &target("bce_with_logits"),
            Reduction::Mean,
        )?)
    })?;
    check("bce_with_logits_sum", &["input"], None, TIGHT, |t| {
        Ok(loss::binary_cross_entropy_with_logits(
            &t[0],
            &target("bce_with_logits_sum"),
            Reduction::Sum,
        )?)
    })?;
    // F.mse_loss, F.l1_loss on [3, 5], mean.
    check("mse", &["input"], None, TIGHT, |t| {
        Ok(loss::mse_loss(&t[0], &target("mse"), Reduction::Mean)?)
    })?;
    check("l1", &["input"], None, TIGHT, |t| {
        Ok(loss::l1_loss(&t[0], &target("l1"), Reduction::Mean)?)
    })?;
    // F.cross_entropy(x [5, 7], [0, 6, 3, 3, 1]), mean.
    let classes = target("cross_entropy").to_dtype(DType::U32)?;
    check("cross_entropy", &["input"], None, TIGHT, |t| {
        Ok(loss::cross_entropy(&t[0], &classes, Reduction::Mean)?)
    })?;
    // -0.5 * sum(1 + logvar - mu^2 - exp(logvar)), mu and logvar [4, 5].
    check("gaussian_kl_sum", &["mu", "logvar"], None, TIGHT, |t| {
        Ok(loss::gaussian_kl(&t[0], &t[1], Reduction::Sum)?)
    })
}

// ---- optimizers ----

/// Three steps of `optimizer` on the case's parameter with its given gradients, compared with
/// PyTorch's parameter after each step.
fn check_optimizer(
    case: &str,
    make: impl FnOnce(Vec<(String, Var)>) -> Box<dyn Optimizer>,
) -> Result<()> {
    let param = Var::new(&get(case, "param"))?;
    let mut optimizer = make(vec![("p".to_string(), param.clone())]);
    for step in 1..=3 {
        // The gradient is fed as that of a loss sum(p · g), whose gradient with respect to p is g.
        let grads = param
            .mul(&get(case, &format!("grad{step}")))?
            .sum_all()?
            .backward()?;
        optimizer.step(&grads)?;
        assert_close(
            &format!("{case} step {step}"),
            &param,
            &get(case, &format!("param{step}")),
            Tolerance {
                atol: 1e-6,
                rtol: 1e-5,
            },
        );
    }
    Ok(())
}

#[test]
fn optimizers() -> Result<()> {
    // torch.optim.Adam(lr=0.01, betas=(0.5, 0.999), eps=1e-8)
    check_optimizer("optim_adam", |p| {
        let config = AdamConfig {
            lr: 0.01,
            betas: (0.5, 0.999),
            eps: 1e-8,
            ..Default::default()
        };
        Box::new(Adam::new(p, config).unwrap())
    })?;
    // torch.optim.Adam(lr=0.01, betas=(0.9, 0.999), weight_decay=0.1): L2 in the gradient.
    check_optimizer("optim_adam_l2", |p| {
        let config = AdamConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        Box::new(Adam::new(p, config).unwrap())
    })?;
    // torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), weight_decay=0.1): decoupled decay.
    check_optimizer("optim_adamw", |p| {
        let config = AdamWConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        Box::new(AdamW::new(p, config).unwrap())
    })?;
    // torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    check_optimizer("optim_sgd_nesterov", |p| {
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Default::default()
        };
        Box::new(Sgd::new(p, config).unwrap())
    })?;
    // torch.optim.SGD(lr=0.1, momentum=0.8, dampening=0.3)
    check_optimizer("optim_sgd_dampening", |p| {
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.8,
            dampening: 0.3,
            ..Default::default()
        };
        Box::new(Sgd::new(p, config).unwrap())
    })
}

// ---- schedules and clipping ----

#[test]
fn learning_rate_schedules() -> Result<()> {
    // StepLR(step_size=3, gamma=0.5) and CosineAnnealingLR(T_max=10, eta_min=0.01) from
    // lr 0.1, read before each of 12 (25) steps: the cosine runs past T_max, where PyTorch's
    // schedule climbs back up.
    let exact = Tolerance {
        atol: 1e-8,
        rtol: 1e-6,
    };
    let lrs = |schedule: &dyn Schedule, n: u64| {
        let values: Vec<f32> = (0..n).map(|t| schedule.learning_rate(t) as f32).collect();
        Tensor::from_vec(values, [n as usize], Device::Cpu).unwrap()
    };
    let step = StepLr::new(0.1, 3, 0.5)?;
    assert_close(
        "StepLR",
        &lrs(&step, 12),
        &get("schedule_step_lr", "lrs"),
        exact,
    );
    let cosine = CosineAnnealingLr::new(0.1, 10, 0.01)?;
    assert_close(
        "CosineAnnealingLR",
        &lrs(&cosine, 25),
        &get("schedule_cosine", "lrs"),
        exact,
    );
    Ok(())
}

#[test]
fn gradient_norm_clipping() -> Result<()> {
    // torch.nn.utils.clip_grad_norm_([a [3, 4], b [5]], max_norm) for max_norm 1 (clips) and
    // 100 (leaves the gradients alone).
    for (case, max_norm) in [("clip_grad_norm", 1.0), ("clip_grad_norm_loose", 100.0)] {
        let a = Var::new(&Tensor::zeros([3, 4], DType::F32, Device::Cpu)?)?;
        let b = Var::new(&Tensor::zeros([5], DType::F32, Device::Cpu)?)?;
        // sum(a · ga) + sum(b · gb) has gradients ga and gb.
        let loss = a
            .mul(&get(case, "grad_a"))?
            .sum_all()?
            .add(&b.mul(&get(case, "grad_b"))?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let total = clip_grad_norm(&mut grads, &params, max_norm)?;
        let total = Tensor::from_vec(vec![total as f32], [], Device::Cpu)?;
        assert_close(case, &total, &get(case, "total_norm"), TIGHT);
        assert_close(case, grads.get(&a).unwrap(), &get(case, "clipped_a"), TIGHT);
        assert_close(case, grads.get(&b).unwrap(), &get(case, "clipped_b"), TIGHT);
    }
    Ok(())
}

#[test]
fn activations() -> Result<()> {
    // torch.stack([ReLU()(x), LeakyReLU(0.2)(x), Tanh()(x), Sigmoid()(x), SiLU()(x)]), x [4, 5].
    check("activations", &["input"], None, TIGHT, |t| {
        let x = &t[0];
        let outputs = [
            ReLU.forward(x)?,
            LeakyReLU::new(0.2).forward(x)?,
            Tanh.forward(x)?,
            Sigmoid.forward(x)?,
            SiLU.forward(x)?,
        ];
        Ok(Tensor::stack(&outputs.iter().collect::<Vec<_>>(), 0)?)
    })
}
