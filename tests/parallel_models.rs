//! Every model family trains data-parallel (kiln-nn's `parallel`, ranks as threads of this
//! process, through the `Trainer` trait as `kiln train` drives it): two ranks taking half of
//! each batch track one process taking the whole batch, and stay bit-identical to each other.
//! crates/gan/tests/parallel.rs checks the GANs at length; tests/distributed.rs runs MPI.

use std::path::Path;

use kiln_data::{Dataset, DatasetKind, Shard, Split};
use kiln_nn::parallel::{thread_group, Collective, Communicator, DataParallel};
use kiln_tensor::Device;
use kiln_train::{
    fit, loader_for, Family, Flow, Observer, Overrides, Registry, StepMetrics, Trainer,
};

static FAMILIES: [&dyn Family; 4] = [
    &kiln_gan::FAMILY,
    &kiln_vae::FAMILY,
    &kiln_diffusion::FAMILY,
    &kiln_autoregressive::FAMILY,
];

/// Each step's metrics as JSON numbers, in field order.
struct Collect(Vec<Vec<f64>>);

impl Observer for Collect {
    fn after_step(
        &mut self,
        _: &dyn Trainer,
        _: u64,
        metrics: Option<&dyn StepMetrics>,
    ) -> kiln_train::Result<Flow> {
        let value = serde_json::to_value(metrics.expect("read every step")).unwrap();
        let numbers = value
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_f64())
            .collect();
        self.0.push(numbers);
        Ok(Flow::Continue)
    }
}

/// `steps` steps of `model` with `settings` on `world` ranks (1: one plain process): each
/// rank's metrics and checkpoint tensors' bits.
fn run(
    model: &str,
    settings: &Overrides,
    data: &Dataset,
    world: usize,
    steps: u64,
) -> Vec<(Vec<Vec<f64>>, Vec<u64>)> {
    let registry = Registry::new(&FAMILIES);
    let ranks: Vec<Option<Box<dyn Collective + Send>>> = match world {
        1 => vec![None],
        n => thread_group(n).into_iter().map(Some).collect(),
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, collective)| {
                let registry = &registry;
                scope.spawn(move || {
                    let mut trainer = registry.new_trainer(model, settings, Device::Cpu).unwrap();
                    if let Some(collective) = collective {
                        let communicator = Communicator::spawn(move || Ok(collective)).unwrap();
                        trainer
                            .set_parallel(DataParallel::new(communicator, false))
                            .unwrap();
                    }
                    let shard = Shard { rank, world };
                    let loader = loader_for(trainer.as_ref(), data, Device::Cpu, shard).unwrap();
                    let mut collect = Collect(Vec::new());
                    fit(trainer.as_mut(), &loader, steps, &mut collect).unwrap();
                    let bits = trainer
                        .checkpoint()
                        .unwrap()
                        .tensors()
                        .iter()
                        .flat_map(|(_, t)| t.flatten_to_f64())
                        .map(f64::to_bits)
                        .collect();
                    (collect.0, bits)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

trait FlattenToF64 {
    fn flatten_to_f64(&self) -> Vec<f64>;
}

impl FlattenToF64 for kiln_tensor::Tensor {
    fn flatten_to_f64(&self) -> Vec<f64> {
        self.reshape([self.elem_count()])
            .and_then(|t| t.to_dtype(kiln_tensor::DType::F64))
            .and_then(|t| t.to_vec::<f64>())
            .unwrap()
    }
}

fn two_ranks_track_one_process(model: &str, settings: &[(&str, serde_json::Value)], steps: u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let data = Dataset::load(DatasetKind::Mnist, Split::Train, Some(&dir)).unwrap();
    let mut overrides = Overrides::new();
    for (key, value) in settings {
        overrides.set(key, Some(value.clone()));
    }
    let single = run(model, &overrides, &data, 1, steps).remove(0);
    let ranks = run(model, &overrides, &data, 2, steps);
    assert!(ranks[0] == ranks[1], "{model}: the two ranks differ");
    let moved = single
        .0
        .iter()
        .flatten()
        .zip(ranks[0].0.iter().flatten())
        .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
        .fold(0.0, f64::max);
    eprintln!("{model}: two ranks within {moved:.2e} of one process over {steps} steps");
    assert!(
        moved < 1e-4,
        "{model}: metrics moved {moved:.2e} from one process's"
    );
}

#[test]
fn the_vaes_train_data_parallel() {
    two_ranks_track_one_process("vae", &[("batch_size", 32.into())], 10);
    two_ranks_track_one_process("conv-vae", &[("batch_size", 16.into())], 5);
}

#[test]
fn the_ddpm_trains_data_parallel() {
    let settings = [
        ("batch_size", 8.into()),
        ("channels", serde_json::json!([8, 16, 16])),
    ];
    two_ranks_track_one_process("ddpm", &settings, 3);
}

#[test]
fn the_pixelcnn_trains_data_parallel() {
    let settings = [
        ("batch_size", 8.into()),
        ("channels", serde_json::json!([16])),
    ];
    two_ranks_track_one_process("pixelcnn", &settings, 3);
}
