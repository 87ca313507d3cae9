//! Progress on stderr: one bar per PVC when stderr is a terminal, nothing otherwise (logs say
//! what happened when `-v` is given).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

#[derive(Clone)]
pub struct Bar {
    bar: Option<ProgressBar>,
    label: String,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let on = enabled && std::io::stderr().is_terminal();
        Progress {
            multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn bar(&self, label: &str) -> Bar {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(0));
            b.set_style(
                ProgressStyle::with_template("{prefix:.bold} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Bar {
            bar,
            label: label.to_string(),
        }
    }
}

impl Bar {
    pub fn set_length(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_length(n);
        }
    }
    pub fn set_position(&self, n: u64) {
        if let Some(b) = &self.bar {
            if b.length().is_some_and(|l| n > l) {
                b.set_length(n);
            }
            b.set_position(n);
        }
    }
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => tracing::info!("{}: {msg}", self.label),
        }
    }
    /// A line that stays on stderr whatever the terminal (a retry, a failed attempt): above
    /// the bars on a terminal, a plain `LABEL: message` line otherwise.
    pub fn event(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("{}: {msg}", self.label)),
            None => eprintln!("{}: {msg}", self.label),
        }
    }
    pub fn finish(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(msg.to_string()),
            None => tracing::info!("{}: {msg}", self.label),
        }
    }
}
