//! The one attempt loop of every command that works in helper pods (create, restore, drill):
//! run an attempt, and after a failure ask [`RetryPolicy::next`] whether and when to try again,
//! recording every attempt and telling the user on the run's progress channel
//! ([`crate::progress::Bar`]). What an attempt does, and what it cleans up first, is the
//! engine's business.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::exit::Failure;
use crate::progress::Bar;
use crate::retry::{jitter, AttemptRecord, GiveUp, RetryPolicy};

/// Every attempt, and the final result.
pub struct Attempted<T> {
    pub result: Result<T, Failure>,
    pub log: Vec<AttemptRecord>,
}

/// Runs `attempt(1)`, `attempt(2)`, … until one succeeds or `policy` says stop. A failure's
/// final message carries the reason no further attempt was made (`GiveUp::note`). Retries are
/// announced on `bar` as `attempt N failed: …; retrying in …s`; a later attempt that succeeds
/// as `attempt N succeeded`.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    bar: &Bar,
    mut attempt: F,
) -> Attempted<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut log = Vec::new();
    let mut first_failure: Option<Instant> = None;
    for number in 1u32.. {
        let began = Instant::now();
        let outcome = attempt(number).await;
        let seconds = began.elapsed().as_secs_f64();
        let f = match outcome {
            Ok(v) => {
                log.push(AttemptRecord {
                    attempt: number,
                    outcome: "ok",
                    error: None,
                    seconds,
                    retry_after_seconds: None,
                });
                if number > 1 {
                    bar.event(&format!("attempt {number} succeeded"));
                }
                return Attempted { result: Ok(v), log };
            }
            Err(f) => f,
        };
        let since = first_failure.get_or_insert_with(Instant::now).elapsed();
        let next = policy.next(&f, number, since, jitter());
        log.push(AttemptRecord {
            attempt: number,
            outcome: "failed",
            error: Some(f.message.clone()),
            seconds,
            retry_after_seconds: next.as_ref().ok().map(Duration::as_secs_f64),
        });
        match next {
            Ok(wait) => {
                bar.event(&format!(
                    "attempt {number} failed: {}; retrying in {:.1}s",
                    f.message,
                    wait.as_secs_f64()
                ));
                tokio::time::sleep(wait).await;
            }
            Err(give_up) => {
                if number > 1 || give_up != GiveUp::Permanent {
                    bar.event(&format!("attempt {number} failed: {}", f.message));
                }
                return Attempted {
                    result: Err(Failure {
                        message: format!("{}{}", f.message, give_up.note(number)),
                        ..f
                    }),
                    log,
                };
            }
        }
    }
    unreachable!("the attempt counter is unbounded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32) -> RetryPolicy {
        let mut p =
            RetryPolicy::new(retries, Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        p.base = Duration::from_millis(1);
        p.cap = Duration::from_millis(2);
        p
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success_and_logged() {
        let bar = crate::progress::Progress::new(false).bar("ns/pvc");
        let mut calls = Vec::new();
        let done = with_retries(&policy(3), &bar, |n| {
            calls.push(n);
            async move {
                if n < 3 {
                    Err(Failure::runtime(format!("reset {n}")))
                } else {
                    Ok(n * 10)
                }
            }
        })
        .await;
        assert_eq!(done.result.unwrap(), 30);
        assert_eq!(calls, [1, 2, 3]);
        let outcomes: Vec<_> = done.log.iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, ["failed", "failed", "ok"]);
        assert_eq!(done.log[0].error.as_deref(), Some("reset 1"));
        assert!(done.log[0].retry_after_seconds.is_some());
    }

    #[tokio::test]
    async fn permanent_failures_and_exhausted_retries_stop_with_a_note() {
        let bar = crate::progress::Progress::new(false).bar("ns/pvc");
        let done = with_retries(&policy(5), &bar, |_| async {
            Err::<(), _>(Failure::integrity("checksum mismatch"))
        })
        .await;
        assert_eq!(done.log.len(), 1);
        assert_eq!(done.result.unwrap_err().message, "checksum mismatch");
        let done = with_retries(&policy(1), &bar, |_| async {
            Err::<(), _>(Failure::runtime("reset"))
        })
        .await;
        assert_eq!(done.log.len(), 2);
        let f = done.result.unwrap_err();
        assert!(f.message.contains("--retries 1"), "{}", f.message);
        assert_eq!(done.log[1].retry_after_seconds, None);
    }
}
