//! The real Ctrl-C: a SIGINT sent to this test process sets the flag instead of ending the
//! process. Its own test binary, because the handler and its flag are process-wide (a second
//! signal would end the process, as it should for a user).

use std::time::{Duration, Instant};

use kiln_run::Interrupt;

#[cfg(unix)]
#[test]
fn sigint_sets_the_flag_and_install_can_be_called_again() {
    let interrupt = Interrupt::install().unwrap();
    let again = Interrupt::install().unwrap();
    assert!(!interrupt.requested());

    let status = std::process::Command::new("kill")
        .args(["-INT", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // The handler runs on ctrlc's own thread: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !interrupt.requested() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(interrupt.requested());
    assert!(again.requested(), "both installs share the one flag");
}
