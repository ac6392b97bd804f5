//! Data-parallel GAN training (kiln-nn's `parallel`) with ranks that are threads of this
//! process: N ranks, each taking its shard of every batch, track one process taking the whole
//! batch — the same losses to within the reordering of float sums, and replicas that stay
//! bit-identical. `tests/distributed.rs` runs the same over MPI with `mpirun`.

use std::path::Path;

use kiln_data::{Dataset, DatasetKind, Loader, LoaderOptions, Shard, Split};
use kiln_gan::{Architecture, GanConfig, GanTrainer, StepMetrics};
use kiln_nn::parallel::{thread_group, Communicator, DataParallel};
use kiln_tensor::Device;

fn mnist() -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    Dataset::load(DatasetKind::Mnist, Split::Train, Some(&dir)).expect("the committed MNIST")
}

/// `steps` steps of `config` by `world` ranks (1: one plain process), with `kiln train`'s
/// batches; each rank's metrics and final state bits.
fn run(
    config: &GanConfig,
    data: &Dataset,
    world: usize,
    sync_batch_norm: bool,
    steps: usize,
) -> Vec<(Vec<StepMetrics>, Vec<u32>)> {
    let ranks: Vec<Option<Box<dyn kiln_nn::parallel::Collective + Send>>> = match world {
        1 => vec![None],
        n => thread_group(n).into_iter().map(Some).collect(),
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, collective)| {
                scope.spawn(move || {
                    let mut trainer = GanTrainer::new(config.clone(), Device::Cpu).unwrap();
                    if let Some(collective) = collective {
                        let communicator = Communicator::spawn(move || Ok(collective)).unwrap();
                        trainer.set_parallel(DataParallel::new(communicator, sync_batch_norm));
                    }
                    let options = LoaderOptions {
                        batch_size: config.batch_size,
                        drop_last: true,
                        seed: config.seed,
                        shard: Shard { rank, world },
                        ..Default::default()
                    };
                    let loader = Loader::new(data, options).unwrap();
                    let mut metrics = Vec::new();
                    for batch in loader.epoch(0).take(steps) {
                        let batch = batch.unwrap();
                        assert_eq!(batch.global, config.batch_size);
                        let pending = trainer
                            .step_rows(&batch.images, &batch.labels, batch.global, batch.offset)
                            .unwrap();
                        metrics.push(pending.read().unwrap());
                    }
                    (metrics, state_bits(&trainer))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every parameter and buffer of both networks as raw bits.
fn state_bits(trainer: &GanTrainer) -> Vec<u32> {
    let stores = [trainer.generator().store(), trainer.discriminator().store()];
    stores
        .iter()
        .flat_map(|store| store.state_dict())
        .flat_map(|(_, t)| t.to_vec::<f32>().unwrap())
        .map(f32::to_bits)
        .collect()
}

/// The largest difference between two runs' losses, relative to 1 + |loss|.
fn largest_difference(a: &[StepMetrics], b: &[StepMetrics]) -> f64 {
    assert_eq!(a.len(), b.len());
    let pairs = a.iter().zip(b).flat_map(|(a, b)| {
        [
            (a.loss_d, b.loss_d),
            (a.loss_g.unwrap_or(0.0), b.loss_g.unwrap_or(0.0)),
            (a.d_real, b.d_real),
            (a.d_fake, b.d_fake),
        ]
    });
    pairs
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0.0, f64::max)
}

/// Checks `world` ranks against one process: the ranks agree bit for bit with each other
/// (metrics and state), and their losses stay within `early` of the one process's over the
/// first 5 steps and within `tolerance` over all (a GAN's dynamics amplify the reordering of
/// float sums as training goes on).
fn ranks_track_one_process(
    architecture: Architecture,
    batch_size: usize,
    world: usize,
    sync_batch_norm: bool,
    steps: usize,
    (early, tolerance): (f64, f64),
) {
    let data = mnist();
    let mut config = GanConfig::new(architecture);
    config.batch_size = batch_size;
    config.seed = 5;
    let single = run(&config, &data, 1, false, steps).remove(0);
    let ranks = run(&config, &data, world, sync_batch_norm, steps);
    for (rank, (metrics, state)) in ranks.iter().enumerate().skip(1) {
        assert!(
            metrics == &ranks[0].0,
            "{architecture}: rank {rank}'s metrics differ from rank 0's"
        );
        assert!(
            state == &ranks[0].1,
            "{architecture}: rank {rank}'s weights differ from rank 0's"
        );
    }
    let moved = largest_difference(&single.0, &ranks[0].0);
    let moved_early = largest_difference(&single.0[..5], &ranks[0].0[..5]);
    eprintln!(
        "{architecture}, {world} ranks: losses within {moved_early:.2e} of one process's over 5 steps, {moved:.2e} over {steps}"
    );
    assert!(
        moved_early <= early,
        "{architecture}, {world} ranks: losses moved {moved_early:.2e} from one process's in 5 steps"
    );
    assert!(
        moved <= tolerance,
        "{architecture}, {world} ranks: losses moved {moved:.2e} from one process's"
    );
}

#[test]
fn two_ranks_of_32_track_one_process_of_64_for_50_steps() {
    ranks_track_one_process(Architecture::Gan, 64, 2, false, 50, (1e-5, 1e-4));
}

#[test]
fn dcgan_with_synchronised_batch_norm_tracks_one_process() {
    // Per-rank batch norm (no --sync-batch-norm) is 3.9e-2 away within 5 steps.
    ranks_track_one_process(Architecture::Dcgan, 32, 2, true, 50, (1e-3, 2e-2));
}

#[test]
fn dcgan_with_per_rank_batch_norm_keeps_identical_replicas() {
    // Each rank normalises with its shard's statistics, so the losses differ from one
    // process's; the running statistics are rank 0's on every rank after each step.
    ranks_track_one_process(Architecture::Dcgan, 32, 2, false, 5, (5e-2, 5e-2));
}

#[test]
fn uneven_shards_are_weighted_by_their_rows() {
    // 64 images over 3 ranks: 21, 21 and 22.
    ranks_track_one_process(Architecture::Gan, 64, 3, false, 10, (1e-5, 1e-4));
}

#[test]
fn conditional_and_wasserstein_gans_draw_their_noise_for_the_whole_batch() {
    ranks_track_one_process(Architecture::Cgan, 32, 2, false, 10, (1e-5, 1e-4));
    ranks_track_one_process(Architecture::WganGp, 32, 2, false, 10, (1e-5, 1e-4));
}
