//! Layers: state-dict names and order, forward values worked out by hand or from the closed
//! form stated beside each case, batch norm's running statistics against PyTorch's update
//! formula, training versus evaluation, seeded dropout, shape errors, and gradient checks of
//! the normalisations in f64 (kiln_tensor::gradcheck against finite differences).

use kiln_nn::layers::{
    batch_norm, group_norm, layer_norm, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormConfig,
    Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Dropout, Embedding, Flatten,
    GroupNorm, LayerNorm, LayerNormConfig, LeakyReLU, Linear, LinearConfig, MaxPool2d, ReLU,
    RunningStats, Sequential, SiLU, Sigmoid, Tanh, Unflatten, UpsampleNearest2d,
};
use kiln_nn::{Init, Kind, Module, ModuleT, ParamStore};
use kiln_tensor::gradcheck::GradCheck;
use kiln_tensor::{DType, Device, Tensor, Var};

fn store() -> ParamStore {
    ParamStore::new(Device::Cpu, DType::F64, 7)
}

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "element {i}: got {a}, expected {e} (all: {actual:?} vs {expected:?})"
        );
    }
}

fn set(var: &Var, values: &[f64]) {
    var.set(&tensor(values, var.dims())).unwrap();
}

fn error_text<T: std::fmt::Debug>(result: kiln_nn::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

// ---- names ----

#[test]
fn nested_model_has_pytorch_state_dict_keys_in_registration_order() {
    // The PyTorch module this mirrors:
    //   main = nn.Sequential(nn.ConvTranspose2d(4, 3, 4, 2, 1), nn.BatchNorm2d(3), nn.ReLU(),
    //                        nn.Conv2d(3, 2, 3, bias=False), nn.Flatten())
    //   head = nn.Linear(8, 1)
    // whose state_dict() keys are these, minus `main.1.num_batches_tracked`.
    let store = store();
    let root = store.root();
    let main = root.sub("main");
    let _model = Sequential::new()
        .add(
            ConvTranspose2d::new(
                &main.sub(0),
                4,
                3,
                [4, 4],
                ConvTranspose2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .add(BatchNorm2d::new(&main.sub(1), 3).unwrap())
        .add(ReLU)
        .add(
            Conv2d::new(
                &main.sub(3),
                3,
                2,
                [3, 3],
                Conv2dConfig {
                    bias: false,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .add(Flatten::default());
    let _head = Linear::new(&root.sub("head"), 8, 1).unwrap();

    let entries: Vec<(String, Vec<usize>, Kind)> = store
        .entries()
        .into_iter()
        .map(|e| (e.name, e.var.dims().to_vec(), e.kind))
        .collect();
    let expected = [
        ("main.0.weight", vec![4, 3, 4, 4], Kind::Parameter),
        ("main.0.bias", vec![3], Kind::Parameter),
        ("main.1.weight", vec![3], Kind::Parameter),
        ("main.1.bias", vec![3], Kind::Parameter),
        ("main.1.running_mean", vec![3], Kind::Buffer),
        ("main.1.running_var", vec![3], Kind::Buffer),
        ("main.3.weight", vec![2, 3, 3, 3], Kind::Parameter),
        ("head.weight", vec![1, 8], Kind::Parameter),
        ("head.bias", vec![1], Kind::Parameter),
    ];
    let expected: Vec<(String, Vec<usize>, Kind)> = expected
        .into_iter()
        .map(|(name, dims, kind)| (name.to_string(), dims, kind))
        .collect();
    assert_eq!(entries, expected);
}

#[test]
fn optional_tensors_are_not_registered() {
    let store = store();
    let root = store.root();
    let no_bias = LinearConfig {
        bias: false,
        ..Default::default()
    };
    Linear::with_config(&root.sub("linear"), 3, 2, no_bias).unwrap();
    let not_affine = BatchNormConfig {
        affine: false,
        ..Default::default()
    };
    BatchNorm1d::with_config(&root.sub("bn"), 3, not_affine).unwrap();
    let no_layer_norm_bias = LayerNormConfig {
        bias: false,
        ..Default::default()
    };
    LayerNorm::with_config(&root.sub("ln"), &[3], no_layer_norm_bias).unwrap();
    Embedding::new(&root.sub("embed"), 5, 2).unwrap();
    let names: Vec<String> = store.entries().into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "linear.weight",
            "bn.running_mean",
            "bn.running_var",
            "ln.weight",
            "embed.weight"
        ]
    );
    // A second layer under a taken name is refused.
    assert!(Linear::new(&root.sub("linear"), 3, 2).is_err());
}

// ---- initialisation ----

fn max_abs(var: &Var) -> f64 {
    values(var).iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn linear_and_conv_default_bounds_use_pytorch_fan_in() {
    let store = store();
    let root = store.root();
    // nn.Linear(64, 32): weight and bias bounds 1/√64 = 0.125.
    let linear = Linear::new(&root.sub("linear"), 64, 32).unwrap();
    assert!(max_abs(linear.weight()) <= 0.125);
    assert!(max_abs(linear.weight()) > 0.12, "2048 draws fill the range");
    assert!(max_abs(linear.bias().unwrap()) <= 0.125);

    // nn.ConvTranspose2d(2, 16, 4): weight [2, 16, 4, 4]; PyTorch's fan-in is dim 1 times the
    // kernel, 16·16 = 256, so both bounds are 1/16. (With in·kh·kw = 32 they would be 0.177,
    // and 16 biases would not all stay under 1/16.)
    let transposed =
        ConvTranspose2d::new(&root.sub("up"), 2, 16, [4, 4], Default::default()).unwrap();
    assert!(max_abs(transposed.weight()) <= 0.0625);
    assert!(max_abs(transposed.weight()) > 0.06);
    assert!(max_abs(transposed.bias().unwrap()) <= 0.0625);

    // nn.Conv2d(16, 2, 4): weight [2, 16, 4, 4], fan-in 256, bounds 1/16.
    let conv = Conv2d::new(&root.sub("down"), 16, 2, [4, 4], Default::default()).unwrap();
    assert!(max_abs(conv.weight()) <= 0.0625);
    assert!(max_abs(conv.weight()) > 0.06);
    assert!(max_abs(conv.bias().unwrap()) <= 0.0625);
}

#[test]
fn dcgan_config_draws_small_normal_weights_and_zero_biases() {
    let store = store();
    let linear = Linear::with_config(&store.root(), 100, 100, LinearConfig::dcgan()).unwrap();
    let weights = values(linear.weight());
    let mean = weights.iter().sum::<f64>() / weights.len() as f64;
    let std =
        (weights.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / weights.len() as f64).sqrt();
    // 10⁴ draws of N(0, 0.02²): the sample std is within 2% of 0.02 and the mean within 5
    // standard errors (0.0002) of 0.
    assert!((std - 0.02).abs() < 0.0004, "std {std}");
    assert!(mean.abs() < 0.001, "mean {mean}");
    assert_eq!(values(linear.bias().unwrap()), vec![0.0; 100]);

    let conv_config = Conv2dConfig {
        weight_init: Init::DCGAN,
        bias_init: Some(Init::Constant(0.0)),
        ..Default::default()
    };
    let conv = Conv2d::new(&store.root().sub("conv"), 3, 4, [3, 3], conv_config).unwrap();
    assert_eq!(values(conv.bias().unwrap()), vec![0.0; 4]);
}

#[test]
fn norm_layers_start_as_identity_maps_and_embeddings_as_standard_normals() {
    let store = store();
    let root = store.root();
    let bn = BatchNorm2d::new(&root.sub("bn"), 3).unwrap();
    assert_eq!(values(bn.weight().unwrap()), vec![1.0; 3]);
    assert_eq!(values(bn.bias().unwrap()), vec![0.0; 3]);
    assert_eq!(values(&bn.running_stats().mean), vec![0.0; 3]);
    assert_eq!(values(&bn.running_stats().var), vec![1.0; 3]);
    let ln = LayerNorm::new(&root.sub("ln"), &[2, 3]).unwrap();
    assert_eq!(values(ln.weight().unwrap()), vec![1.0; 6]);
    assert_eq!(values(ln.bias().unwrap()), vec![0.0; 6]);

    let embedding = Embedding::new(&root.sub("embed"), 100, 100).unwrap();
    let weights = values(embedding.weight());
    let mean = weights.iter().sum::<f64>() / weights.len() as f64;
    let var = weights.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / weights.len() as f64;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "{mean} {var}"
    );
}

// ---- dense layers ----

#[test]
fn linear_computes_x_times_weight_transposed_plus_bias() {
    let store = store();
    let linear = Linear::new(&store.root(), 3, 2).unwrap();
    set(linear.weight(), &[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]); // rows (1, 2, 3) and (-1, 0, 1)
    set(linear.bias().unwrap(), &[0.5, -0.5]);
    // x = (1, 1, 1): (6 + 0.5, 0 - 0.5); x = (2, 0, -1): (2 - 3 + 0.5, -2 - 1 - 0.5).
    let x = tensor(&[1.0, 1.0, 1.0, 2.0, 0.0, -1.0], &[2, 3]);
    let y = linear.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 2]);
    assert_eq!(values(&y), [6.5, -0.5, -0.5, -3.5]);

    // Leading dims are kept: [2, 1, 3] → [2, 1, 2]; a vector [3] → [2].
    let y = linear.forward(&x.reshape([2, 1, 3]).unwrap()).unwrap();
    assert_eq!(y.dims(), [2, 1, 2]);
    assert_eq!(values(&y), [6.5, -0.5, -0.5, -3.5]);
    let y = linear.forward(&tensor(&[2.0, 0.0, -1.0], &[3])).unwrap();
    assert_eq!(y.dims(), [2]);
    assert_eq!(values(&y), [-0.5, -3.5]);

    let message = error_text(linear.forward(&tensor(&[0.0; 8], &[2, 4])));
    assert!(
        message.contains("expected input [.., 3], got [2, 4]"),
        "{message}"
    );
}

#[test]
fn linear_gradients_reach_weight_and_bias() {
    let store = store();
    let linear = Linear::new(&store.root(), 2, 1).unwrap();
    set(linear.weight(), &[2.0, 3.0]);
    // y = 2a + 3b + c; d(sum y)/dW = sum of the rows of x, d/dc = number of rows.
    let x = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let grads = linear
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(values(grads.get(linear.weight()).unwrap()), [4.0, 6.0]);
    assert_eq!(values(grads.get(linear.bias().unwrap()).unwrap()), [2.0]);
}

#[test]
fn embedding_picks_rows_for_indices_of_any_shape() {
    let store = store();
    let embedding = Embedding::new(&store.root(), 3, 2).unwrap();
    set(embedding.weight(), &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]); // row i = (10i, 10i + 1)
    let indices = Tensor::from_vec(vec![2u32, 0, 1, 2], [2, 2], Device::Cpu).unwrap();
    let y = embedding.forward(&indices).unwrap();
    assert_eq!(y.dims(), [2, 2, 2]);
    assert_eq!(values(&y), [20.0, 21.0, 0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);

    // d(sum of the outputs)/d(row r) = the number of times r was picked: 1, 1, 2.
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        values(grads.get(embedding.weight()).unwrap()),
        [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    );

    let out_of_range = Tensor::from_vec(vec![3u32], [1], Device::Cpu).unwrap();
    assert!(embedding.forward(&out_of_range).is_err());
    let message = error_text(embedding.forward(&tensor(&[0.0], &[1])));
    assert!(
        message.contains("indices must be u32, got f64"),
        "{message}"
    );
}

// ---- convolutions and pooling ----

#[test]
fn conv2d_sums_windows_with_stride_and_padding() {
    let store = store();
    let conv = Conv2d::new(&store.root().sub("a"), 1, 1, [2, 2], Default::default()).unwrap();
    set(conv.weight(), &[1.0; 4]);
    set(conv.bias().unwrap(), &[0.5]);
    // x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]; 2x2 window sums: 1+2+4+5 = 12, 16, 24, 28.
    let x = tensor(
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1, 1, 3, 3],
    );
    let y = conv.forward(&x).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 2]);
    assert_eq!(values(&y), [12.5, 16.5, 24.5, 28.5]);

    // Stride 2, padding 1: OH = ⌊(3 + 2 - 2) / 2⌋ + 1 = 2. The windows start at (-1, -1),
    // (-1, 1), (1, -1), (1, 1) and hold {1}, {2, 3}, {4, 7}, {5, 6, 8, 9}.
    let config = Conv2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        bias: false,
        ..Default::default()
    };
    let strided = Conv2d::new(&store.root().sub("b"), 1, 1, [2, 2], config).unwrap();
    set(strided.weight(), &[1.0; 4]);
    assert_eq!(
        values(&strided.forward(&x).unwrap()),
        [1.0, 5.0, 11.0, 28.0]
    );

    let message = error_text(conv.forward(&tensor(&[0.0; 18], &[1, 2, 3, 3])));
    assert!(
        message.contains("expected input [N, 1, H, W], got [1, 2, 3, 3]"),
        "{message}"
    );
}

