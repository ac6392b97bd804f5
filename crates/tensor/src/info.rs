//! What kiln runs on, as `kiln info` prints it.

/// What `kiln info` prints: one `label: value` line per fact — the version, the target, the
/// CPU features kiln's kernels use, the logical CPUs, and CUDA (driver, devices, NVRTC, kernel
/// cache) or why it cannot be used.
pub fn report() -> String {
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
    use crate::cuda;
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
        let report = report();
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
