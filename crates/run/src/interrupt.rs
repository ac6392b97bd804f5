//! Stopping a run cleanly on Ctrl-C: the first SIGINT (or SIGTERM) sets a flag the trainer
//! checks between steps, so it can save a checkpoint and exit; a second one ends the process at
//! once. Not for other signals, and not a way to cancel a step midway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Result, RunError};

/// The exit status after a second Ctrl-C: 128 + SIGINT, what shells report for a process
/// ended by Ctrl-C.
pub const FORCED_EXIT_STATUS: i32 = 130;

/// The process's one handler and its flag, or why the handler could not be installed.
static HANDLER: OnceLock<std::result::Result<Arc<AtomicBool>, String>> = OnceLock::new();

/// Whether a stop has been asked for. Cheap to clone and to check every step.
#[derive(Debug, Clone)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// Installs the process's Ctrl-C / SIGTERM handler (once; later calls return the same
    /// flag) and returns a handle to its flag. Fails only if something outside kiln-run has
    /// already installed a handler.
    pub fn install() -> Result<Interrupt> {
        let handler = HANDLER.get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&flag);
            ctrlc::set_handler(move || {
                if seen.swap(true, Ordering::SeqCst) {
                    eprintln!("\ninterrupted twice: stopping now");
                    std::process::exit(FORCED_EXIT_STATUS);
                }
                eprintln!(
                    "\ninterrupt: stopping after the current step (press Ctrl-C again to stop \
                     at once)"
                );
            })
            .map(|()| flag)
            .map_err(|err| err.to_string())
        });
        match handler {
            Ok(flag) => Ok(Interrupt {
                flag: Arc::clone(flag),
            }),
            Err(message) => Err(RunError::Interrupt(message.clone())),
        }
    }

    /// A flag of its own, tied to no signal: [`Interrupt::trigger`] stands in for Ctrl-C, and
    /// tests running side by side do not see each other's.
    pub fn for_tests() -> Interrupt {
        Interrupt {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether Ctrl-C (or [`Interrupt::trigger`]) has asked the run to stop.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Asks the run to stop, as a first Ctrl-C would.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
}
