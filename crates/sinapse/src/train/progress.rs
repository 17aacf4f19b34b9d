//! Progress output of [`super::fit`]: a live bar (indicatif) with the loss and samples/s on a
//! terminal, one plain line per epoch otherwise (logs, pipes, CI).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::{EpochRecord, FitConfig, Observer};

/// How much [`ProgressReporter`] prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing.
    Quiet,
    /// One line per epoch, and a live bar when standard error is a terminal.
    Normal,
}

/// Prints training progress: a bar during each epoch (terminal only) and a line after each
/// epoch (after every k-th epoch for long runs, so at most about 50 lines, plus the last).
pub struct ProgressReporter {
    verbosity: Verbosity,
    metric: &'static str,
    every: usize,
    terminal: bool,
    bar: Option<ProgressBar>,
    epoch_start: Instant,
    samples: usize,
    /// Set once standard output could not be written.
    closed: bool,
}

impl ProgressReporter {
    /// A reporter printing at `verbosity`.
    pub fn new(verbosity: Verbosity) -> ProgressReporter {
        ProgressReporter {
            verbosity,
            metric: "accuracy",
            every: 1,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            epoch_start: Instant::now(),
            samples: 0,
            closed: false,
        }
    }

    /// The line printed after an epoch.
    pub fn epoch_line(&self, r: &EpochRecord, epochs: usize) -> String {
        let width = epochs.to_string().len();
        let mut line = format!(
            "epoch {:>width$}/{epochs}: loss {:.4}, {} {:.4}",
            r.epoch, r.train_loss, self.metric, r.train_metric
        );
        if let (Some(l), Some(m)) = (r.val_loss, r.val_metric) {
            line.push_str(&format!(", val_loss {l:.4}, val_{} {m:.4}", self.metric));
        }
        line.push_str(&format!(", lr {:.4e}, time {:.2}s, {:.0} samples/s", r.lr, r.seconds, r.samples_per_sec));
        line
    }
}

impl Observer for ProgressReporter {
    fn on_fit_start(&mut self, cfg: &FitConfig, _batches: usize) {
        self.metric = cfg.task.metric_name();
        self.every = cfg.epochs.div_ceil(50).max(1);
    }

    fn on_batch(&mut self, epoch: usize, batch: usize, batches: usize, size: usize, loss: f32) {
        if self.verbosity == Verbosity::Quiet || !self.terminal {
            return;
        }
        if batch == 1 {
            self.epoch_start = Instant::now();
            self.samples = 0;
            let bar = ProgressBar::new(batches as u64);
            if let Ok(style) = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(epoch.to_string());
            self.bar = Some(bar);
        }
        self.samples += size;
        if let Some(bar) = &self.bar {
            let rate = self.samples as f64 / self.epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}, {rate:.0} samples/s"));
            bar.inc(1);
        }
    }

    fn on_epoch(&mut self, record: &EpochRecord, epochs: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let shown = record.epoch == 1 || record.epoch == epochs || record.epoch.is_multiple_of(self.every);
        if self.verbosity != Verbosity::Quiet && shown && !self.closed {
            // A reader that went away (`sinapse train | head -1`) stops the lines, never the
            // training: the model is still saved.
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{}", self.epoch_line(record, epochs)).and_then(|()| out.flush()).is_err() {
                self.closed = true;
            }
        }
    }
}
