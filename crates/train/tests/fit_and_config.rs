//! kiln-train's loop and configuration path, on a stand-in model whose step only counts: the
//! loop's order of calls (steps, epoch ends, where a resumed run starts), its NaN stop and an
//! observer's stop, and the override rules (unknown settings and wrong types refused by flag,
//! resumed settings checked against the run's).

use std::any::Any;
use std::path::Path;

use kiln_data::{Batch, Dataset, DatasetKind, Scale, Split};
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{DType, Device, Tensor};
use kiln_train::config::{from_config, to_config};
use kiln_train::{
    fit, loader_for, train_steps, Batching, Ending, Family, Flow, Observer, Overrides,
    PendingMetrics, PlotSpec, Registry, StepMetrics, TrainError, Trainer,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CountConfig {
    batch_size: usize,
    lr: f64,
    seed: u64,
    /// The step whose loss is NaN, if any.
    nan_at: Option<u64>,
}

/// A model that takes no gradient steps: its loss at step s is 1/s (NaN at `nan_at`), and it
/// records the first label of every batch it sees.
struct Counter {
    config: CountConfig,
    step: u64,
    seen: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct Loss {
    loss: f64,
}

impl StepMetrics for Loss {
    fn non_finite(&self) -> Option<(&'static str, f64)> {
        (!self.loss.is_finite()).then_some(("loss", self.loss))
    }
    fn summary(&self) -> String {
        format!("loss {:.3}", self.loss)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Ready(f64);

impl PendingMetrics for Ready {
    fn read(&self) -> kiln_train::Result<Box<dyn StepMetrics>> {
        Ok(Box::new(Loss { loss: self.0 }))
    }
}

impl Trainer for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn config_json(&self) -> kiln_train::Result<Value> {
        to_config(&self.config)
    }
    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config.batch_size,
            drop_last: true,
            scale: Scale::ZeroToOne,
            seed: self.config.seed,
        }
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn steps_done(&self) -> u64 {
        self.step
    }
    fn step(&mut self, batch: &Batch) -> kiln_train::Result<Box<dyn PendingMetrics>> {
        self.step += 1;
        self.seen.push(batch.labels.to_vec::<u32>()?[0]);
        let loss = match self.config.nan_at {
            Some(at) if at == self.step => f64::NAN,
            _ => 1.0 / self.step as f64,
        };
        Ok(Box::new(Ready(loss)))
    }
    fn checkpoint(&self) -> kiln_train::Result<Checkpoint> {
        Ok(Checkpoint::new())
    }
    fn grid_images(&self, n: usize) -> kiln_train::Result<Tensor> {
        Ok(Tensor::zeros([n, 1, 28, 28], DType::F32, Device::Cpu)?)
    }
    fn plot(&self) -> PlotSpec {
        PlotSpec {
            title: "counter".into(),
            panels: Vec::new(),
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Counters;

impl Family for Counters {
    fn models(&self) -> &'static [&'static str] {
        &["counter"]
    }
    fn default_epochs(&self, _: &str) -> u64 {
        1
    }
    fn default_config(&self, _: &str) -> kiln_train::Result<Value> {
        to_config(&CountConfig {
            batch_size: 15_000,
            lr: 0.5,
            seed: 0,
            nan_at: None,
        })
    }
    fn setting(&self, _: &str, key: &str, value: &Value) -> kiln_train::Result<(String, Value)> {
        // `--poison N` is how the command line would spell `nan_at`.
        Ok(match key {
            "poison" => ("nan_at".to_string(), value.clone()),
            _ => (key.to_string(), value.clone()),
        })
    }
    fn build(&self, config: Value, _: Device) -> kiln_train::Result<Box<dyn Trainer>> {
        Ok(Box::new(Counter {
            config: from_config("counter", config)?,
            step: 0,
            seen: Vec::new(),
        }))
    }
    fn restore(&self, _: &Checkpoint, _: Device, _: &str) -> kiln_train::Result<Box<dyn Trainer>> {
        unreachable!("no checkpoints here")
    }
}

static FAMILIES: [&dyn Family; 1] = [&Counters];
const REGISTRY: Registry = Registry::new(&FAMILIES);

fn mnist() -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    Dataset::load(DatasetKind::Mnist, Split::Train, Some(&dir)).unwrap()
}

fn counter(overrides: &Overrides) -> Box<dyn Trainer> {
    REGISTRY
        .new_trainer("counter", overrides, Device::Cpu)
        .unwrap()
}

fn seen(trainer: &dyn Trainer) -> Vec<u32> {
    trainer
        .as_any()
        .downcast_ref::<Counter>()
        .unwrap()
        .seen
        .clone()
}

#[derive(Default)]
struct Record {
    steps: Vec<(u64, Option<f64>)>,
    epoch_ends: Vec<u64>,
    read_every: u64,
    stop_at: Option<u64>,
}

impl Observer for Record {
    fn wants_metrics(&mut self, step: u64) -> bool {
        self.read_every == 0 || step.is_multiple_of(self.read_every)
    }
    fn after_step(
        &mut self,
        _: &dyn Trainer,
        step: u64,
        metrics: Option<&dyn StepMetrics>,
    ) -> kiln_train::Result<Flow> {
        let loss = metrics.map(|m| m.as_any().downcast_ref::<Loss>().unwrap().loss);
        self.steps.push((step, loss));
        Ok(match self.stop_at {
            Some(at) if at == step => Flow::Stop,
            _ => Flow::Continue,
        })
    }
    fn after_epoch(&mut self, _: &dyn Trainer, step: u64) -> kiln_train::Result<Flow> {
        self.epoch_ends.push(step);
        Ok(Flow::Continue)
    }
}

#[test]
fn the_loop_visits_each_step_and_each_epoch_end_once() {
    let data = mnist();
    let mut trainer = counter(&Overrides::new());
    let loader = loader_for(
        trainer.as_ref(),
        &data,
        Device::Cpu,
        kiln_data::Shard::WHOLE,
    )
    .unwrap();
    assert_eq!(loader.batches_per_epoch(), 4); // 60,000 / 15,000
    let mut record = Record::default();
    let ending = fit(trainer.as_mut(), &loader, 10, &mut record).unwrap();
    assert_eq!(ending, Ending::Completed);
    let steps: Vec<u64> = record.steps.iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    // Two whole epochs, then the run's end mid-epoch.
    assert_eq!(record.epoch_ends, [4, 8, 10]);
    assert_eq!(record.steps[2].1, Some(1.0 / 3.0));
}

#[test]
fn a_resumed_trainer_continues_with_the_batches_it_would_have_had() {
    let data = mnist();
    let mut straight = counter(&Overrides::new());
    train_steps(straight.as_mut(), &data, 7, |_, _| {}).unwrap();
    let mut split = counter(&Overrides::new());
    let mut steps = Vec::new();
    train_steps(split.as_mut(), &data, 2, |s, _| steps.push(s)).unwrap();
    train_steps(split.as_mut(), &data, 5, |s, _| steps.push(s)).unwrap();
    assert_eq!(steps, (1..=7).collect::<Vec<_>>());
    assert_eq!(seen(split.as_ref()), seen(straight.as_ref()));
    // Epochs are shuffled afresh: the second epoch does not repeat the first.
    assert_ne!(seen(straight.as_ref())[..3], seen(straight.as_ref())[4..7]);
}

#[test]
fn a_nan_loss_ends_the_loop_and_an_observer_can_stop_it() {
    let data = mnist();
    let mut poisoned = Overrides::new();
    poisoned.set("poison", Some(3u64));
    let mut trainer = counter(&poisoned);
    match train_steps(trainer.as_mut(), &data, 10, |_, _| {}) {
        Err(TrainError::Diverged { step, name, value }) => {
            assert_eq!((step, name), (3, "loss"));
            assert!(value.is_nan());
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    // Metrics that are not read are not checked: the NaN at step 3 passes unseen.
    let mut trainer = counter(&poisoned);
    let loader = loader_for(
        trainer.as_ref(),
        &data,
        Device::Cpu,
        kiln_data::Shard::WHOLE,
    )
    .unwrap();
    let mut record = Record {
        read_every: 2,
        stop_at: Some(6),
        ..Record::default()
    };
    let ending = fit(trainer.as_mut(), &loader, 10, &mut record).unwrap();
    assert_eq!(ending, Ending::Stopped { step: 6 });
    assert_eq!(record.steps[2], (3, None));
    assert_eq!(record.steps[3], (4, Some(0.25)));
    assert_eq!(trainer.steps_done(), 6);
}

#[test]
fn overrides_merge_into_the_config_and_unknown_or_mistyped_ones_are_refused() {
    let mut overrides = Overrides::new();
    overrides
        .set("lr", Some(0.25))
        .set("batch_size", Some(100usize))
        .set("seed", None::<u64>);
    let config = REGISTRY.configure("counter", &overrides).unwrap();
    assert_eq!(config["lr"], 0.25);
    assert_eq!(config["batch_size"], 100);
    assert_eq!(config["seed"], 0);

    let mut unknown = Overrides::new();
    unknown.set("latent_dim", Some(2usize));
    let error = REGISTRY
        .new_trainer("counter", &unknown, Device::Cpu)
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "--latent-dim is not a setting of counter"
    );

    let mut mistyped = Overrides::new();
    mistyped.set("lr", Some("fast"));
    let error = REGISTRY
        .new_trainer("counter", &mistyped, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        error.to_string().starts_with("counter: invalid type"),
        "{error}"
    );

    let error = REGISTRY.configure("gan", &Overrides::new()).err().unwrap();
    assert_eq!(
        error.to_string(),
        "kiln knows no model `gan` (it knows counter)"
    );
}

#[test]
fn a_resumed_run_takes_settings_equal_to_its_own_and_refuses_others() {
    let mut overrides = Overrides::new();
    overrides
        .set("lr", Some(0.5))
        .set("batch_size", Some(15_000u64));
    let trainer = counter(&Overrides::new());
    REGISTRY
        .check_resume(trainer.as_ref(), &overrides, "run.safetensors")
        .unwrap();
    let mut other = Overrides::new();
    other.set("poison", Some(4u64));
    let error = REGISTRY
        .check_resume(trainer.as_ref(), &other, "run.safetensors")
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "--poison 4: settings come from the checkpoint when resuming, and run.safetensors has nan_at null; leave --poison out"
    );
}