#[test]
fn conv_weights_are_out_in_and_transposed_weights_in_out() {
    let store = store();
    // Two input channels a and b, one output channel: 2a + 3b + 1 for both layers, with
    // weights [1, 2, 1, 1] (Conv2d: [out, in, ..]) and [2, 1, 1, 1] (ConvTranspose2d).
    let conv = Conv2d::new(&store.root().sub("c"), 2, 1, [1, 1], Default::default()).unwrap();
    let transposed =
        ConvTranspose2d::new(&store.root().sub("t"), 2, 1, [1, 1], Default::default()).unwrap();
    assert_eq!(conv.weight().dims(), [1, 2, 1, 1]);
    assert_eq!(transposed.weight().dims(), [2, 1, 1, 1]);
    for (weight, bias) in [
        (conv.weight(), conv.bias().unwrap()),
        (transposed.weight(), transposed.bias().unwrap()),
    ] {
        set(weight, &[2.0, 3.0]);
        set(bias, &[1.0]);
    }
    let x = tensor(&[1.0, 2.0, 10.0, 20.0], &[1, 2, 1, 2]); // a = (1, 2), b = (10, 20)
    for y in [conv.forward(&x).unwrap(), transposed.forward(&x).unwrap()] {
        assert_eq!(y.dims(), [1, 1, 1, 2]);
        assert_eq!(values(&y), [33.0, 65.0]);
    }
}

