//! The `kiln` command line: training the GANs, VAEs, the DDPM and the PixelCNN (`kiln
//! train`), sampling from their checkpoints (`kiln sample`), scoring them (`kiln eval`), a
//! VAE's reconstructions and latent
//! space (`kiln reconstruct`, `kiln interpolate`, `kiln manifold`), what kiln runs on (`kiln
//! info`) and a look at the datasets (`kiln data info`, `kiln data show`).

mod eval;
mod latent;
mod models;
mod sample;
mod train;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_autoregressive::PixelLikelihood;
use kiln_data::{Dataset, DatasetKind, Grid, Split};
use kiln_gan::Architecture;
use kiln_tensor::Device;
use kiln_vae::{Likelihood, VaeArchitecture};

use crate::eval::EvalOptions;
use crate::latent::LatentOptions;
use crate::models::ModelKind;
use crate::sample::{SampleOptions, SamplerChoice};
use crate::train::{Finish, TrainOptions, VaeOptions};

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
    /// MLP VAE, the convolutional VAE), the DDPM, the PixelCNN or kiln-eval's classifier.
    #[arg(value_enum)]
    model: ModelArg,
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
    /// Epochs to train (default 20; 5 for dcgan; 10 for the VAEs; 2 for ddpm; 1 for pixelcnn).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Steps (batches) to train, instead of whole epochs.
    #[arg(long)]
    steps: Option<u64>,
    /// Images per batch (default 64; 128 for the VAEs).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate (default 2e-4; 1e-4 for WGAN-GP; 1e-3 for the VAEs and the
    /// PixelCNN).
    #[arg(long)]
    lr: Option<f64>,
    /// Seeds the weights, the latents and the data order (default 0).
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
    /// default 10000, 2000 for the DDPM, 1000 for the PixelCNN).
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Also score every this many epochs (into eval/step_NNNNNNN.json).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// DDPM: the U-Net's channels at 28, 14 and 7 pixels, e.g. 16,32,64 (the default).
    /// PixelCNN: its hidden channels, e.g. 32 (the default).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// VAEs: the size of the latent z (default 20; 2 gives `kiln manifold` a plane).
    #[arg(long)]
    latent_dim: Option<usize>,
    /// VAEs: p(x|z), Bernoulli (binary cross-entropy; default) or Gaussian with a learned σ.
    /// PixelCNN: each pixel Bernoulli on binarized images (default) or categorical over the
    /// 256 grey levels.
    #[arg(long, value_enum)]
    likelihood: Option<LikelihoodArg>,
    /// VAEs: β of the β-VAE objective, reconstruction + β·KL (default 1: the ELBO).
    #[arg(long)]
    beta: Option<f64>,
    /// VAEs: steps over which the KL weight rises linearly to β (default 0: none).
    #[arg(long)]
    kl_warmup_steps: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LikelihoodArg {
    Bernoulli,
    Gaussian,
    Categorical,
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
    /// How many samples (default: all of a file; from a checkpoint 10000, or 2000 for the DDPM
    /// and 1000 for the PixelCNN).
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelArg {
    Gan,
    Dcgan,
    Cgan,
    WganGp,
    Vae,
    ConvVae,
    Ddpm,
    Pixelcnn,
    /// kiln-eval's MNIST / Fashion-MNIST classifier (written to data/classifiers/ unless --out).
    Classifier,
}

impl ModelArg {
    /// The model this names (`None` for the classifier).
    fn model(self) -> Option<ModelKind> {
        match self {
            ModelArg::Gan => Some(ModelKind::Gan(Architecture::Gan)),
            ModelArg::Dcgan => Some(ModelKind::Gan(Architecture::Dcgan)),
            ModelArg::Cgan => Some(ModelKind::Gan(Architecture::Cgan)),
            ModelArg::WganGp => Some(ModelKind::Gan(Architecture::WganGp)),
            ModelArg::Vae => Some(ModelKind::Vae(VaeArchitecture::Vae)),
            ModelArg::ConvVae => Some(ModelKind::Vae(VaeArchitecture::ConvVae)),
            ModelArg::Ddpm => Some(ModelKind::Ddpm),
            ModelArg::Pixelcnn => Some(ModelKind::PixelCnn),
            ModelArg::Classifier => None,
        }
    }
}

/// `fp32`, `tf32` or `bf16`.
fn parse_precision(text: &str) -> Result<kiln_tensor::MatmulPrecision, String> {
    text.parse()
        .map_err(|_| format!("--precision {text}: expected fp32, tf32 or bf16"))
}

/// `auto` (CUDA when kiln has it and a GPU is there, else the CPU), `cpu`, `cuda`, `cuda:N`.
fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "auto" => Ok(auto_device()),
        other => other
            .parse::<Device>()
            .map_err(|_| format!("--device {other}: expected auto, cpu, cuda or cuda:N")),
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
    let cli = match Cli::try_parse() {
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
    let report = match cli.command {
        Command::Info => Ok(info_report()),
        Command::Data(command) => data_command(command),
        Command::Sample(args) => sample_command(args),
        Command::Eval(args) => eval_command(args),
        Command::Reconstruct { source, n } => {
            latent_options(source).and_then(|options| latent::reconstruct(options, n))
        }
        Command::Interpolate {
            source,
            from,
            to,
            steps,
        } => latent_options(source)
            .and_then(|options| latent::interpolate(options, from.zip(to), steps)),
        Command::Manifold { source, size } => {
            latent_options(source).and_then(|options| latent::manifold(options, size))
        }
        Command::Train(args) => match train_command(args) {
            Ok(Finish::Completed(summary)) => Ok(summary + "\n"),
            Ok(Finish::Interrupted(message)) => {
                eprintln!("{message}");
                // 128 + SIGINT, what shells report for a program stopped by Ctrl-C.
                return ExitCode::from(130);
            }
            Err(message) => Err(message),
        },
    };
    let report = match report {
        Ok(report) => report,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::io::stdout().lock().write_all(report.as_bytes()) {
        eprintln!("error: cannot write to stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn train_command(args: TrainArgs) -> Result<Finish, String> {
    kiln_tensor::set_matmul_precision(args.precision);
    if args.log_every == 0 {
        return Err("--log-every must be at least 1".to_string());
    }
    if args.epochs == Some(0) || args.steps == Some(0) {
        return Err("--epochs and --steps must be at least 1".to_string());
    }
    let model = args.model.model();
    // --likelihood bernoulli is both the VAEs' and the PixelCNN's; the rest belong to one.
    let (likelihood, pixel_likelihood) = match (args.likelihood, model) {
        (None, _) => (None, None),
        (Some(LikelihoodArg::Bernoulli), Some(ModelKind::PixelCnn)) => {
            (None, Some(PixelLikelihood::Bernoulli))
        }
        (Some(LikelihoodArg::Categorical), _) => (None, Some(PixelLikelihood::Categorical)),
        (Some(LikelihoodArg::Bernoulli), _) => (Some(Likelihood::Bernoulli), None),
        (Some(LikelihoodArg::Gaussian), _) => (Some(Likelihood::Gaussian), None),
    };
    let vae = VaeOptions {
        latent_dim: args.latent_dim,
        likelihood,
        beta: args.beta,
        kl_warmup_steps: args.kl_warmup_steps,
    };
    let Some(model) = model else {
        if vae.any() || pixel_likelihood.is_some() {
            return Err(
                "--latent-dim, --likelihood, --beta and --kl-warmup-steps are settings of the VAEs and the PixelCNN, not of the classifier"
                    .to_string(),
            );
        }
        return classifier_command(args).map(Finish::Completed);
    };
    train::train(TrainOptions {
        model,
        dataset: args.source.dataset.map(DatasetKind::from),
        data_dir: args.source.data_dir,
        device: parse_device(&args.device)?,
        epochs: args.epochs,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        out: args.out,
        resume: args.resume,
        quiet: args.quiet,
        log_every: args.log_every,
        eval_samples: args.eval_samples,
        eval_every: args.eval_every,
        vae,
        pixel_likelihood,
        channels: args.channels,
    })
}

fn latent_options(args: LatentArgs) -> Result<LatentOptions, String> {
    Ok(LatentOptions {
        checkpoint: args.checkpoint,
        dataset: args.dataset.map(DatasetKind::from),
        data_dir: args.data_dir,
        out: args.out,
        device: parse_device(&args.device)?,
    })
}

/// `kiln train classifier`: trains kiln-eval's classifier with its default settings (or
/// --epochs, --batch-size, --lr, --seed) and writes it, by default over the committed one.
fn classifier_command(args: TrainArgs) -> Result<String, String> {
    use kiln_eval::classifier::{train, TrainConfig, TrainProgress};
    let kind = args.source.kind();
    if parse_device(&args.device)? != Device::Cpu {
        return Err("the classifier trains on the CPU only: use --device cpu".to_string());
    }
    if args.steps.is_some() || args.resume.is_some() {
        return Err("the classifier trains for whole --epochs and does not resume".to_string());
    }
    let mut config = TrainConfig::default_for(kind);
    if let Some(epochs) = args.epochs {
        config.epochs = epochs as usize;
    }
    if let Some(batch_size) = args.batch_size {
        config.batch_size = batch_size;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("data/classifiers").join(format!("{}.safetensors", kind.name()))
    });
    let load = |split| {
        Dataset::load(kind, split, args.source.data_dir.as_deref()).map_err(|e| e.to_string())
    };
    let (train_set, test_set) = (load(Split::Train)?, load(Split::Test)?);
    let mut progress: Option<kiln_run::Progress> = None;
    let mut on_progress = |event| match event {
        TrainProgress::Step {
            steps,
            epoch,
            epochs,
            loss,
            ..
        } => {
            let bar = progress.get_or_insert_with(|| kiln_run::Progress::new(steps, 0, args.quiet));
            bar.set_message(format!("epoch {}/{epochs} · loss {loss:.4}", epoch + 1));
            bar.inc(1);
        }
        TrainProgress::Epoch {
            epoch,
            train_loss,
            test_accuracy,
        } => {
            if let Some(bar) = &mut progress {
                bar.println(format!(
                    "epoch {}: train loss {train_loss:.4}, test accuracy {:.2}%",
                    epoch + 1,
                    test_accuracy * 100.0
                ));
            }
        }
    };
    let trained = train(&config, &train_set, &test_set, &mut on_progress);
    if let Some(bar) = &mut progress {
        bar.finish();
    }
    let (classifier, report) = trained.map_err(|e| e.to_string())?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    classifier.save(&out).map_err(|e| e.to_string())?;
    Ok(format!(
        "trained the {kind} classifier for {} epochs in {:.0} s: test accuracy {:.2}%; wrote {}",
        config.epochs,
        report.seconds,
        report.test_accuracy.last().copied().unwrap_or(0.0) * 100.0,
        out.display()
    ))
}

fn eval_command(args: EvalArgs) -> Result<String, String> {
    eval::eval(EvalOptions {
        checkpoint: args.checkpoint,
        samples: args.samples,
        n: args.n,
        dataset: args.dataset.map(DatasetKind::from),
        data_dir: args.data_dir,
        classifier: args.classifier,
        json: args.json,
        seed: args.seed,
        device: parse_device(&args.device)?,
        importance_samples: args.iw_samples,
        importance_images: args.iw_images,
        sampler: args.sampler.choice(),
        quiet: args.sampler.quiet,
    })
}

fn sample_command(args: SampleArgs) -> Result<String, String> {
    sample::sample(SampleOptions {
        checkpoint: args.checkpoint,
        n: args.n,
        digit: args.digit,
        latents: args.latents,
        seed: args.seed,
        out: args.out,
        device: parse_device(&args.device)?,
        sampler: args.sampler.choice(),
        quiet: args.sampler.quiet,
    })
}

/// Runs a `kiln data` command; returns what to print, or the one-line error.
fn data_command(command: DataCommand) -> Result<String, String> {
    match command {
        DataCommand::Info(source) => {
            let kind = source.kind();
            let mut report = format!("{:<10}{kind}\n", "dataset:");
            for split in [Split::Train, Split::Test] {
                let dataset = Dataset::load(kind, split, source.data_dir.as_deref())
                    .map_err(|e| e.to_string())?;
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
                return Err("--columns must be at least 1".to_string());
            }
            let dataset = Dataset::load(kind, split, source.data_dir.as_deref())
                .map_err(|e| e.to_string())?;
            if n == 0 || n > dataset.len() {
                return Err(format!(
                    "--n {n}: the {kind} {split} set has {} images; ask for 1 to {}",
                    dataset.len(),
                    dataset.len()
                ));
            }
            let images = dataset
                .images_tensor(0, n, Device::Cpu)
                .map_err(|e| e.to_string())?; // [n, 1, 28, 28] u8
                                              // u8 images are drawn as they are: 0 black, 255 white.
            let grid = Grid {
                columns,
                ..Grid::default()
            };
            grid.save(&images, &out).map_err(|e| e.to_string())?;
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

/// The text `kiln info` prints: one `label: value` line per fact.
fn info_report() -> String {
    let features = cpu_features();
    let detected: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    let missing: Vec<&str> = features.iter().filter(|f| !f.1).map(|f| f.0).collect();
    let mut feature_line = match (features.is_empty(), detected.is_empty()) {
        (true, _) => "none checked".to_string(),
        (false, true) => "none".to_string(),
        (false, false) => detected.join(" "),
    };
    if !missing.is_empty() {
        feature_line += &format!(" (not detected: {})", missing.join(" "));
    }
    let logical_cpus = std::thread::available_parallelism()
        .map_or_else(|err| format!("unknown ({err})"), |n| n.to_string());

    let mut facts = vec![
        (
            "kiln version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "target".to_string(),
            format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        ),
        ("CPU features".to_string(), feature_line),
        ("logical CPUs".to_string(), logical_cpus),
    ];
    facts.extend(cuda_facts());
    facts
        .iter()
        .map(|(label, value)| format!("{:<19}{value}\n", format!("{label}:")))
        .collect()
}

/// `kiln info`'s CUDA lines: the driver and each device (name, compute capability, memory),
/// NVRTC and the kernel cache; or the one line saying why CUDA cannot be used.
fn cuda_facts() -> Vec<(String, String)> {
    use kiln_tensor::cuda;
    let info = match cuda::info() {
        Ok(info) => info,
        Err(reason) => return vec![("CUDA".into(), format!("unavailable: {reason}"))],
    };
    let (major, minor) = info.driver_version;
    let mut facts = vec![(
        "CUDA".to_string(),
        format!("driver {major}.{minor}, {} device(s)", info.devices.len()),
    )];
    for device in &info.devices {
        facts.push((
            format!("cuda:{}", device.ordinal),
            format!(
                "{}, compute capability {}.{}, {:.1} GiB, {} SMs",
                device.name,
                device.arch.major,
                device.arch.minor,
                device.total_memory as f64 / (1u64 << 30) as f64,
                device.multiprocessors
            ),
        ));
    }
    facts.push((
        "NVRTC".into(),
        match cuda::registry::nvrtc_version() {
            Ok((major, minor)) => format!("{major}.{minor}"),
            Err(e) => format!("unavailable: {e}"),
        },
    ));
    facts.push((
        "kernel cache".into(),
        cuda::registry::cache_dir()
            .map_or_else(|| "none (no HOME)".into(), |dir| dir.display().to_string()),
    ));
    facts
}

/// The CPU features that matter to kiln's kernels, each with whether this CPU has it.
#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Vec<(&'static str, bool)> {
    vec![
        ("sse4.2", is_x86_feature_detected!("sse4.2")),
        ("avx", is_x86_feature_detected!("avx")),
        ("avx2", is_x86_feature_detected!("avx2")),
        ("fma", is_x86_feature_detected!("fma")),
        ("f16c", is_x86_feature_detected!("f16c")),
        ("avx512f", is_x86_feature_detected!("avx512f")),
    ]
}

#[cfg(target_arch = "aarch64")]
fn cpu_features() -> Vec<(&'static str, bool)> {
    vec![("neon", std::arch::is_aarch64_feature_detected!("neon"))]
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_features() -> Vec<(&'static str, bool)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_report_is_one_labelled_line_per_fact() {
        let report = info_report();
        let lines: Vec<&str> = report.lines().collect();
        // Five lines without a GPU (the last says why there is no CUDA); more with one.
        assert!(lines.len() >= 5, "{report}");
        assert!(lines[4].starts_with("CUDA:"), "{report}");
        for line in &lines {
            let (label, value) = line.split_once(':').expect(line);
            assert!(!label.is_empty() && !value.trim().is_empty(), "{line}");
        }
        assert!(lines[0].ends_with(env!("CARGO_PKG_VERSION")), "{report}");
        if cfg!(target_arch = "x86_64") {
            // avx2 is checked on every x86_64 CPU, so it is named whether or not it is present.
            assert!(
                lines[2].split([' ', '(', ')']).any(|word| word == "avx2"),
                "{report}"
            );
        }
    }
}
