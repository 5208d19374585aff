//! Progress of long commands (`audit verify`, `audit export`, `store
//! migrate`, `root recover`): a bar with records done / total and the rate,
//! drawn on standard error only when it is a terminal and `--json` is not
//! given. In a pipe, a file or with `--json` nothing at all is drawn, so
//! what a script reads is byte for byte what it was without it.

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::args::Cli;

/// Records counted before the bar is moved (moving it takes a lock and a
/// clock read: once per record would slow a million-record verify).
const STEP: u64 = 512;

/// A bar on a terminal, or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    unshown: Cell<u64>,
}

impl Progress {
    /// Nothing drawn (a caller without a terminal, or one inside another
    /// command's check).
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            unshown: Cell::new(0),
        }
    }

    /// A bar for `what` over `total` records, when standard error is a
    /// terminal and `--json` is not given; else [`Progress::hidden`].
    pub fn new(cli: &Cli, what: &str, total: u64) -> Progress {
        if cli.json || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {human_pos}/{human_len} records, {rate}, {elapsed} (about {eta} \
             left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} records/s", s.per_sec());
        })
        .progress_chars("=> ");
        // Drawn from the first stage on, when the total is known (not as
        // a full bar of 0/0 meanwhile).
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
            .with_style(style)
            .with_prefix(what.to_string());
        if total > 0 {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        Progress {
            bar: Some(bar),
            unshown: Cell::new(0),
        }
    }

    /// One more record done.
    pub fn tick(&self) {
        self.add(1);
    }

    /// `n` more records done.
    pub fn add(&self, n: u64) {
        let Some(bar) = &self.bar else { return };
        let pending = self.unshown.get() + n;
        if pending >= STEP {
            bar.inc(pending);
            self.unshown.set(0);
        } else {
            self.unshown.set(pending);
        }
    }

    /// A new stage: its name and its records (the count goes on).
    pub fn stage(&self, what: &str, more: u64) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(what.to_string());
            bar.inc_length(more);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        }
    }

    /// The command is done: the bar goes (whatever is printed next starts
    /// on a clean line).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(self.unshown.replace(0));
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