#[test]
fn conv_transpose2d_spreads_each_pixel_over_its_window() {
    let store = store();
    let config = ConvTranspose2dConfig {
        stride: [2, 2],
        ..Default::default()
    };
    let up = ConvTranspose2d::new(&store.root(), 1, 1, [2, 2], config).unwrap();
    set(up.weight(), &[1.0; 4]);
    set(up.bias().unwrap(), &[0.25]);
    // OH = (2 - 1)·2 + (2 - 1) + 1 = 4: each pixel fills its own 2x2 block.
    let y = up
        .forward(&tensor(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]))
        .unwrap();
    assert_eq!(y.dims(), [1, 1, 4, 4]);
    let expected: Vec<f64> = [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        .iter()
        .map(|&v| v as f64 + 0.25)
        .collect();
    assert_eq!(values(&y), expected);
}

#[test]
fn pooling_and_upsampling_modules() {
    // x = [[1..4], [5..8], [9..12], [13..16]].
    let x = tensor(&(1..=16).map(f64::from).collect::<Vec<_>>(), &[1, 1, 4, 4]);
    // 2x2 windows: maxima 6, 8, 14, 16; means (1+2+5+6)/4 = 3.5, 5.5, 11.5, 13.5.
    assert_eq!(
        values(&MaxPool2d::new([2, 2]).forward(&x).unwrap()),
        [6.0, 8.0, 14.0, 16.0]
    );
    assert_eq!(
        values(&AvgPool2d::new([2, 2]).forward(&x).unwrap()),
        [3.5, 5.5, 11.5, 13.5]
    );

    let small = tensor(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
    let doubled = UpsampleNearest2d::with_scale([2, 2])
        .forward(&small)
        .unwrap();
    assert_eq!(doubled.dims(), [1, 1, 4, 4]);
    assert_eq!(
        values(&doubled),
        [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]
    );
    // To 3x3, output row i copies row ⌊2i/3⌋ = 0, 0, 1 (likewise columns).
    let resized = UpsampleNearest2d::with_size([3, 3])
        .forward(&small)
        .unwrap();
    assert_eq!(
        values(&resized),
        [1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]
    );
    assert!(UpsampleNearest2d::with_scale([2, 2])
        .forward(&tensor(&[1.0, 2.0], &[2]))
        .is_err());
}

// ---- batch norm ----

/// (x - mean) / √(var + 1e-5) for each value of one channel, var biased.
fn normalize(channel: &[f64]) -> Vec<f64> {
    let n = channel.len() as f64;
    let mean = channel.iter().sum::<f64>() / n;
    let var = channel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    channel
        .iter()
        .map(|v| (v - mean) / (var + 1e-5).sqrt())
        .collect()
}

#[test]
fn batch_norm_1d_training_normalises_with_batch_statistics_and_updates_running_ones() {
    let store = store();
    let bn = BatchNorm1d::new(&store.root(), 2).unwrap();
    set(bn.weight().unwrap(), &[2.0, 1.0]);
    set(bn.bias().unwrap(), &[0.0, -1.0]);
    // Channel 0 holds 1, 2, 3 (mean 2, biased var 2/3, unbiased 1); channel 1 holds 2, 4, 6
    // (mean 4, biased var 8/3, unbiased 4).
    let x = tensor(&[1.0, 2.0, 2.0, 4.0, 3.0, 6.0], &[3, 2]);
    let y = bn.forward_t(&x, true).unwrap();
    let (c0, c1) = (normalize(&[1.0, 2.0, 3.0]), normalize(&[2.0, 4.0, 6.0]));
    let expected: Vec<f64> = (0..3).flat_map(|i| [2.0 * c0[i], c1[i] - 1.0]).collect();
    assert_close(&values(&y), &expected, 1e-12);

    // running = 0.9·running + 0.1·batch, from mean 0 and var 1:
    // means 0.1·2 = 0.2 and 0.1·4 = 0.4; vars 0.9 + 0.1·1 = 1.0 and 0.9 + 0.1·4 = 1.3.
    let stats = bn.running_stats();
    assert_close(&values(&stats.mean), &[0.2, 0.4], 1e-15);
    assert_close(&values(&stats.var), &[1.0, 1.3], 1e-15);

    // A second batch: channel 0 holds 0, 4, 8 (mean 4, unbiased var 16), channel 1 holds
    // 1, 1, 1 (mean 1, var 0). Means 0.9·0.2 + 0.4 = 0.58 and 0.9·0.4 + 0.1 = 0.46; vars
    // 0.9·1 + 1.6 = 2.5 and 0.9·1.3 + 0 = 1.17.
    let x = tensor(&[0.0, 1.0, 4.0, 1.0, 8.0, 1.0], &[3, 2]);
    let y = bn.forward_t(&x, true).unwrap();
    assert_close(&values(&stats.mean), &[0.58, 0.46], 1e-15);
    assert_close(&values(&stats.var), &[2.5, 1.17], 1e-15);
    // A constant channel normalises to 0, leaving the bias: -1.
    assert_close(&values(&y)[1..2], &[-1.0], 1e-12);
}

#[test]
fn batch_norm_evaluation_uses_running_statistics_and_leaves_them_alone() {
    let store = store();
    let bn = BatchNorm1d::new(&store.root(), 2).unwrap();
    let stats = bn.running_stats();
    set(&stats.mean, &[1.0, -2.0]);
    set(&stats.var, &[4.0, 0.25]);
    set(bn.weight().unwrap(), &[3.0, 1.0]);
    set(bn.bias().unwrap(), &[0.5, 0.0]);
    // [N, C, L] = [1, 2, 2]: channel 0 = (1, 5), channel 1 = (-2, -1).
    let x = tensor(&[1.0, 5.0, -2.0, -1.0], &[1, 2, 2]);
    let y = bn.forward_t(&x, false).unwrap();
    let expected = [
        (1.0 - 1.0) / (4.0f64 + 1e-5).sqrt() * 3.0 + 0.5,
        (5.0 - 1.0) / (4.0f64 + 1e-5).sqrt() * 3.0 + 0.5,
        (-2.0 + 2.0) / (0.25f64 + 1e-5).sqrt(),
        (-1.0 + 2.0) / (0.25f64 + 1e-5).sqrt(),
    ];
    assert_close(&values(&y), &expected, 1e-12);
    assert_eq!(values(&stats.mean), [1.0, -2.0]);
    assert_eq!(values(&stats.var), [4.0, 0.25]);

    // The same batch in training mode ignores the running statistics: it is normalised with
    // its own (channel 0 (1, 5) → (-1, 1)·√(4 / (4 + eps)), times 3, plus 0.5).
    let y = bn.forward_t(&x, true).unwrap();
    let c0 = normalize(&[1.0, 5.0]);
    assert_close(
        &values(&y)[..2],
        &[3.0 * c0[0] + 0.5, 3.0 * c0[1] + 0.5],
        1e-12,
    );
}

#[test]
fn batch_norm_2d_reduces_over_batch_height_and_width() {
    let store = store();
    let bn = BatchNorm2d::new(&store.root(), 2).unwrap();
    // [N, C, H, W] = [2, 2, 1, 2]; channel 0 takes x[n, 0, 0, w] = 1, 2 (n = 0), 3, 4 (n = 1):
    // mean 2.5, biased var 1.25, unbiased 5/3; channel 1 takes 10, 10, 30, 30: mean 20, var
    // 100, unbiased 400/3.
    let x = tensor(&[1.0, 2.0, 10.0, 10.0, 3.0, 4.0, 30.0, 30.0], &[2, 2, 1, 2]);
    let y = bn.forward_t(&x, true).unwrap();
    let c0 = normalize(&[1.0, 2.0, 3.0, 4.0]);
    let c1 = normalize(&[10.0, 10.0, 30.0, 30.0]);
    let expected = [c0[0], c0[1], c1[0], c1[1], c0[2], c0[3], c1[2], c1[3]];
    assert_close(&values(&y), &expected, 1e-12);
    let stats = bn.running_stats();
    assert_close(&values(&stats.mean), &[0.25, 2.0], 1e-15);
    assert_close(
        &values(&stats.var),
        &[0.9 + 0.5 / 3.0, 0.9 + 40.0 / 3.0],
        1e-12,
    );
}

#[test]
fn batch_norm_momentum_eps_and_no_affine_follow_the_config() {
    let store = store();
    let config = BatchNormConfig {
        eps: 0.5,
        momentum: 0.5,
        affine: false,
        ..Default::default()
    };
    let bn = BatchNorm1d::with_config(&store.root(), 1, config).unwrap();
    // Values 0 and 2: mean 1, biased var 1, unbiased 2. y = ∓1/√(1 + 0.5).
    let y = bn.forward_t(&tensor(&[0.0, 2.0], &[2, 1]), true).unwrap();
    let s = 1.5f64.sqrt();
    assert_close(&values(&y), &[-1.0 / s, 1.0 / s], 1e-15);
    // running mean 0.5·0 + 0.5·1, running var 0.5·1 + 0.5·2.
    assert_close(&values(&bn.running_stats().mean), &[0.5], 1e-15);
    assert_close(&values(&bn.running_stats().var), &[1.5], 1e-15);
}

#[test]
fn running_statistic_updates_are_not_tracked_by_autograd() {
    let store = store();
    let bn = BatchNorm1d::new(&store.root(), 2).unwrap();
    let x = tensor(&[1.0, 2.0, 3.0, 5.0], &[2, 2]).track().unwrap();
    let y = bn.forward_t(&x, true).unwrap();
    let stats = bn.running_stats();
    let grads = y.square().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&stats.mean).is_none());
    assert!(grads.get(&stats.var).is_none());
    assert!(grads.get(bn.weight().unwrap()).is_some());
    // In evaluation the running statistics are constants too.
    let y = bn.forward_t(&x, false).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&stats.mean).is_none());
    assert!(grads.get(&stats.var).is_none());
    assert!(grads.get(&x).is_some());
}

