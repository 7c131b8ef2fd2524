//! Back-off between retries of a push that APNs throttled (429) or failed (5xx, transport).

use std::time::Duration;

use rand::Rng;

/// The first retry waits about this long.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The wait before retry number `attempt` (0 = the first retry): exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with "equal jitter" (a random point in the
/// upper half of the step), so that many pushes throttled together do not retry together.
pub fn backoff(attempt: u32) -> Duration {
    backoff_with(attempt, BACKOFF_BASE, BACKOFF_CAP)
}

/// [`backoff`] with an explicit base and cap.
pub fn backoff_with(attempt: u32, base: Duration, cap: Duration) -> Duration {
    // 2^attempt, saturating well before overflow (2^20 × base is past any sane cap).
    let factor = 1u32 << attempt.min(20);
    let step = base.saturating_mul(factor).min(cap);
    let half = step / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter = if nanos == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=nanos)
    };
    (half + Duration::from_nanos(jitter)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        for attempt in 0..40 {
            let step = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(20))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                let d = backoff(attempt);
                assert!(d >= step / 2, "attempt {attempt}: {d:?} < {:?}", step / 2);
                assert!(d <= step, "attempt {attempt}: {d:?} > {step:?}");
                assert!(d <= BACKOFF_CAP);
            }
        }
        assert!(backoff(0) <= Duration::from_millis(500));
        assert!(backoff(3) >= Duration::from_secs(2));
        assert!(backoff(30) >= BACKOFF_CAP / 2);
    }

    #[test]
    fn jitter_spreads_retries() {
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(4)).collect();
        assert!(samples.len() > 1, "no jitter: {samples:?}");
    }

    #[test]
    fn zero_base_is_zero() {
        assert_eq!(
            backoff_with(5, Duration::ZERO, Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
