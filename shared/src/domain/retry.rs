//! What happens after an attempt: the retry schedule (exponential backoff with
//! jitter), the waiting schedule, and when to give up. Pure, so it is tested
//! here without a broker.
//!
//! Delays travel through RabbitMQ delay tiers: one queue per distinct
//! un-jittered delay of the schedule, with that delay as `x-message-ttl` and
//! the work queue as dead-letter target. A message carries its jittered delay
//! as per-message `expiration` (never above the tier's TTL), so jitter survives
//! the tiers; RabbitMQ expires only at a queue's head, so a message can wait at
//! most the tier's jitter band (20 %) longer than asked.

use chrono::{DateTime, Duration, Utc};

use crate::config::{Schedule, WaitingSchedule};
use crate::domain::delivery::DeliveryKind;
use crate::error::ErrorClass;

/// The lowest jitter factor; delays are scaled by a factor in `[JITTER_MIN, 1.0]`.
pub const JITTER_MIN: f64 = 0.8;

impl Schedule {
    /// The un-jittered delay after the `failures`-th failure (1-based).
    pub fn tier_ms(&self, failures: u32) -> u64 {
        let exp = failures.saturating_sub(1).min(40);
        self.base_delay_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_delay_ms)
    }

    /// Every distinct tier the schedule can use.
    pub fn tiers(&self) -> Vec<u64> {
        let mut tiers: Vec<u64> = (1..self.max_attempts.max(1))
            .map(|n| self.tier_ms(n))
            .collect();
        tiers.dedup();
        tiers
    }
}

/// Logical name of the delay queue for `tier_ms` of `kind`.
pub fn delay_queue(kind: DeliveryKind, tier_ms: u64) -> String {
    format!("{}.delay.{tier_ms}ms", kind.queue())
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Succeeded,
    /// Try again after `delay_ms` through the delay queue of `tier_ms`.
    Retry {
        tier_ms: u64,
        delay_ms: u64,
    },
    /// Check again later, without counting a failure.
    Wait {
        tier_ms: u64,
        delay_ms: u64,
    },
    /// Give up: `reason` is what the admin reads.
    Dead {
        reason: String,
    },
}

/// Decides the next step. `failures` counts this attempt if it failed
/// transiently; `jitter` is a random number in `[0, 1)`.
pub fn next_step(
    class: Option<ErrorClass>,
    error: &str,
    failures: u32,
    (schedule, waiting): (&Schedule, &WaitingSchedule),
    waiting_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    jitter: f64,
) -> NextStep {
    match class {
        None => NextStep::Succeeded,
        Some(ErrorClass::Permanent) => NextStep::Dead {
            reason: format!("permanent failure: {error}"),
        },
        Some(ErrorClass::Transient) if failures >= schedule.max_attempts => NextStep::Dead {
            reason: format!("gave up after {failures} failed attempts; last error: {error}"),
        },
        Some(ErrorClass::Transient) => {
            let tier_ms = schedule.tier_ms(failures);
            NextStep::Retry {
                tier_ms,
                delay_ms: jittered(tier_ms, jitter),
            }
        }
        // Courier's own limit had no room: again after the first tier's delay,
        // whatever the failures so far (the caller does not count this one).
        Some(ErrorClass::Busy) => {
            let tier_ms = schedule.tier_ms(1);
            NextStep::Retry {
                tier_ms,
                delay_ms: jittered(tier_ms, jitter),
            }
        }
        Some(ErrorClass::Waiting) => {
            let since = waiting_since.unwrap_or(now);
            if now - since >= Duration::hours(i64::from(waiting.max_wait_hours)) {
                return NextStep::Dead {
                    reason: format!(
                        "still waiting after {} hours: {error}",
                        waiting.max_wait_hours
                    ),
                };
            }
            NextStep::Wait {
                tier_ms: waiting.interval_ms,
                delay_ms: jittered(waiting.interval_ms, jitter),
            }
        }
    }
}

fn jittered(tier_ms: u64, jitter: f64) -> u64 {
    let factor = JITTER_MIN + (1.0 - JITTER_MIN) * jitter.clamp(0.0, 1.0);
    ((tier_ms as f64) * factor).round().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            max_attempts: 10,
            base_delay_ms: 5_000,
            max_delay_ms: 3_600_000,
        }
    }

    fn waiting() -> WaitingSchedule {
        WaitingSchedule {
            interval_ms: 300_000,
            max_wait_hours: 168,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let s = schedule();
        assert_eq!(s.tier_ms(1), 5_000);
        assert_eq!(s.tier_ms(2), 10_000);
        assert_eq!(s.tier_ms(9), 1_280_000);
        assert_eq!(s.tier_ms(12), 3_600_000);
        assert_eq!(
            s.tiers().len(),
            9,
            "attempts 1..9 retry; the 10th failure is final"
        );
    }

    #[test]
    fn jitter_stays_within_the_tier() {
        let now = Utc::now();
        for j in [0.0, 0.5, 0.999] {
            match next_step(
                Some(ErrorClass::Transient),
                "e",
                3,
                (&schedule(), &waiting()),
                None,
                now,
                j,
            ) {
                NextStep::Retry { tier_ms, delay_ms } => {
                    assert_eq!(tier_ms, 20_000);
                    assert!((16_000..=20_000).contains(&delay_ms), "{delay_ms}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn gives_up_after_max_attempts_and_at_once_on_permanent() {
        let now = Utc::now();
        let dead = next_step(
            Some(ErrorClass::Transient),
            "timeout",
            10,
            (&schedule(), &waiting()),
            None,
            now,
            0.5,
        );
        assert_eq!(
            dead,
            NextStep::Dead {
                reason: "gave up after 10 failed attempts; last error: timeout".into()
            }
        );
        assert!(matches!(
            next_step(
                Some(ErrorClass::Permanent),
                "bad password",
                1,
                (&schedule(), &waiting()),
                None,
                now,
                0.5
            ),
            NextStep::Dead { .. }
        ));
    }

    #[test]
    fn waiting_rechecks_until_its_limit() {
        let now = Utc::now();
        assert!(matches!(
            next_step(
                Some(ErrorClass::Waiting),
                "offline",
                0,
                (&schedule(), &waiting()),
                Some(now - Duration::hours(100)),
                now,
                0.0
            ),
            NextStep::Wait {
                tier_ms: 300_000,
                ..
            }
        ));
        assert!(matches!(
            next_step(
                Some(ErrorClass::Waiting),
                "offline",
                0,
                (&schedule(), &waiting()),
                Some(now - Duration::hours(169)),
                now,
                0.0
            ),
            NextStep::Dead { .. }
        ));
    }
}