#[test]
fn batch_norm_rejects_wrong_ranks_channels_and_single_values() {
    let store = store();
    let bn2 = BatchNorm2d::new(&store.root().sub("a"), 3).unwrap();
    let message = error_text(bn2.forward_t(&tensor(&[0.0; 24], &[2, 3, 4]), true));
    assert!(
        message.contains("BatchNorm2d: expected input [N, 3, H, W], got [2, 3, 4]"),
        "{message}"
    );
    let message = error_text(bn2.forward_t(&tensor(&[0.0; 16], &[2, 2, 2, 2]), true));
    assert!(
        message.contains("expected input [N, 3, H, W], got [2, 2, 2, 2]"),
        "{message}"
    );
    let bn1 = BatchNorm1d::new(&store.root().sub("b"), 3).unwrap();
    let message = error_text(bn1.forward_t(&tensor(&[0.0; 16], &[2, 2, 2, 2]), true));
    assert!(
        message.contains("BatchNorm1d: expected input [N, 3] or [N, 3, L], got [2, 2, 2, 2]"),
        "{message}"
    );
    // One value per channel has no variance to train with (PyTorch refuses it too); in
    // evaluation it is fine.
    let message = error_text(bn1.forward_t(&tensor(&[0.0; 3], &[1, 3]), true));
    assert!(
        message.contains("more than 1 value per channel"),
        "{message}"
    );
    assert!(bn1.forward_t(&tensor(&[0.0; 3], &[1, 3]), false).is_ok());
    // The functional form checks its per-channel tensors.
    let message = error_text(batch_norm(
        &tensor(&[0.0; 6], &[2, 3]),
        None,
        Some(&tensor(&[1.0; 2], &[2])),
        None,
        true,
        0.1,
        1e-5,
    ));
    assert!(
        message.contains("weight should be [3], got [2]"),
        "{message}"
    );
    assert!(batch_norm(
        &tensor(&[0.0; 6], &[2, 3]),
        None,
        None,
        None,
        false,
        0.1,
        1e-5
    )
    .is_err());
}

