//! When to try a request again, and how long to wait first.
//!
//! KDS limits how often one client may ask. It answers `429 Too Many
//! Requests` (or `503 Service Unavailable`) when asked too often, usually
//! with a `Retry-After` header: a number of seconds, or an HTTP date
//! (RFC 9110 §10.2.3). Those answers, other 5xx answers and transport
//! failures (timeouts, refused connections) are retried:
//!
//! * after `Retry-After` when given (plus up to 10 % jitter, at most 1 s);
//! * otherwise after a bounded exponential backoff with jitter: attempt
//!   `n` waits a random time between half of and all of
//!   `min(base · 2ⁿ⁻¹, max_delay)`;
//!
//! until `max_attempts` requests were made or the next wait would take the
//! total past `max_total_wait` (which the waits for this host's turn in the
//! request pacing count against too, see [`crate::client`]). A `Retry-After` longer than what is left
//! of the budget ends the retries at once: the error then says when KDS
//! will answer again.

use std::time::{Duration, SystemTime};

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests made for one document at most (the first one included).
    pub max_attempts: u32,
    /// Backoff before the first retry (when KDS gives no `Retry-After`).
    pub base_delay: Duration,
    /// Longest backoff between two attempts.
    pub max_delay: Duration,
    /// Longest total time spent waiting for one document: pacing turns,
    /// `Retry-After` and backoff together.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_total_wait: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (1 for the first retry),
    /// jittered.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let full = self
            .base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let half = full / 2;
        half + random_up_to(full - half)
    }
}

/// A uniformly random duration in `[0, max]`.
fn random_up_to(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// A `Retry-After` wait with a little jitter added (up to 10 %, at most
/// 1 s), so that clients told the same time do not all come back at once.
pub fn jittered(wait: Duration) -> Duration {
    wait.saturating_add(random_up_to((wait / 10).min(Duration::from_secs(1))))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date, which is
/// turned into a wait from `now` (zero if it has passed). `None` if it is
/// neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        // The obsolete RFC 850 form is accepted too.
        assert!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now).is_some());
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_grows_is_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total_wait: Duration::from_secs(10),
        };
        for attempt in 1..=40 {
            let full = (Duration::from_millis(100) * 2u32.saturating_pow(attempt - 1).min(1 << 20))
                .min(Duration::from_millis(1000));
            for _ in 0..20 {
                let d = policy.backoff(attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| policy.backoff(5)).collect();
        assert!(distinct.len() > 1, "no jitter");
    }

    #[test]
    fn jitter_is_small() {
        for _ in 0..50 {
            let d = jittered(Duration::from_secs(1));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_millis(1100));
            let d = jittered(Duration::from_secs(120));
            assert!(d <= Duration::from_secs(121));
            // A hostile Retry-After cannot overflow it.
            assert!(jittered(Duration::MAX) == Duration::MAX);
        }
    }
}
