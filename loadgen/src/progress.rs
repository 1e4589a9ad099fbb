//! Live progress while a run goes: an indicatif bar when stderr is a
//! terminal, otherwise one plain line per second (logs, CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::fmt_us;
use crate::stats::Interval;

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    requests: u64,
    errors: u64,
}

impl Progress {
    /// `duration` or `requests` sets the bar's length; neither gives a spinner.
    pub fn new(quiet: bool, duration: Option<Duration>, requests: Option<u64>) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let (bar, tmpl) = match (duration, requests) {
                (_, Some(n)) => (ProgressBar::new(n), "{bar:30} {pos}/{len} requests  {msg}"),
                (Some(d), None) => (
                    ProgressBar::new(d.as_secs().max(1)),
                    "{bar:30} {pos}/{len}s  {msg}",
                ),
                (None, None) => (ProgressBar::new_spinner(), "{spinner} {elapsed}  {msg}"),
            };
            bar.set_style(ProgressStyle::with_template(tmpl).expect("static template"));
            bar
        });
        Progress {
            bar,
            quiet,
            requests: 0,
            errors: 0,
        }
    }

    pub fn interval(&mut self, iv: &Interval, by_requests: bool) {
        let c = &iv.counters;
        if iv.duration < Duration::from_millis(100) && c.requests == 0 {
            return; // the sliver after the last full second
        }
        self.requests += c.requests;
        self.errors += c.errors.total();
        let rps = c.requests as f64 / iv.duration.as_secs_f64();
        let line = format!(
            "{:>8.0} req/s  p50 {:>8}  p99 {:>8}  open {:>6}  errors {}",
            rps,
            fmt_us(iv.hist.value_at_quantile(0.5) as f64),
            fmt_us(iv.hist.value_at_quantile(0.99) as f64),
            c.open,
            self.errors
        );
        match &self.bar {
            Some(bar) => {
                if by_requests {
                    bar.set_position(self.requests);
                } else {
                    let len = bar.length().unwrap_or(u64::MAX);
                    bar.set_position((iv.index + 1).min(len));
                }
                bar.set_message(line);
            }
            None if !self.quiet => eprintln!("[{:>4}s] {line}", iv.index + 1),
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
