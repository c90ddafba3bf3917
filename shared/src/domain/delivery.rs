//! Delivery (one fulfilment action of one item) statuses and the state machine.
//!
//! | status    | moved out of it by |
//! |-----------|--------------------|
//! | queued    | a worker's claim (→ running), an admin discard, a refund or cancel (→ cancelled) |
//! | running   | the worker recording its attempt (→ succeeded, retrying, waiting, dead; → cancelled when the order was withdrawn meanwhile); the rescuer when the lease expired (→ queued, held or cancelled) |
//! | retrying  | a worker's claim when the delay tier hands the message back |
//! | waiting   | a worker's claim on the waiting schedule |
//! | succeeded | nothing (refunds revoke the item, not the delivery) |
//! | dead      | an admin retry (→ queued) or discard (→ cancelled) |
//! | held      | an admin retry (→ queued) or discard (→ cancelled) |
//!
//! A key delivery that is not running can also be completed by an admin who
//! enters the key by hand (→ succeeded).
//! | cancelled | nothing |

use super::order::check;
use super::{IllegalTransition, text_enum};

text_enum!(
    DeliveryStatus, "delivery status" {
        Queued => "queued",
        Running => "running",
        Retrying => "retrying",
        Waiting => "waiting",
        Succeeded => "succeeded",
        Dead => "dead",
        Held => "held",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// What a delivery does; each kind has its own work queue and driver.
    DeliveryKind, "delivery kind" {
        Rcon => "rcon",
        DiscordRole => "discord_role",
        SupplierKey => "supplier_key",
        GatewayRefund => "gateway_refund",
        Webhook => "webhook",
        Email => "email",
        Alert => "alert",
        Download => "download",
    }
);

text_enum!(
    /// Why a delivery row exists: to deliver an item, to take a delivered
    /// item back (refund, cancel, chargeback), to refund at the gateway, or
    /// to tell someone (an outbound webhook).
    Purpose, "delivery purpose" {
        Deliver => "deliver",
        Revoke => "revoke",
        Refund => "refund",
        Notify => "notify",
    }
);

text_enum!(
    /// How one attempt ended.
    AttemptOutcome, "attempt outcome" {
        Succeeded => "succeeded",
        Transient => "transient",
        Permanent => "permanent",
        Waiting => "waiting",
        Abandoned => "abandoned",
    }
);

impl DeliveryKind {
    /// The logical work queue (before the installation's prefix).
    pub fn queue(self) -> &'static str {
        match self {
            DeliveryKind::Rcon => "courier.rcon",
            DeliveryKind::DiscordRole => "courier.discord",
            DeliveryKind::SupplierKey => "courier.supplier",
            DeliveryKind::GatewayRefund => "courier.payment",
            DeliveryKind::Webhook => "courier.webhook",
            DeliveryKind::Email => "courier.email",
            DeliveryKind::Alert => "courier.alert",
            DeliveryKind::Download => "courier.download",
        }
    }
}

impl DeliveryStatus {
    /// The delivery state machine.
    pub fn transition(self, to: DeliveryStatus) -> Result<DeliveryStatus, IllegalTransition> {
        use DeliveryStatus::*;
        let allowed = match self {
            Queued | Retrying | Waiting => matches!(to, Running | Cancelled | Succeeded),
            Running => matches!(
                to,
                Succeeded | Retrying | Waiting | Dead | Queued | Held | Cancelled
            ),
            Dead | Held => matches!(to, Queued | Cancelled | Succeeded),
            Succeeded | Cancelled => false,
        };
        check("delivery", self.as_str(), to.as_str(), allowed).map(|()| to)
    }

    /// Statuses a worker may claim from.
    pub const CLAIMABLE: &'static [DeliveryStatus] = &[
        DeliveryStatus::Queued,
        DeliveryStatus::Retrying,
        DeliveryStatus::Waiting,
    ];

    /// The delivery will not run again without an admin.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Succeeded
                | DeliveryStatus::Dead
                | DeliveryStatus::Held
                | DeliveryStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;
    use super::*;

    #[test]
    fn only_claimable_statuses_go_to_running() {
        for from in DeliveryStatus::ALL {
            let ok = from.transition(Running).is_ok();
            assert_eq!(ok, DeliveryStatus::CLAIMABLE.contains(from), "{from}");
        }
    }

    #[test]
    fn succeeded_and_cancelled_are_terminal() {
        for to in DeliveryStatus::ALL {
            assert!(Succeeded.transition(*to).is_err());
            assert!(Cancelled.transition(*to).is_err());
        }
    }

    #[test]
    fn dead_can_be_retried_discarded_or_completed_by_hand_only() {
        assert!(Dead.transition(Queued).is_ok());
        assert!(Dead.transition(Cancelled).is_ok());
        assert!(Dead.transition(Succeeded).is_ok(), "a key entered by hand");
        assert!(Dead.transition(Running).is_err());
        assert!(Dead.transition(Retrying).is_err());
    }
}
