//! Where a tensor's storage lives.

/// A compute device. Only the CPU exists today; `Cuda(ordinal)` is reserved for the CUDA
/// backend, and asking for it returns a "not available" error instead of panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;

    /// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N`.
    fn from_str(text: &str) -> crate::Result<Self> {
        let invalid = || {
            crate::Error::invalid(
                "device",
                format!("unknown device {text:?}: expected cpu, cuda or cuda:N"),
            )
        };
        match text {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let ordinal = text.strip_prefix("cuda:").ok_or_else(invalid)?;
                ordinal.parse().map(Device::Cuda).map_err(|_| invalid())
            }
        }
    }
}
