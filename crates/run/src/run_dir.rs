//! The run folder: where a training run keeps its config, metrics, loss plot, sample images and
//! checkpoints, under fixed names so every trainer's runs look alike and a resumed run finds
//! what the interrupted one left. Not for what goes into those files (the trainer decides).
//!
//! ```text
//! runs/gan-mnist/
//! ├── config.json                  the run's settings (pretty JSON)
//! ├── metrics.jsonl                one JSON object per logged step
//! ├── loss.png, loss.svg           the loss curves so far
//! ├── samples/epoch_001.png        images sampled after each epoch
//! └── checkpoints/latest.safetensors, previous.safetensors
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, RunError};

/// A run's folder and the paths of what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Makes the run folder (and its parents) with `samples/` and `checkpoints/` in it. A folder
    /// that already exists is used as it is: resuming writes into it. Fails with the path and
    /// the OS error when the folder cannot be made, or when the path (or one of the two
    /// subfolders) exists and is not a directory.
    pub fn create(path: impl AsRef<Path>) -> Result<RunDir> {
        let run = RunDir {
            path: path.as_ref().to_path_buf(),
        };
        for folder in [run.path(), &run.samples_dir(), &run.checkpoints_dir()] {
            make_directory(folder)?;
        }
        Ok(run)
    }

    /// The run folder itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `samples/`: the images sampled during training.
    pub fn samples_dir(&self) -> PathBuf {
        self.path.join("samples")
    }

    /// `checkpoints/`: the saved training state.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// `checkpoints/latest.safetensors`: the checkpoint a resumed run starts from.
    pub fn latest_checkpoint_path(&self) -> PathBuf {
        self.checkpoints_dir().join("latest.safetensors")
    }

    /// `checkpoints/previous.safetensors`: the checkpoint `latest` replaced, kept so that a
    /// newest checkpoint that turns out bad (or a file damaged later) does not lose the run.
    pub fn previous_checkpoint_path(&self) -> PathBuf {
        self.checkpoints_dir().join("previous.safetensors")
    }

    /// `samples/epoch_001.png` for `epoch` 1 (the first epoch), `epoch_010.png` for 10: at
    /// least three digits, so the files sort in epoch order up to 999. `epoch` 0 gives
    /// `epoch_000.png`, for images sampled before training starts.
    pub fn sample_path(&self, epoch: usize) -> PathBuf {
        self.samples_dir().join(format!("epoch_{epoch:03}.png"))
    }

    /// `loss.png`: the loss plot.
    pub fn plot_path(&self) -> PathBuf {
        self.path.join("loss.png")
    }

    /// `loss.svg`: the loss plot as an SVG, drawn beside `loss.png` (see [`crate::plot::draw`]).
    pub fn plot_svg_path(&self) -> PathBuf {
        self.path.join("loss.svg")
    }

    /// `metrics.jsonl`: the metrics log (see [`crate::MetricsLog`]).
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// `config.json`: the run's settings.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// Writes `config` to `config.json` as pretty JSON. The file appears whole or not at all
    /// (written under a temporary name, then renamed), so an interrupted write never leaves a
    /// half config for a resumed run to trip on.
    pub fn write_config<T: serde::Serialize + ?Sized>(&self, config: &T) -> Result<()> {
        let path = self.config_path();
        let mut json = serde_json::to_vec_pretty(config)
            .map_err(|err| RunError::json(&path, "the config", err))?;
        json.push(b'\n');
        kiln_fs::write_file_atomically(&path, |out| out.write_all(&json))
            .map_err(|err| RunError::io(&path, "write", err))
    }
}

/// Makes `folder` (and its parents) unless it is already a directory.
fn make_directory(folder: &Path) -> Result<()> {
    match std::fs::metadata(folder) {
        Ok(metadata) if metadata.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(RunError::NotUsable {
                path: folder.display().to_string(),
                message: "exists and is not a directory".to_string(),
            })
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(folder).map_err(|err| RunError::io(folder, "create directory", err))
}
