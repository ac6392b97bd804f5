//! Showing a run's progress: a progress bar on a terminal, plain log lines every few seconds
//! elsewhere (CI logs, `--quiet`, tests), an images-per-second meter and a duration format.
//! Not for what the trainer reports: it builds its own message ("epoch 3/10 · loss_d 0.61").

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the log lines are written by default, when there is no bar.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The bar's layout: elapsed time, the bar, steps done of all, time left, the message.
const TEMPLATE: &str = "{elapsed} [{bar:30.cyan/blue}] {pos}/{len} eta {eta} {wide_msg}";

/// A training run's progress over `total_steps` steps: a bar on stderr when it is a terminal,
/// otherwise a log line on stderr at most every [`DEFAULT_LOG_INTERVAL`] (see
/// [`Progress::with_log_interval`]) and one at [`Progress::finish`], each
/// `step 2400/9380 · 1m 12s elapsed, eta 3m 30s · <message>`.
pub struct Progress {
    total: u64,
    start: u64,
    position: u64,
    message: String,
    started: Instant,
    finished: bool,
    display: Display,
}

enum Display {
    Bar(ProgressBar),
    Log {
        every: Duration,
        last: Instant,
        out: Box<dyn Write + Send>,
    },
}

impl Progress {
    /// Progress over `total_steps`, of which `start_position` are already done (a resumed run);
    /// elapsed time and the ETA count from now. With `quiet`, or when stderr is not a terminal,
    /// there is no bar, only log lines.
    pub fn new(total_steps: u64, start_position: u64, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress::logging_to(total_steps, start_position, Box::new(std::io::stderr()));
        }
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "elapsed",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = out.write_str(&format_duration(state.elapsed()));
                },
            )
            .with_key(
                "eta",
                move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
                    let done = state.pos().saturating_sub(start_position);
                    let _ = out.write_str(&format_eta(state.elapsed(), done, remaining));
                },
            )
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_position(start_position);
        // Redraw between steps too, so the elapsed time moves while a slow step runs.
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            total: total_steps,
            start: start_position,
            position: start_position,
            message: String::new(),
            started: Instant::now(),
            finished: false,
            display: Display::Bar(bar),
        }
    }

    /// Log lines (no bar) written to `out`.
    fn logging_to(total: u64, start: u64, out: Box<dyn Write + Send>) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            start,
            position: start,
            message: String::new(),
            started: now,
            finished: false,
            display: Display::Log {
                every: DEFAULT_LOG_INTERVAL,
                last: now,
                out,
            },
        }
    }

    /// Writes the log lines (when there is no bar) at most every `every` instead of every
    /// [`DEFAULT_LOG_INTERVAL`].
    pub fn with_log_interval(mut self, every: Duration) -> Progress {
        if let Display::Log {
            every: interval, ..
        } = &mut self.display
        {
            *interval = every;
        }
        self
    }

    /// Replaces the message shown after the bar (or in the next log line).
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        match &self.display {
            Display::Bar(bar) => bar.set_message(self.message.clone()),
            Display::Log { .. } => self.log_if_due(),
        }
    }

    /// Counts `steps` more steps done.
    pub fn inc(&mut self, steps: u64) {
        self.position = self.position.saturating_add(steps);
        match &self.display {
            Display::Bar(bar) => bar.inc(steps),
            Display::Log { .. } => self.log_if_due(),
        }
    }

    /// Steps done so far, those before a resume included.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Prints `line` on stderr, above the bar when there is one.
    pub fn println(&mut self, line: impl AsRef<str>) {
        match &mut self.display {
            Display::Bar(bar) => bar.println(line),
            Display::Log { out, .. } => {
                // A closed stderr is no reason to stop training.
                let _ = writeln!(out, "{}", line.as_ref());
            }
        }
    }

    /// Leaves the bar drawn at its last state, or writes a last log line. Calling it again
    /// does nothing.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        match &self.display {
            Display::Bar(bar) => bar.finish(),
            Display::Log { .. } => self.log(Instant::now()),
        }
    }

    /// Writes a log line if the interval has passed since the last one.
    fn log_if_due(&mut self) {
        let now = Instant::now();
        if let Display::Log { every, last, .. } = &self.display {
            if now.duration_since(*last) >= *every && !self.finished {
                self.log(now);
            }
        }
    }

    /// Writes `step X/Y · elapsed, eta · message`.
    fn log(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.started);
        let done = self.position.saturating_sub(self.start);
        let remaining = self.total.saturating_sub(self.position);
        let mut line = format!(
            "step {}/{} · {} elapsed, eta {}",
            self.position,
            self.total,
            format_duration(elapsed),
            format_eta(elapsed, done, remaining)
        );
        if !self.message.is_empty() {
            line.push_str(" · ");
            line.push_str(&self.message);
        }
        if let Display::Log { last, out, .. } = &mut self.display {
            *last = now;
            let _ = writeln!(out, "{line}");
        }
    }
}