// ---- layer norm ----

#[test]
fn layer_norm_normalises_each_sample_over_trailing_dims() {
    let store = store();
    let ln = LayerNorm::new(&store.root(), &[3]).unwrap();
    set(ln.weight().unwrap(), &[1.0, 2.0, 3.0]);
    set(ln.bias().unwrap(), &[0.0, 0.0, 1.0]);
    // Rows (1, 2, 3) and (0, 0, 6): means 2 and 2, biased vars 2/3 and 8.
    let x = tensor(&[1.0, 2.0, 3.0, 0.0, 0.0, 6.0], &[2, 3]);
    let y = ln.forward(&x).unwrap();
    let (a, b) = (normalize(&[1.0, 2.0, 3.0]), normalize(&[0.0, 0.0, 6.0]));
    let expected = [
        a[0],
        2.0 * a[1],
        3.0 * a[2] + 1.0,
        b[0],
        2.0 * b[1],
        3.0 * b[2] + 1.0,
    ];
    assert_close(&values(&y), &expected, 1e-12);

    // Over the last two dims of [2, 2, 2]: each sample's four values together.
    let ln2 = LayerNorm::new(&store.root().sub("two"), &[2, 2]).unwrap();
    let x = tensor(&[1.0, 2.0, 3.0, 4.0, 8.0, 8.0, 0.0, 0.0], &[2, 2, 2]);
    let (a, b) = (
        normalize(&[1.0, 2.0, 3.0, 4.0]),
        normalize(&[8.0, 8.0, 0.0, 0.0]),
    );
    let expected: Vec<f64> = a.into_iter().chain(b).collect();
    assert_close(&values(&ln2.forward(&x).unwrap()), &expected, 1e-12);

    let message = error_text(ln2.forward(&tensor(&[0.0; 6], &[2, 3])));
    assert!(
        message.contains("expected input [.., 2, 2], got [2, 3]"),
        "{message}"
    );
}

// ---- group norm ----

#[test]
fn group_norm_normalises_each_sample_over_its_groups_channels_and_positions() {
    let store = store();
    let gn = GroupNorm::new(&store.root(), 2, 4).unwrap();
    set(gn.weight(), &[1.0, 2.0, 3.0, 4.0]);
    set(gn.bias(), &[0.0, 1.0, 0.0, -1.0]);
    // [1, 4, 2]: group 0 is channels 0 and 1 (values 1, 2, 3, 4), group 1 channels 2 and 3
    // (values 0, 0, 6, 2).
    let x = tensor(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 6.0, 2.0], &[1, 4, 2]);
    let y = gn.forward(&x).unwrap();
    let (a, b) = (
        normalize(&[1.0, 2.0, 3.0, 4.0]),
        normalize(&[0.0, 0.0, 6.0, 2.0]),
    );
    let expected = [
        a[0],
        a[1],
        2.0 * a[2] + 1.0,
        2.0 * a[3] + 1.0,
        3.0 * b[0],
        3.0 * b[1],
        4.0 * b[2] - 1.0,
        4.0 * b[3] - 1.0,
    ];
    assert_close(&values(&y), &expected, 1e-12);

    // One group is layer norm over (C, *) without the affine terms; here checked against it.
    let x = random(&[2, 3, 2, 2], 20);
    let one_group = group_norm(&x, 1, None, None, 1e-5).unwrap();
    let layer = layer_norm(&x, &[3, 2, 2], None, None, 1e-5).unwrap();
    assert_close(&values(&one_group), &values(&layer), 1e-12);

    for (result, wanted) in [
        (
            error_text(GroupNorm::new(&store.root().sub("bad"), 3, 4).map(|_| ())),
            "4 channels do not split into 3 groups",
        ),
        (
            error_text(gn.forward(&tensor(&[0.0; 6], &[1, 3, 2]))),
            "expected input [N, 4, *], got [1, 3, 2]",
        ),
        (
            error_text(group_norm(&x, 0, None, None, 1e-5)),
            "3 channels do not split into 0 groups",
        ),
    ] {
        assert!(result.contains(wanted), "{result}");
    }
}

