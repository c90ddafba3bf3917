//! What an attempt's outcome means for its delivery: the retry, wait, dead
//! and on-ambiguous policy as pure functions (no I/O), used by the worker
//! and the rescuer alike. `service::fulfilment` writes what they decide.

use crate::db::deliveries::{AttemptRecord, Claimed};
use crate::domain::action::OnAmbiguous;
use crate::domain::delivery::{AttemptOutcome, DeliveryKind, DeliveryStatus};
use crate::domain::retry::{NextStep, delay_queue, next_step};
use crate::error::ErrorClass;

/// How one run of a driver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverOutcome {
    Succeeded {
        response: String,
    },
    Failed {
        class: ErrorClass,
        error: String,
        response: Option<String>,
        /// The action may have happened despite the error (RCON: the command was written).
        maybe_sent: bool,
    },
}

impl DriverOutcome {
    pub fn permanent(error: impl Into<String>) -> Self {
        DriverOutcome::Failed {
            class: ErrorClass::Permanent,
            error: error.into(),
            response: None,
            maybe_sent: false,
        }
    }
}

/// Whether a delivery whose action may already have happened (an RCON
/// command sent before an error, or a worker that died mid-command) runs
/// again: only with `on_ambiguous = retry` and budget left; otherwise it is
/// held for an admin.
pub fn runs_again(policy: OnAmbiguous, budget_left: bool) -> bool {
    policy == OnAmbiguous::Retry && budget_left
}

/// Turns a driver outcome into the delivery's next status (see `domain::retry`).
pub fn decide(
    outcome: &DriverOutcome,
    claimed: &Claimed,
    policy: (&crate::config::Schedule, &crate::config::WaitingSchedule),
    jitter: f64,
) -> AttemptRecord {
    let (class, error, response, maybe_sent) = match outcome {
        DriverOutcome::Succeeded { response } => {
            (None, String::new(), Some(response.clone()), false)
        }
        DriverOutcome::Failed {
            class,
            error,
            response,
            maybe_sent,
        } => (Some(*class), error.clone(), response.clone(), *maybe_sent),
    };
    let failed = class == Some(ErrorClass::Transient);
    let failures = u32::try_from(claimed.failures).unwrap_or(0) + u32::from(failed);
    let error = if maybe_sent {
        format!("{error} (the command may have reached the server)")
    } else {
        error
    };
    let step = next_step(
        class,
        &error,
        failures,
        policy,
        claimed.waiting_since,
        chrono::Utc::now(),
        jitter,
    );
    let outcome = match class {
        None => AttemptOutcome::Succeeded,
        Some(ErrorClass::Transient) => AttemptOutcome::Transient,
        Some(ErrorClass::Permanent) => AttemptOutcome::Permanent,
        // Recorded as a wait: not a failure, the budget is untouched.
        Some(ErrorClass::Waiting | ErrorClass::Busy) => AttemptOutcome::Waiting,
    };
    let error = class.map(|_| error);
    let (next, requeue, dead_reason) = match step {
        NextStep::Succeeded => (DeliveryStatus::Succeeded, None, None),
        NextStep::Retry { tier_ms, delay_ms } => (
            DeliveryStatus::Retrying,
            Some((delay_queue(claimed.kind, tier_ms), delay_ms)),
            None,
        ),
        NextStep::Wait { tier_ms, delay_ms } => (
            DeliveryStatus::Waiting,
            Some((delay_queue(claimed.kind, tier_ms), delay_ms)),
            None,
        ),
        NextStep::Dead { reason } => (DeliveryStatus::Dead, None, Some(reason)),
    };
    // An RCON command that may have reached the server is ambiguous: retrying
    // could run it twice, so the action's `on_ambiguous` decides (hold by
    // default), exactly as for a worker that died mid-command. Whatever the
    // attempt number, it is never `dead` — a bulk retry of dead letters must
    // not run it again: with `retry`, an ambiguous attempt that exhausted the
    // budget is held too.
    let ambiguous = maybe_sent
        && claimed.kind == DeliveryKind::Rcon
        && matches!(next, DeliveryStatus::Retrying | DeliveryStatus::Dead);
    let policy =
        serde_json::from_value::<crate::domain::action::RconPayload>(claimed.payload.clone())
            .map_or(OnAmbiguous::Hold, |p| p.on_ambiguous);
    let retry_ambiguous = policy == OnAmbiguous::Retry;
    let hold = ambiguous && !runs_again(policy, next == DeliveryStatus::Retrying);
    let (next, requeue, dead_reason) = if hold {
        let why = if retry_ambiguous {
            "the retry budget is spent (on_ambiguous = retry)"
        } else {
            "on_ambiguous = hold"
        };
        (
            DeliveryStatus::Held,
            None,
            Some(format!(
                "ambiguous: {}; held for an admin ({why})",
                error.clone().unwrap_or_default()
            )),
        )
    } else {
        (next, requeue, dead_reason)
    };
    // Whatever a server answered is kept, in a form Postgres can store (a NUL
    // would make the record fail, and the attempt be re-run after its lease).
    let keep = |s: Option<String>| s.map(|s| crate::domain::storable(&s).into_owned());
    AttemptRecord {
        outcome,
        next,
        error: keep(error),
        response: keep(response),
        failed,
        requeue,
        dead_reason: keep(dead_reason),
        ambiguous: maybe_sent && claimed.kind == DeliveryKind::Rcon && class.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ambiguous_action_runs_again_only_when_asked_and_with_budget() {
        assert!(runs_again(OnAmbiguous::Retry, true));
        assert!(!runs_again(OnAmbiguous::Retry, false));
        assert!(!runs_again(OnAmbiguous::Hold, true));
    }
}
