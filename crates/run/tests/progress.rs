//! Progress without a terminal, the duration format, the throughput meter and the simulated
//! Ctrl-C. (The log lines' text is checked by the unit tests in src/progress.rs, which can
//! capture them; the real signal is in tests/signal.rs.)

use std::time::{Duration, Instant};

use kiln_run::{format_duration, Interrupt, Progress, Throughput};

#[test]
fn quiet_progress_counts_steps_through_a_whole_run() {
    let mut progress = Progress::new(100, 40, true);
    assert_eq!(progress.position(), 40);
    for step in 41..=100 {
        progress.set_message(format!("epoch 3/10 · loss_d 0.61 · step {step}"));
        progress.inc(1);
        if step % 20 == 0 {
            progress.println(format!("saved samples at step {step}"));
        }
    }
    assert_eq!(progress.position(), 100);
    progress.finish();
    progress.finish();
}

#[test]
fn odd_totals_do_not_panic() {
    let mut progress = Progress::new(0, 0, true);
    progress.inc(5);
    progress.finish();
    let mut progress = Progress::new(10, 25, true);
    progress.inc(u64::MAX);
    assert_eq!(progress.position(), u64::MAX);
    progress.finish();
}

#[test]
fn durations_read_like_people_write_them() {
    let cases = [
        (0, "0s"),
        (42, "42s"),
        (60, "1m 00s"),
        (187, "3m 07s"),
        (3600, "1h 00m"),
        (3720 + 59, "1h 02m"),
        (86_400 * 2 + 3 * 3600 + 59, "2d 03h"),
    ];
    for (seconds, text) in cases {
        assert_eq!(format_duration(Duration::from_secs(seconds)), text);
    }
    assert_eq!(format_duration(Duration::from_millis(999)), "0s");
}

#[test]
fn throughput_is_an_exponential_average_of_the_rate() {
    let mut meter = Throughput::with_time_constant(Duration::from_secs(2));
    assert_eq!(meter.per_second(), None);
    // The first interval runs from the meter's making to here; nothing was done in it.
    let mut now = Instant::now() + Duration::from_secs(1);
    meter.record_at(0, now);
    assert_eq!(meter.per_second(), Some(0.0));

    // 64 images every 32 ms (2000 images/s) for 1.6 s. Each interval of length dt moves the
    // average a fraction 1 - exp(-dt / 2 s) of the way to 2000, so after 1.6 s it has moved
    // 1 - exp(-0.8) of the way from 0.
    let mut run = |meter: &mut Throughput, every_ms: u64, times: u32| {
        for _ in 0..times {
            now += Duration::from_millis(every_ms);
            meter.record_at(64, now);
        }
    };
    run(&mut meter, 32, 50);
    let expected = 2000.0 * (1.0 - (-0.8f64).exp());
    let rate = meter.per_second().unwrap();
    assert!(
        (rate - expected).abs() < 1e-6,
        "{rate}, expected {expected}"
    );

    // Twice as fast (64 every 16 ms) for one time constant: 1 - 1/e of the way to 4000.
    run(&mut meter, 16, 125);
    let expected = 4000.0 + (expected - 4000.0) * (-1f64).exp();
    let rate = meter.per_second().unwrap();
    assert!(
        (rate - expected).abs() < 1e-6,
        "{rate}, expected {expected}"
    );

    // Ten more time constants: there.
    run(&mut meter, 16, 1250);
    let rate = meter.per_second().unwrap();
    assert!((rate - 4000.0).abs() < 0.5, "{rate}");

    // Items recorded with no time passed count towards the next interval.
    run(&mut meter, 0, 1);
    run(&mut meter, 32, 1);
    let rate = meter.per_second().unwrap();
    assert!((rate - 4000.0).abs() < 0.5, "{rate}");
}

#[test]
fn trigger_stands_in_for_ctrl_c() {
    let interrupt = Interrupt::for_tests();
    let seen_by_the_loop = interrupt.clone();
    let other_test = Interrupt::for_tests();
    assert!(!seen_by_the_loop.requested());
    interrupt.trigger();
    assert!(seen_by_the_loop.requested());
    assert!(!other_test.requested());
}