// ---- gradient checks (f64, autograd against central differences) ----

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut generator = kiln_tensor::Generator::new(seed);
    Tensor::randn(shape, 0.0, 1.0, DType::F64, Device::Cpu, &mut generator).unwrap()
}

#[test]
fn batch_norm_training_gradients_match_finite_differences() {
    let inputs = [
        random(&[4, 3, 2], 1),
        random(&[3], 2).affine(0.5, 1.0).unwrap(),
        random(&[3], 3),
    ];
    GradCheck::default()
        .check(
            |t| {
                batch_norm(&t[0], None, Some(&t[1]), Some(&t[2]), true, 0.1, 1e-5)
                    .map_err(to_tensor_error)
            },
            &inputs,
        )
        .unwrap();
}

#[test]
fn batch_norm_evaluation_gradients_match_finite_differences() {
    let running = RunningStats {
        mean: Var::new(&random(&[3], 4)).unwrap(),
        var: Var::new(&random(&[3], 5).abs().unwrap().add_scalar(0.5).unwrap()).unwrap(),
    };
    let inputs = [random(&[2, 3, 2, 2], 6), random(&[3], 7), random(&[3], 8)];
    GradCheck::default()
        .check(
            |t| {
                batch_norm(
                    &t[0],
                    Some(&running),
                    Some(&t[1]),
                    Some(&t[2]),
                    false,
                    0.1,
                    1e-5,
                )
                .map_err(to_tensor_error)
            },
            &inputs,
        )
        .unwrap();
}

#[test]
fn batch_norm_2d_layer_input_gradient_matches_finite_differences() {
    let store = store();
    let bn = BatchNorm2d::new(&store.root(), 2).unwrap();
    set(bn.weight().unwrap(), &[0.5, -1.5]);
    set(bn.bias().unwrap(), &[0.1, 0.2]);
    GradCheck::default()
        .check(
            |t| bn.forward_t(&t[0], true).map_err(to_tensor_error),
            &[random(&[3, 2, 2, 2], 9)],
        )
        .unwrap();
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let inputs = [
        random(&[3, 2, 4], 10),
        random(&[2, 4], 11),
        random(&[2, 4], 12),
    ];
    GradCheck::default()
        .check(
            |t| layer_norm(&t[0], &[2, 4], Some(&t[1]), Some(&t[2]), 1e-5).map_err(to_tensor_error),
            &inputs,
        )
        .unwrap();
}

#[test]
fn group_norm_gradients_match_finite_differences() {
    let inputs = [
        random(&[2, 6, 3, 2], 21),
        random(&[6], 22),
        random(&[6], 23),
    ];
    GradCheck::default()
        .check(
            |t| group_norm(&t[0], 3, Some(&t[1]), Some(&t[2]), 1e-5).map_err(to_tensor_error),
            &inputs,
        )
        .unwrap();
}

#[test]
fn silu_gradient_matches_finite_differences() {
    GradCheck::default()
        .check(
            |t| SiLU.forward(&t[0]).map_err(to_tensor_error),
            &[random(&[3, 5], 24).mul_scalar(3.0).unwrap()],
        )
        .unwrap();
}

/// GradCheck's functions return kiln_tensor errors; layer errors are carried as text.
fn to_tensor_error(error: kiln_nn::NnError) -> kiln_tensor::Error {
    match error {
        kiln_nn::NnError::Tensor(inner) => inner,
        other => kiln_tensor::Error::Invalid {
            op: "test",
            message: other.to_string(),
        },
    }
}

// ---- dropout ----

#[test]
fn dropout_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p() {
    let dropout = Dropout::new(0.3, 42).unwrap();
    let x = Tensor::full(2.0, [100, 100], DType::F32, Device::Cpu).unwrap();
    let y = values(&dropout.forward_t(&x, true).unwrap());
    // x · (1/(1 - p)), the scale worked out in f64 and applied in f32, as PyTorch does.
    let kept_value = 2.0f32 * (1.0 / (1.0 - 0.3f64)) as f32;
    let dropped = y.iter().filter(|&&v| v == 0.0).count();
    assert!(y.iter().all(|&v| v == 0.0 || v == kept_value as f64));
    // Binomial(10⁴, 0.3): mean 3000, standard deviation ≈ 46; allow about 4.3 of them.
    assert!((2800..=3200).contains(&dropped), "{dropped} dropped");
}

