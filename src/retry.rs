//! When to try a target again: which failures are transient, how long to wait (exponential
//! backoff with jitter), and when to give up (`--retries`, `--retry-timeout`). Pure decisions,
//! so they are unit-tested; the engines (`backup`, `cmd::restore`) own the loops.

use std::time::Duration;

use serde::Serialize;

use crate::exit::{ExitKind, Failure};

/// `--retries`, `--retry-timeout` and `--stall-timeout`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// No new attempt starts once this much time has passed since the target's first failure.
    /// Measured from the first failure, not the start, so that a long first attempt of a large
    /// volume does not use up the time meant for riding out an outage.
    pub budget: Duration,
    /// First backoff delay; doubled after every failure up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// An exec data stream that moves no byte for this long is declared dead.
    pub stall: Duration,
}

pub const DEFAULT_RETRY_TIMEOUT: &str = "5m";
pub const DEFAULT_STALL_TIMEOUT: &str = "60s";

impl RetryPolicy {
    /// Validates the flags' values (already parsed as durations by clap).
    pub fn new(retries: u32, budget: Duration, stall: Duration) -> Result<Self, Failure> {
        if stall < Duration::from_secs(1) {
            return Err(Failure::usage(format!(
                "--stall-timeout {} is too short: a healthy stream can pause for a second (use at least 1s)",
                humantime::format_duration(stall)
            )));
        }
        if retries > 0 && budget.is_zero() {
            return Err(Failure::usage(
                "--retry-timeout 0 leaves no time for the retries that --retries asks for; pass --retries 0 to disable retries",
            ));
        }
        Ok(RetryPolicy {
            retries,
            budget,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            stall,
        })
    }

    /// The wait before attempt `failures + 1`, with "equal jitter": half of the exponential
    /// delay is fixed, the other half random (`unit` in [0, 1)), so that parallel targets hit
    /// by the same outage do not come back in lockstep.
    /// <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.cap);
        exp / 2 + exp.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// After `failures` failed attempts, the last one failing with `f`, `since_first_failure`
    /// ago: wait this long and try again, or stop (and why).
    pub fn next(
        &self,
        f: &Failure,
        failures: u32,
        since_first_failure: Duration,
        unit: f64,
    ) -> Result<Duration, GiveUp> {
        if !transient(f) {
            return Err(GiveUp::Permanent);
        }
        if failures > self.retries {
            return Err(GiveUp::Retries(self.retries));
        }
        let wait = self.delay(failures, unit);
        if since_first_failure + wait > self.budget {
            return Err(GiveUp::Budget(self.budget));
        }
        Ok(wait)
    }
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    Permanent,
    Retries(u32),
    Budget(Duration),
}

impl GiveUp {
    /// A note for the final error message, so the user knows which limit to raise.
    pub fn note(&self, attempts: u32) -> String {
        match self {
            GiveUp::Permanent if attempts == 1 => String::new(),
            GiveUp::Permanent => {
                format!(" (after {attempts} attempts; this failure is not retried)")
            }
            GiveUp::Retries(0) => " (retries are off: --retries 0)".into(),
            GiveUp::Retries(n) => format!(" (gave up after {attempts} attempts: --retries {n})"),
            GiveUp::Budget(b) => format!(
                " (gave up after {attempts} attempts: --retry-timeout {} reached)",
                humantime::format_duration(*b)
            ),
        }
    }
}

/// Transient failures get another attempt: connection resets, outages, a helper pod that
/// died or was evicted, API 5xx/429, stalls. Refusals, integrity problems and failures marked
/// permanent (forbidden, not found, PodSecurity, an image that cannot be pulled) do not.
pub fn transient(f: &Failure) -> bool {
    f.kind == ExitKind::Runtime && !f.permanent
}

/// One attempt, as reported on stderr and in `-o json` (`attemptLog`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub attempt: u32,
    /// "ok" or "failed".
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    /// The backoff before the next attempt, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
}

/// A random number in [0, 1) for the jitter.
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32, budget: u64) -> RetryPolicy {
        RetryPolicy::new(
            retries,
            Duration::from_secs(budget),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy(10, 600);
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.delay(1, 0.999_999).as_millis(), 999);
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(3));
        assert_eq!(p.delay(40, 0.0), Duration::from_secs(15));
        assert!(p.delay(40, 1.0) <= Duration::from_secs(30));
    }

    #[test]
    fn limits_and_permanent_failures_stop_retries() {
        let p = policy(2, 10);
        let reset = Failure::runtime("connection reset by peer");
        assert!(p.next(&reset, 1, Duration::ZERO, 0.0).is_ok());
        assert!(p.next(&reset, 2, Duration::ZERO, 0.0).is_ok());
        assert_eq!(
            p.next(&reset, 3, Duration::ZERO, 0.0),
            Err(GiveUp::Retries(2))
        );
        assert_eq!(
            p.next(&reset, 1, Duration::from_secs(10), 0.0),
            Err(GiveUp::Budget(Duration::from_secs(10)))
        );
        let forbidden = Failure::runtime("forbidden").permanent();
        assert_eq!(
            p.next(&forbidden, 1, Duration::ZERO, 0.0),
            Err(GiveUp::Permanent)
        );
        let corrupt = Failure::integrity("checksum mismatch");
        assert_eq!(
            p.next(&corrupt, 1, Duration::ZERO, 0.0),
            Err(GiveUp::Permanent)
        );
        assert_eq!(
            p.next(&Failure::refused("in use"), 1, Duration::ZERO, 0.0),
            Err(GiveUp::Permanent)
        );
    }

    #[test]
    fn flag_values_are_checked() {
        assert!(RetryPolicy::new(3, Duration::ZERO, Duration::from_secs(60)).is_err());
        assert!(RetryPolicy::new(0, Duration::ZERO, Duration::from_secs(60)).is_ok());
        assert!(RetryPolicy::new(3, Duration::from_secs(60), Duration::from_millis(10)).is_err());
        assert!(GiveUp::Retries(3).note(4).contains("--retries 3"));
        assert!(GiveUp::Budget(Duration::from_secs(300))
            .note(2)
            .contains("--retry-timeout 5m"));
    }
}
