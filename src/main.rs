//! The `kiln` command line. For now it only reports what it runs on (`kiln info`); the training,
//! sampling and bench commands arrive with the issues that build them.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

/// kiln: a deep-learning engine written from scratch in Rust, and the generative models on it.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version, the platform, the CPU features detected at run time and the devices.
    Info,
}

fn main() -> ExitCode {
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
                // clap's first line is the error itself; the rest is usage and tips.
                _ => err
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("error")
                    .to_string(),
            };
            eprintln!("{message} (see 'kiln --help')");
            return ExitCode::from(2);
        }
    };
    let report = match cli.command {
        Command::Info => info_report(),
    };
    if let Err(err) = std::io::stdout().lock().write_all(report.as_bytes()) {
        eprintln!("error: cannot write to stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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

    [
        ("kiln version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "target",
            format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        ),
        ("CPU features", feature_line),
        ("logical CPUs", logical_cpus),
        (
            "devices",
            "CPU; CUDA: not built into this version (CPU only)".to_string(),
        ),
    ]
    .iter()
    .map(|(label, value)| format!("{:<19}{value}\n", format!("{label}:")))
    .collect()
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
        assert_eq!(lines.len(), 5, "{report}");
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