#[test]
fn dropout_masks_are_fixed_by_the_seed_and_replayable_from_an_offset() {
    let x = random(&[64], 13);
    let first = Dropout::new(0.5, 1).unwrap();
    let again = Dropout::new(0.5, 1).unwrap();
    let other = Dropout::new(0.5, 2).unwrap();
    assert_eq!(first.seed(), 1);
    assert_eq!(first.offset(), 0);
    let a = values(&first.forward_t(&x, true).unwrap());
    assert_eq!(a, values(&again.forward_t(&x, true).unwrap()));
    assert_ne!(a, values(&other.forward_t(&x, true).unwrap()));
    // The stream moves on: the next mask differs, and rewinding replays the first.
    let offset = first.offset();
    assert!(offset > 0);
    let b = values(&first.forward_t(&x, true).unwrap());
    assert_ne!(a, b);
    first.set_offset(0);
    assert_eq!(a, values(&first.forward_t(&x, true).unwrap()));
    assert_eq!(first.offset(), offset);

    // A generator saved from one layer resumes its stream in another.
    let saved = first.generator();
    let next = values(&first.forward_t(&x, true).unwrap());
    other.set_generator(saved);
    assert_eq!((other.seed(), other.offset()), (1, offset));
    assert_eq!(next, values(&other.forward_t(&x, true).unwrap()));
}

