//! The `kiln` command line: training the GANs, VAEs, the DDPM and the PixelCNN (`kiln
//! train`), sampling from their checkpoints (`kiln sample`), scoring them (`kiln eval`), a
//! VAE's reconstructions and latent
//! space (`kiln reconstruct`, `kiln interpolate`, `kiln manifold`), what kiln runs on (`kiln
//! info`) and a look at the datasets (`kiln data info`, `kiln data show`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod distributed;

use anyhow::{anyhow, bail};
use clap::builder::PossibleValuesParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kiln_data::{Dataset, DatasetKind, Grid, Split};
use kiln_tensor::Device;
use kiln_train::classifier::ClassifierOptions;
use kiln_train::evaluate::EvalOptions;
use kiln_train::run::{CheckpointEvery, Finish, TrainOptions};
use kiln_train::sample::SampleOptions;
use kiln_train::{Family, Importance, Overrides, Registry, SamplerChoice};

/// A block larger than the memory available is one line and exit status 1, not an abort or
/// the OOM killer (see `MemoryGuard`).
#[global_allocator]
static ALLOCATOR: kiln_tensor::cpu::MemoryGuard = kiln_tensor::cpu::MemoryGuard;

/// The model families `kiln` knows: adding one is a line here (and its crate's `Family`).
static FAMILIES: [&dyn Family; 4] = [
    &kiln_gan::FAMILY,
    &kiln_vae::FAMILY,
    &kiln_diffusion::FAMILY,
    &kiln_autoregressive::FAMILY,
];
const REGISTRY: Registry = Registry::new(&FAMILIES);
/// `kiln train`'s one model outside the registry.
const CLASSIFIER: &str = "classifier";