/// The time left at the average rate so far: "3m 30s", or "?" before any step is done.
fn format_eta(elapsed: Duration, done: u64, remaining: u64) -> String {
    if done == 0 {
        return "?".to_string();
    }
    let seconds = elapsed.as_secs_f64() * remaining as f64 / done as f64;
    Duration::try_from_secs_f64(seconds).map_or_else(|_| "?".to_string(), format_duration)
}

/// A duration as people read it, to the second: "42s", "3m 07s", "1h 02m", "2d 03h".
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if minutes == 0 {
        format!("{seconds}s")
    } else if hours == 0 {
        format!("{minutes}m {:02}s", seconds % 60)
    } else if days == 0 {
        format!("{hours}h {:02}m", minutes % 60)
    } else {
        format!("{days}d {:02}h", hours % 24)
    }
}

/// Items (images) per second, smoothed: an exponential moving average of the rate over each
/// interval between [`Throughput::record`] calls, weighted by the interval's length, so a few
/// slow or fast steps move it little and a lasting change shows within a few time constants.
#[derive(Debug, Clone)]
pub struct Throughput {
    time_constant: f64,
    last: Instant,
    pending: u64,
    rate: Option<f64>,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput::new()
    }
}

impl Throughput {
    /// A meter with a 5-second time constant whose clock starts now.
    pub fn new() -> Throughput {
        Throughput::with_time_constant(Duration::from_secs(5))
    }

    /// A meter whose average forgets a rate by a factor e over `time_constant`; its clock
    /// starts now.
    pub fn with_time_constant(time_constant: Duration) -> Throughput {
        Throughput {
            time_constant: time_constant.as_secs_f64(),
            last: Instant::now(),
            pending: 0,
            rate: None,
        }
    }

    /// Counts `items` done since the previous call (or since the meter was made).
    pub fn record(&mut self, items: u64) {
        self.record_at(items, Instant::now());
    }

    /// [`Throughput::record`] at a given time (for tests and replays).
    pub fn record_at(&mut self, items: u64, now: Instant) {
        self.pending = self.pending.saturating_add(items);
        let interval = now.saturating_duration_since(self.last).as_secs_f64();
        if interval <= 0.0 {
            return; // no time has passed: the items count towards the next interval
        }
        let rate = self.pending as f64 / interval;
        let weight = if self.time_constant > 0.0 {
            1.0 - (-interval / self.time_constant).exp()
        } else {
            1.0
        };
        self.rate = Some(match self.rate {
            Some(average) => average + weight * (rate - average),
            None => rate,
        });
        self.last = now;
        self.pending = 0;
    }

    /// The smoothed rate in items per second; `None` until an interval has been recorded.
    pub fn per_second(&self) -> Option<f64> {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    #[test]
    fn log_lines_wait_for_the_interval_and_finish_writes_one() {
        let captured = Captured::default();
        let mut progress = Progress::logging_to(10, 2, Box::new(captured.clone()))
            .with_log_interval(Duration::from_secs(3600));
        progress.set_message("epoch 1/2 · loss 0.5");
        progress.inc(3);
        assert!(captured.lines().is_empty(), "{:?}", captured.lines());
        progress.println("sample saved");
        progress.finish();
        progress.finish();
        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "sample saved");
        assert!(lines[1].starts_with("step 5/10 · "), "{lines:?}");
        assert!(lines[1].ends_with(" · epoch 1/2 · loss 0.5"), "{lines:?}");
    }

    #[test]
    fn log_lines_with_a_zero_interval_follow_every_update() {
        let captured = Captured::default();
        let mut progress = Progress::logging_to(4, 0, Box::new(captured.clone()))
            .with_log_interval(Duration::ZERO);
        progress.inc(1);
        progress.set_message("half");
        progress.inc(1);
        let lines = captured.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("step 1/4 · ") && !lines[0].contains("half"));
        assert!(lines[1].starts_with("step 1/4 · ") && lines[1].ends_with(" · half"));
        assert!(lines[2].starts_with("step 2/4 · ") && lines[2].ends_with(" · half"));
    }

    #[test]
    fn eta_is_the_average_rate_so_far() {
        // 100 steps in 50 s: 2 steps/s, so 300 steps left take 150 s.
        assert_eq!(format_eta(Duration::from_secs(50), 100, 300), "2m 30s");
        assert_eq!(format_eta(Duration::from_secs(50), 0, 300), "?");
        assert_eq!(format_eta(Duration::from_secs(50), 100, 0), "0s");
    }
}