#[test]
fn dropout_is_the_identity_in_evaluation_and_its_gradient_is_the_mask() {
    let dropout = Dropout::new(0.5, 3).unwrap();
    let x = random(&[32], 14).track().unwrap();
    let offset = dropout.offset();
    assert_eq!(values(&dropout.forward_t(&x, false).unwrap()), values(&x));
    assert_eq!(dropout.offset(), offset, "evaluation draws nothing");

    let y = dropout.forward_t(&x, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    // d(sum y)/dx = 2 where kept (y = 2x) and 0 where dropped.
    for ((g, y), x) in values(grads.get(&x).unwrap())
        .into_iter()
        .zip(values(&y))
        .zip(values(&x))
    {
        assert_eq!(g, if y == 0.0 { 0.0 } else { 2.0 }, "x {x}, y {y}");
        assert!(y == 0.0 || y == 2.0 * x);
    }

    let x = random(&[8], 15);
    assert_eq!(
        values(&Dropout::new(0.0, 0).unwrap().forward_t(&x, true).unwrap()),
        values(&x)
    );
    assert_eq!(
        values(&Dropout::new(1.0, 0).unwrap().forward_t(&x, true).unwrap()),
        vec![0.0; 8]
    );
    assert!(Dropout::new(1.5, 0).is_err());
    assert!(Dropout::new(-0.1, 0).is_err());
}

// ---- activations, reshapes, sequences ----

#[test]
fn activation_modules_compute_their_functions() {
    let x = tensor(&[-2.0, 0.0, 0.5], &[3]);
    assert_eq!(values(&ReLU.forward(&x).unwrap()), [0.0, 0.0, 0.5]);
    assert_eq!(
        values(&LeakyReLU::new(0.2).forward(&x).unwrap()),
        [-0.4, 0.0, 0.5]
    );
    assert_eq!(LeakyReLU::default().negative_slope, 0.01);
    let each = |f: fn(f64) -> f64| -> Vec<f64> { [-2.0, 0.0, 0.5].map(f).to_vec() };
    assert_close(&values(&Tanh.forward(&x).unwrap()), &each(f64::tanh), 1e-15);
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    assert_close(
        &values(&Sigmoid.forward(&x).unwrap()),
        &each(sigmoid),
        1e-15,
    );
    let silu = |v: f64| v / (1.0 + (-v).exp());
    assert_close(&values(&SiLU.forward(&x).unwrap()), &each(silu), 1e-15);
}

#[test]
fn flatten_and_unflatten_merge_and_split_dims() {
    let x = random(&[2, 3, 4, 5], 16);
    assert_eq!(Flatten::default().forward(&x).unwrap().dims(), [2, 60]);
    assert_eq!(Flatten::new(0, 1).forward(&x).unwrap().dims(), [6, 4, 5]);
    assert_eq!(Flatten::new(-2, -1).forward(&x).unwrap().dims(), [2, 3, 20]);
    assert_eq!(Flatten::new(2, 2).forward(&x).unwrap().dims(), [2, 3, 4, 5]);
    let flat = Flatten::default().forward(&x).unwrap();
    assert_eq!(values(&flat), values(&x));
    let message = error_text(Flatten::new(2, 1).forward(&x));
    assert!(
        message.contains("cannot flatten dims 2 to 1 of [2, 3, 4, 5]"),
        "{message}"
    );
    assert!(Flatten::new(1, 4).forward(&x).is_err());
    assert!(Flatten::new(-5, -1).forward(&x).is_err());

    let split = Unflatten::new(1, vec![3, 4, 5]).forward(&flat).unwrap();
    assert_eq!(split.dims(), [2, 3, 4, 5]);
    assert_eq!(values(&split), values(&x));
    assert_eq!(
        Unflatten::new(-1, vec![2, 2])
            .forward(&x)
            .unwrap_err()
            .to_string(),
        "Unflatten: cannot split dim -1 of [2, 3, 4, 5] into [2, 2]"
    );
}

#[test]
fn sequential_applies_layers_in_order_and_passes_the_mode() {
    let store = store();
    let main = store.root().sub("main");
    let first = Linear::new(&main.sub(0), 2, 2).unwrap();
    set(first.weight(), &[1.0, 0.0, 0.0, -1.0]); // (a, b) → (a, -b)
    set(first.bias().unwrap(), &[0.0, 0.0]);
    let last = Linear::new(&main.sub(2), 2, 1).unwrap();
    set(last.weight(), &[1.0, 1.0]);
    set(last.bias().unwrap(), &[1.0]);
    let model = Sequential::new()
        .add(first)
        .add(ReLU)
        .add(last)
        .add(Dropout::new(0.5, 0).unwrap());
    assert_eq!(model.len(), 4);
    // (3, 2) → (3, -2) → (3, 0) → 4; (-1, -5) → (-1, 5) → (0, 5) → 6.
    let x = tensor(&[3.0, 2.0, -1.0, -5.0], &[2, 2]);
    assert_eq!(values(&model.forward_t(&x, false).unwrap()), [4.0, 6.0]);
    // In training the dropout at the end either zeroes or doubles each output.
    let big = tensor(&[3.0, 2.0].repeat(64), &[64, 2]);
    let trained = values(&model.forward_t(&big, true).unwrap());
    assert!(trained.iter().all(|&v| v == 0.0 || v == 8.0));
    assert!(trained.contains(&0.0) && trained.contains(&8.0));
    assert!(Sequential::new().is_empty());
    assert_eq!(
        values(&Sequential::new().forward_t(&x, true).unwrap()),
        values(&x)
    );
}

/// A convolution followed by an activation layer runs as one fused op in a `Sequential`, with
/// the values and gradients of the two layers run one after the other, to the last bit; a
/// leaky ReLU with a negative slope is not fused, and runs as its own layer.
#[test]
fn a_sequential_fuses_a_convolution_with_the_activation_after_it() {
    let store = ParamStore::new(Device::Cpu, DType::F32, 3);
    let root = store.root();
    let same = Conv2dConfig {
        padding: [1, 1],
        ..Default::default()
    };
    let up = ConvTranspose2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let conv = Conv2d::new(&root.sub(0), 4, 16, [3, 3], same).unwrap();
    let up = ConvTranspose2d::new(&root.sub(2), 16, 3, [4, 4], up).unwrap();
    let last = Conv2d::new(&root.sub(4), 3, 2, [3, 3], same).unwrap();
    let model = Sequential::new()
        .add(conv.clone())
        .add(LeakyReLU::new(0.2))
        .add(up.clone())
        .add(Tanh)
        .add(last.clone())
        .add(LeakyReLU::new(-0.5));
    let one_by_one = |x: &Tensor| -> kiln_nn::Result<Tensor> {
        let y = LeakyReLU::new(0.2).forward(&conv.forward(x)?)?;
        let y = Tanh.forward(&up.forward(&y)?)?;
        LeakyReLU::new(-0.5).forward(&last.forward(&y)?)
    };
    assert_same_training(&store, &model, one_by_one, [2, 4, 7, 7], 6);
}

/// `model` in training on a random `x` of `dims` has the values of `one_by_one` and every
/// one of `store`'s `parameters` parameters its gradient, bit for bit.
fn assert_same_training(
    store: &ParamStore,
    model: &Sequential,
    one_by_one: impl Fn(&Tensor) -> kiln_nn::Result<Tensor>,
    dims: [usize; 4],
    parameters: usize,
) {
    let mut rng = kiln_tensor::Generator::new(5);
    let x = Tensor::randn(dims, 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
    let fused = model.forward_t(&x, true).unwrap();
    let composed = one_by_one(&x).unwrap();
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap();
    assert_eq!(bits(&fused), bits(&composed));
    let weights = Tensor::randn(fused.dims(), 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
    let loss = |y: &Tensor| y.mul(&weights).unwrap().sum_all().unwrap();
    let (fused_grads, composed_grads) = (
        loss(&fused).backward().unwrap(),
        loss(&composed).backward().unwrap(),
    );
    let all = store.parameters();
    assert_eq!(all.len(), parameters);
    for (name, var) in all {
        let (got, want) = (fused_grads.get(&var), composed_grads.get(&var));
        assert_eq!(bits(got.unwrap()), bits(want.unwrap()), "{name}");
    }
}

/// A Sequential runs batch norm and the (leaky) ReLU after it as one op in training
/// (`batch_norm_train_act`), with the values and every parameter's gradient of the layers
/// run one by one, bit for bit: BatchNorm2d then ReLU, and BatchNorm1d then a leaky ReLU.
#[test]
fn a_sequential_fuses_a_batch_norm_with_the_activation_after_it() {
    let store = ParamStore::new(Device::Cpu, DType::F32, 3);
    let root = store.root();
    let conv = Conv2d::new(&root.sub(0), 3, 4, [3, 3], Conv2dConfig::default()).unwrap();
    let norm2d = BatchNorm2d::new(&root.sub(1), 4).unwrap();
    let norm1d = BatchNorm1d::new(&root.sub(4), 100).unwrap();
    let model = Sequential::new()
        .add(conv.clone())
        .add(norm2d.clone())
        .add(ReLU)
        .add(Flatten::new(1, -1))
        .add(norm1d.clone())
        .add(LeakyReLU::new(0.2));
    let one_by_one = |x: &Tensor| -> kiln_nn::Result<Tensor> {
        let y = ReLU.forward(&norm2d.forward_t(&conv.forward(x)?, true)?)?;
        let y = Flatten::new(1, -1).forward(&y)?;
        LeakyReLU::new(0.2).forward(&norm1d.forward_t(&y, true)?)
    };
    assert_same_training(&store, &model, one_by_one, [6, 3, 7, 7], 6);
}

#[test]
fn second_order_gradients_flow_through_layers() {
    // A WGAN-GP-style penalty, sum((∂ sum D(x) / ∂x)²), through a critic of Linear, LayerNorm,
    // Tanh and Linear: its gradient with respect to x (a second derivative of D) against
    // finite differences of the penalty.
    let store = store();
    let root = store.root();
    let critic = Sequential::new()
        .add(Linear::new(&root.sub(0), 3, 4).unwrap())
        .add(LayerNorm::new(&root.sub(1), &[4]).unwrap())
        .add(Tanh)
        .add(Linear::new(&root.sub(3), 4, 1).unwrap());
    let penalty = |t: &[Tensor]| -> kiln_tensor::Result<Tensor> {
        // The outer check's leaf when it is tracking, else a new leaf to differentiate by.
        let x = if t[0].is_tracked() {
            t[0].clone()
        } else {
            t[0].track()?
        };
        let score = critic
            .forward_t(&x, true)
            .map_err(to_tensor_error)?
            .sum_all()?;
        let grads = score.backward_with_graph()?;
        let gradient = grads.get(&x).expect("x is under the score").clone(); // [2, 3]
        gradient.square()?.sum_all()
    };
    GradCheck::default()
        .check(penalty, &[random(&[2, 3], 17)])
        .unwrap();
}