/// kiln: a deep-learning engine written from scratch in Rust, and the generative models on it.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GAN, VAE, the DDPM or the PixelCNN on MNIST (or Fashion-MNIST), leaving a run
    /// folder with config.json, metrics.jsonl, sample grids per epoch, a loss plot,
    /// checkpoints and eval.json; or retrain kiln-eval's classifier (`kiln train classifier`).
    Train(TrainArgs),
    /// Draw images from a trained model's checkpoint (a VAE: the decoder's mean at latents
    /// from the prior; the DDPM: --sampler ddim (default) or ddpm; the PixelCNN: pixel by
    /// pixel).
    Sample(SampleArgs),
    /// Score generated images (a checkpoint's, or a file's) against the real test set:
    /// Fréchet distance in kiln's classifier's features, classifier score, class coverage,
    /// precision and recall; for a VAE also its test negative ELBO, reconstruction
    /// MSE/PSNR/SSIM and, with --iw-samples, an importance-weighted log-likelihood; for the
    /// PixelCNN its exact test negative log-likelihood.
    Eval(EvalArgs),
    /// Write a PNG of a VAE's reconstructions: each row of test images above the row of
    /// their reconstructions.
    Reconstruct {
        #[command(flatten)]
        source: LatentArgs,
        /// How many test images (from the first).
        #[arg(long, default_value_t = 32)]
        n: usize,
    },
    /// Write a PNG of walks through a VAE's latent space: rows of images decoded along the
    /// straight line between two test images' latents (by default 8 rows, from the first
    /// test 0 to the first 1, the first 1 to the first 2, ...).
    Interpolate {
        #[command(flatten)]
        source: LatentArgs,
        /// The test image (index) to start from; with --to, one walk.
        #[arg(long, requires = "to")]
        from: Option<usize>,
        /// The test image (index) to end at.
        #[arg(long, requires = "from")]
        to: Option<usize>,
        /// Images per walk, both ends included.
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// Write a PNG of a 2-D-latent VAE's decoder over the latent plane (Kingma & Welling's
    /// manifold): a grid of latents spaced by prior probability.
    Manifold {
        #[command(flatten)]
        source: LatentArgs,
        /// Images per side of the grid.
        #[arg(long, default_value_t = 20)]
        size: usize,
    },
    /// Print the version, the platform, the CPU features detected at run time and the devices.
    Info,
    /// Look at a dataset: its counts, or a PNG grid of its images.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Print both splits' image counts and label histograms.
    Info(DataSource),
    /// Write a PNG grid of a split's first images.
    Show {
        #[command(flatten)]
        source: DataSource,
        /// Which split.
        #[arg(long, value_enum, default_value_t = SplitArg::Train)]
        split: SplitArg,
        /// How many images (from the first).
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Images per row.
        #[arg(long, default_value_t = 8)]
        columns: usize,
        /// The PNG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// What to train: a GAN (the MLP GAN, DCGAN, the conditional GAN, WGAN-GP), a VAE (the
    /// MLP VAE, the convolutional VAE), the DDPM, the PixelCNN or kiln-eval's classifier
    /// (written to data/classifiers/ unless --out).
    #[arg(value_parser = model_names())]
    model: String,
    #[command(flatten)]
    source: DataSource,
    /// Where to train: auto (CUDA if there, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// How f32 matrix products run on CUDA: fp32 (full f32, the default), tf32 or bf16
    /// (tensor cores with inputs rounded to TF32 or bf16, f32 accumulation). The CPU always
    /// computes in f32.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    precision: kiln_tensor::MatmulPrecision,
    /// Epochs to train (default: the model's, listed below).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Steps (batches) to train, instead of whole epochs.
    #[arg(long)]
    steps: Option<u64>,
    /// Images per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seeds the weights, the latents and the data order.
    #[arg(long)]
    seed: Option<u64>,
    /// The run folder (default runs/MODEL, or runs/MODEL-2, ... if taken).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run of this checkpoint (its folder's checkpoints/latest.safetensors) to
    /// --epochs/--steps in total, exactly as if it had not stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar: a plain log line every 10 seconds instead.
    #[arg(long)]
    quiet: bool,
    /// Write a metrics.jsonl line every this many steps (and at each epoch's end).
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Samples kiln-eval scores at the end of the run, into eval.json (0: no evaluation;
    /// default: the model's number, scaled down for a run shorter than the model's default
    /// length; the run says how many before it starts).
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Also score every this many epochs (into eval/step_NNNNNNN.json).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Write a checkpoint every N steps (500), or once this long has passed (30s, 10m, 2h),
    /// besides each epoch's end, Ctrl-C and the last step; 0: only those. What a kill can lose
    /// at most. The checkpoint it replaces is kept as checkpoints/previous.safetensors.
    #[arg(long, default_value = "10m")]
    checkpoint_every: CheckpointEvery,
    /// Train data-parallel over the processes of an MPI job: `mpirun -np N kiln train ..`
    /// (on by default under mpirun or srun with more than one rank). Each rank takes its
    /// share of every batch; rank 0 writes the run folder. Needs a kiln built with
    /// `--features distributed`.
    #[arg(long)]
    distributed: bool,
    /// Data-parallel runs: batch norm with the statistics of the whole batch (every rank's
    /// share), not of each rank's own (PyTorch's SyncBatchNorm).
    #[arg(long)]
    sync_batch_norm: bool,
    /// DDPM: the U-Net's channels at 28, 14 and 7 pixels, e.g. 16,32,64. PixelCNN: its
    /// hidden channels, e.g. 32. conv-vae: the channels after its two convolutions, e.g. 32,64.
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// GANs and VAEs: the size of the latent z (2 gives a VAE's `kiln manifold` a plane).
    #[arg(long)]
    latent_dim: Option<usize>,
    /// VAEs: p(x|z), Bernoulli (binary cross-entropy) or Gaussian with a learned σ.
    /// PixelCNN: each pixel Bernoulli on binarized images or categorical over the 256 grey
    /// levels.
    #[arg(long, value_parser = ["bernoulli", "gaussian", "categorical"])]
    likelihood: Option<String>,
    /// VAEs: β of the β-VAE objective, reconstruction + β·KL (1: the ELBO).
    #[arg(long)]
    beta: Option<f64>,
    /// VAEs: steps over which the KL weight rises linearly to β (0: none).
    #[arg(long)]
    kl_warmup_steps: Option<u64>,
}

/// The DDPM's samplers, for `--sampler`.
#[derive(Clone, Copy, ValueEnum)]
enum SamplerArg {
    /// Ho et al.'s ancestral sampler, all T steps.
    Ddpm,
    /// DDIM over --steps steps (default 50), deterministic at --eta 0 (the default).
    Ddim,
}

/// The DDPM's sampler options, shared by `kiln sample` and `kiln eval`.
#[derive(Args)]
struct SamplerArgs {
    /// DDPM: the sampler, ddim (default) or ddpm (ancestral, 1000 steps).
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// DDPM with DDIM: network evaluations per sample (default 50; 1 to T).
    #[arg(long)]
    steps: Option<usize>,
    /// DDPM with DDIM: η, the noise added at each step (default 0: deterministic).
    #[arg(long)]
    eta: Option<f64>,
    /// No progress bar while sampling.
    #[arg(long)]
    quiet: bool,
}

impl SamplerArgs {
    fn choice(&self) -> SamplerChoice {
        SamplerChoice {
            ancestral: self.sampler.map(|s| matches!(s, SamplerArg::Ddpm)),
            steps: self.steps,
            eta: self.eta,
        }
    }
}

/// The checkpoint and data of `kiln reconstruct`, `interpolate` and `manifold`.
#[derive(Args)]
struct LatentArgs {
    /// A VAE checkpoint written by `kiln train vae|conv-vae`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The test split to take images from (default: what the checkpoint trained on).
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// The directory holding the dataset's IDX files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct SampleArgs {
    /// A checkpoint written by `kiln train` (e.g. runs/gan/checkpoints/latest.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// How many images (default 64, or as many as --latents holds).
    #[arg(long)]
    n: Option<usize>,
    /// The digit to draw (conditional GAN only; default: 0-9 in turn).
    #[arg(long)]
    digit: Option<u32>,
    /// A safetensors file holding the latents, a [N, latent] tensor (named `latents`, or the
    /// file's only tensor), so samples can be reproduced across tools.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Seeds the latents when --latents is not given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write: FILE.png (a grid), FILE.idx (u8 images [N, 28, 28]) or
    /// FILE.safetensors (images [N, 1, 28, 28] in [-1, 1], latents and labels).
    #[arg(long)]
    out: PathBuf,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    sampler: SamplerArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by `kiln train` to draw the samples from.
    #[arg(long, conflicts_with = "samples", required_unless_present = "samples")]
    checkpoint: Option<PathBuf>,
    /// A file of images to score instead: IDX of u8 [N, 28, 28] (raw or .gz), or
    /// safetensors with `images` [N, 1, 28, 28] in [-1, 1] (what `kiln sample` writes) or u8.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// How many samples (default: all of a file; from a checkpoint, the model's own number,
    /// fewer for the models whose samples take many network passes; the report says it).
    #[arg(long)]
    n: Option<usize>,
    /// The real data to compare with (default: what the checkpoint trained on, else mnist).
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// The directory holding the dataset's IDX files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The classifier whose features are compared (default: data/classifiers/DATASET.safetensors).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Where to write the scores as JSON (default: the run folder's eval.json for a run's
    /// checkpoint, else beside the input as NAME.eval.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seeds the latents drawn from a checkpoint.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// VAEs: also estimate the test log-likelihood by importance weighting with this many
    /// samples per image (1000 is the literature's k; it costs k decoder passes per image).
    #[arg(long, default_value_t = 0)]
    iw_samples: usize,
    /// VAEs: the test images (from the first) the importance-weighted estimate averages over
    /// (default: all).
    #[arg(long, requires = "iw_samples")]
    iw_images: Option<usize>,
    #[command(flatten)]
    sampler: SamplerArgs,
}

/// `fp32`, `tf32` or `bf16`.
fn parse_precision(text: &str) -> Result<kiln_tensor::MatmulPrecision, String> {
    text.parse()
        .map_err(|_| format!("--precision {text}: expected fp32, tf32 or bf16"))
}

/// `auto` (CUDA when kiln has it and a GPU is there, else the CPU), `cpu`, `cuda`, `cuda:N`.
fn parse_device(text: &str) -> anyhow::Result<Device> {
    match text {
        "auto" => Ok(auto_device()),
        other => other
            .parse::<Device>()
            .map_err(|_| anyhow!("--device {other}: expected auto, cpu, cuda or cuda:N")),
    }
}

/// The device `--device auto` picks: `cuda:0` when the CUDA driver sees a GPU, else the CPU.
fn auto_device() -> Device {
    match kiln_tensor::cuda::availability() {
        Ok(()) => Device::Cuda(0),
        Err(_) => Device::Cpu,
    }
}

#[derive(Args)]
struct DataSource {
    /// Which dataset (default mnist; resuming a run, the one it trained on).
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// The directory holding the dataset's IDX files (or a `mnist`/`fashion-mnist` folder of
    /// them). Default: $KILN_DATA_DIR, else data/mnist for MNIST and
    /// /usr/share/datasets/fashion-mnist or data/fashion-mnist for Fashion-MNIST.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataSource {
    /// `--dataset`, MNIST when not given.
    fn kind(&self) -> DatasetKind {
        self.dataset.map_or(DatasetKind::Mnist, DatasetKind::from)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetArg {
    Mnist,
    FashionMnist,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

impl From<DatasetArg> for DatasetKind {
    fn from(arg: DatasetArg) -> Self {
        match arg {
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
        }
    }
}

impl From<SplitArg> for Split {
    fn from(arg: SplitArg) -> Self {
        match arg {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

fn main() -> ExitCode {
    kiln_tensor::cpu::tune_allocator();
    // Tests only: the memory the guard takes as available, in bytes.
    let pretend = std::env::var("KILN_FAULT_INJECTION_MEMORY_AVAILABLE").ok();
    if let Some(bytes) = pretend.and_then(|bytes| bytes.parse().ok()) {
        kiln_tensor::cpu::MemoryGuard::pretend_available(bytes);
    }
    let command =
        Cli::command().mut_subcommand("train", |train| train.after_help(defaults_table()));
    let cli = match command
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        // --help and --version are not errors: let clap print them to stdout and exit 0.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let message = match err.kind() {
                ErrorKind::MissingSubcommand
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    "error: no command given".to_string()
                }
                // clap's first paragraph is the error itself (for a missing argument, a line
                // naming it follows); the rest is usage and tips.
                _ => err
                    .to_string()
                    .lines()
                    .take_while(|line| !line.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            eprintln!("{message} (see 'kiln --help')");
            return ExitCode::from(2);
        }
    };
    // Tensor work runs on a rayon worker, so parallel kernels split in place rather than park
    // this thread for each one (kiln_tensor::cpu::on_worker).
    let report = match kiln_tensor::cpu::on_worker(move || run(cli.command)) {
        Ok(Finish::Completed(report)) => report,
        Ok(Finish::Interrupted(message)) => {
            eprintln!("{message}");
            // 128 + SIGINT, what shells report for a program stopped by Ctrl-C.
            return ExitCode::from(130);
        }
        Err(error) => {
            // kiln's errors name their cause in their own line; the chain would repeat it.
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::io::stdout().lock().write_all(report.as_bytes()) {
        eprintln!("error: cannot write to stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs `command`: what to print on stdout as `Finish::Completed`, or a training run stopped
/// by Ctrl-C.
fn run(command: Command) -> anyhow::Result<Finish> {
    let report = match command {
        Command::Info => Ok(kiln_tensor::info::report()),
        Command::Data(command) => data_command(command),
        Command::Sample(args) => sample_command(args),
        Command::Eval(args) => eval_command(args),
        Command::Reconstruct { source, n } => {
            latent_command(source, "reconstruct", |vae, test, out| {
                kiln_vae::grids::reconstruct(vae, test, out, n)
            })
        }
        Command::Interpolate {
            source,
            from,
            to,
            steps,
        } => latent_command(source, "interpolate", |vae, test, out| {
            kiln_vae::grids::interpolate(vae, test, out, from.zip(to), steps)
        }),
        Command::Manifold { source, size } => latent_command(source, "manifold", |vae, _, out| {
            kiln_vae::grids::manifold(vae, out, size)
        }),
        Command::Train(args) => {
            return train_command(args).map(|finish| match finish {
                Finish::Completed(summary) => Finish::Completed(summary + "\n"),
                interrupted => interrupted,
            })
        }
    };
    report.map(Finish::Completed)
}

/// The names `kiln train` takes: every registered model, and the classifier.
fn model_names() -> PossibleValuesParser {
    PossibleValuesParser::new(REGISTRY.models().chain([CLASSIFIER]))
}

/// `kiln train --help`'s table of each model's defaults, read from its configuration.
fn defaults_table() -> String {
    const SHOWN: [&str; 8] = [
        "batch_size",
        "lr",
        "seed",
        "latent_dim",
        "likelihood",
        "beta",
        "kl_warmup_steps",
        "channels",
    ];
    let mut table = String::from("Defaults, from each model's configuration:\n");
    for model in REGISTRY.models() {
        let Ok(config) = REGISTRY.configure(model, &Overrides::new()) else {
            continue;
        };
        let epochs = REGISTRY
            .family(model)
            .map_or(0, |f| f.default_epochs(model));
        let mut parts = vec![format!("--epochs {epochs}")];
        for key in SHOWN {
            let value = config.get(key).or(match key {
                "channels" => config.get("hidden_channels"),
                _ => None,
            });
            if let Some(value) = value {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                parts.push(format!("{} {text}", kiln_train::config::flag(key)));
            }
        }
        table += &format!("  {model:<9} {}\n", parts.join(", "));
    }
    table
}

fn train_command(args: TrainArgs) -> anyhow::Result<Finish> {
    kiln_tensor::set_matmul_precision(args.precision);
    if args.log_every == 0 {
        bail!("--log-every must be at least 1");
    }
    if args.epochs == Some(0) || args.steps == Some(0) {
        bail!("--epochs and --steps must be at least 1");
    }
    let mut overrides = Overrides::new();
    overrides
        .set("batch_size", args.batch_size)
        .set("lr", args.lr)
        .set("seed", args.seed)
        .set("latent_dim", args.latent_dim)
        .set("likelihood", args.likelihood.clone())
        .set("beta", args.beta)
        .set("kl_warmup_steps", args.kl_warmup_steps)
        .set("channels", args.channels.clone());
    let device = parse_device(&args.device)?;
    if args.model == CLASSIFIER {
        return classifier_command(args, overrides, device).map(Finish::Completed);
    }
    // Under a launcher, `cuda` means each rank's own GPU; elsewhere it stays cuda:0.
    let device = distributed::rank_device(&args.device, device);
    let parallel = distributed::join(args.distributed, args.sync_batch_norm, device)?;
    let options = TrainOptions {
        model: args.model,
        overrides,
        dataset: args.source.dataset.map(DatasetKind::from),
        data_dir: args.source.data_dir,
        device,
        epochs: args.epochs,
        steps: args.steps,
        out: args.out,
        resume: args.resume,
        quiet: args.quiet,
        log_every: args.log_every,
        eval_samples: args.eval_samples,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        parallel,
    };
    Ok(kiln_train::run::train(&REGISTRY, options)?)
}

/// `kiln train classifier`: kiln-eval's classifier, with its default settings or --epochs,
/// --batch-size, --lr and --seed.
fn classifier_command(
    args: TrainArgs,
    overrides: Overrides,
    device: Device,
) -> anyhow::Result<String> {
    if device != Device::Cpu {
        bail!("the classifier trains on the CPU only: use --device cpu");
    }
    if args.steps.is_some() || args.resume.is_some() {
        bail!("the classifier trains for whole --epochs and does not resume");
    }
    let classifier_settings = ["batch_size", "lr", "seed"];
    if let Some((key, _)) = overrides
        .iter()
        .find(|(key, _)| !classifier_settings.contains(key))
    {
        bail!(
            "{} is not a setting of the classifier",
            kiln_train::config::flag(key)
        );
    }
    Ok(kiln_train::classifier::train_classifier(
        ClassifierOptions {
            dataset: args.source.kind(),
            data_dir: args.source.data_dir,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            seed: args.seed,
            out: args.out,
            quiet: args.quiet,
        },
    )?)
}

/// Runs `kiln reconstruct`, `interpolate` or `manifold` (`command`) on the VAE of
/// `args.checkpoint` and the test split of `--dataset` (default: the one it trained on).
fn latent_command(
    args: LatentArgs,
    command: &str,
    run: impl FnOnce(&kiln_vae::VaeTrainer, &Dataset, &std::path::Path) -> kiln_train::Result<String>,
) -> anyhow::Result<String> {
    let device = parse_device(&args.device)?;
    kiln_train::run::check_device(device)?;
    if args.out.extension().is_none_or(|e| e != "png") {
        bail!(
            "--out {}: kiln {command} writes a PNG grid; name it FILE.png",
            args.out.display()
        );
    }
    let (trainer, checkpoint) = REGISTRY.load(&args.checkpoint, device)?;
    let Some(vae) = trainer.as_any().downcast_ref::<kiln_vae::VaeTrainer>() else {
        bail!(
            "kiln {command} needs a VAE checkpoint (vae or conv-vae); {} holds a {} model",
            args.checkpoint.display(),
            trainer.name()
        );
    };
    let context = args.checkpoint.display().to_string();
    let trained_on = kiln_train::run::trained_on(&checkpoint, &context)?;
    let kind = args
        .dataset
        .map(DatasetKind::from)
        .or(trained_on)
        .unwrap_or(DatasetKind::Mnist);
    let test = Dataset::load(kind, Split::Test, args.data_dir.as_deref())?;
    Ok(run(vae, &test, &args.out)?)
}

fn eval_command(args: EvalArgs) -> anyhow::Result<String> {
    let options = EvalOptions {
        checkpoint: args.checkpoint,
        samples: args.samples,
        n: args.n,
        dataset: args.dataset.map(DatasetKind::from),
        data_dir: args.data_dir,
        classifier: args.classifier,
        json: args.json,
        seed: args.seed,
        device: parse_device(&args.device)?,
        importance: Importance {
            samples: args.iw_samples,
            images: args.iw_images,
        },
        sampler: args.sampler.choice(),
        quiet: args.sampler.quiet,
    };
    Ok(kiln_train::evaluate::eval(&REGISTRY, options)?)
}

fn sample_command(args: SampleArgs) -> anyhow::Result<String> {
    let options = SampleOptions {
        checkpoint: args.checkpoint,
        n: args.n,
        digit: args.digit,
        latents: args.latents,
        seed: args.seed,
        out: args.out,
        device: parse_device(&args.device)?,
        sampler: args.sampler.choice(),
        quiet: args.sampler.quiet,
    };
    Ok(kiln_train::sample::sample(&REGISTRY, options)?)
}

/// Runs a `kiln data` command; returns what to print, or the one-line error.
fn data_command(command: DataCommand) -> anyhow::Result<String> {
    match command {
        DataCommand::Info(source) => {
            let kind = source.kind();
            let mut report = format!("{:<10}{kind}\n", "dataset:");
            for split in [Split::Train, Split::Test] {
                let dataset = Dataset::load(kind, split, source.data_dir.as_deref())?;
                report += &format!(
                    "{:<10}{} images of 28x28 from {}\n",
                    format!("{split}:"),
                    dataset.len(),
                    dataset.dir().display()
                );
                let histogram: Vec<String> = kind
                    .class_names()
                    .iter()
                    .zip(dataset.label_counts())
                    .map(|(name, count)| format!("{name} {count}"))
                    .collect();
                report += &format!("{:<10}{}\n", "  labels:", histogram.join(", "));
            }
            Ok(report)
        }
        DataCommand::Show {
            source,
            split,
            n,
            columns,
            out,
        } => {
            let (kind, split) = (source.kind(), Split::from(split));
            if columns == 0 {
                bail!("--columns must be at least 1");
            }
            let dataset = Dataset::load(kind, split, source.data_dir.as_deref())?;
            if n == 0 || n > dataset.len() {
                bail!(
                    "--n {n}: the {kind} {split} set has {} images; ask for 1 to {}",
                    dataset.len(),
                    dataset.len()
                );
            }
            // [n, 1, 28, 28] u8, drawn as they are: 0 black, 255 white.
            let images = dataset.images_tensor(0, n, Device::Cpu)?;
            let grid = Grid {
                columns,
                ..Grid::default()
            };
            grid.save(&images, &out)?;
            let columns = columns.min(n);
            Ok(format!(
                "wrote {n} {kind} {split} images ({} x {columns}) from {} to {}\n",
                n.div_ceil(columns),
                dataset.dir().display(),
                out.display()
            ))
        }
    }
}
