//! Order, payment and item statuses and which component moves each one.
//!
//! Order: `pending` (accepted, nothing running yet) → `processing` (the first
//! delivery was claimed by a worker) → `completed` (every item delivered), or
//! `failed` once no item can still complete. `refunded`, `partially_refunded`
//! and `cancelled` are set by refunds, chargebacks lost and cancellation; once
//! an order is in one of them, deliveries no longer move its status.

use super::{IllegalTransition, text_enum};

text_enum!(
    /// Where an order is in its life.
    OrderStatus, "order status" {
        Pending => "pending",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
        Refunded => "refunded",
        PartiallyRefunded => "partially_refunded",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// Whether the customer has paid; kept apart from fulfilment.
    /// `mismatched`: a payment arrived that does not pay the order (amount or
    /// currency); it is recorded and nothing is delivered until an admin
    /// accepts it (`paid`) or gives it back (`refunded`).
    PaymentStatus, "payment status" {
        Pending => "pending",
        Paid => "paid",
        Failed => "failed",
        Refunded => "refunded",
        PartiallyRefunded => "partially_refunded",
        Mismatched => "mismatched",
    }
);

text_enum!(
    /// Fulfilment of one order item (all of its deliveries together).
    ItemStatus, "item status" {
        Pending => "pending",
        Processing => "processing",
        Waiting => "waiting",
        Fulfilled => "fulfilled",
        Delivered => "delivered",
        Failed => "failed",
        Revoked => "revoked",
    }
);

text_enum!(
    /// Why a paid order has no deliveries yet: an admin processes it
    /// (`manual`), or it starts at its `process_after` (`delayed`).
    ProcessHold, "process hold" {
        Manual => "manual",
        Delayed => "delayed",
    }
);

impl OrderStatus {
    /// The order state machine.
    pub fn transition(self, to: OrderStatus) -> Result<OrderStatus, IllegalTransition> {
        use OrderStatus::*;
        let allowed = match self {
            // A paid order refunded before any worker claimed its first delivery.
            Pending => matches!(
                to,
                Processing | Completed | Failed | Cancelled | Refunded | PartiallyRefunded
            ),
            Processing => matches!(
                to,
                Completed | Failed | Cancelled | Refunded | PartiallyRefunded
            ),
            // An admin retry of a dead delivery brings a failed order back.
            // Marked completed by staff, or its last item marked delivered.
            Failed => matches!(
                to,
                Processing | Completed | Refunded | PartiallyRefunded | Cancelled
            ),
            Completed => matches!(to, Refunded | PartiallyRefunded | Processing),
            PartiallyRefunded => matches!(to, Refunded),
            Refunded | Cancelled => false,
        };
        check("order", self.as_str(), to.as_str(), allowed).map(|()| to)
    }

    /// No delivery can change this status any more.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Refunded | OrderStatus::Cancelled)
    }

    /// The status is derived from the deliveries (not set by a refund or cancel).
    pub fn follows_deliveries(self) -> bool {
        matches!(
            self,
            OrderStatus::Pending
                | OrderStatus::Processing
                | OrderStatus::Completed
                | OrderStatus::Failed
        )
    }
}

impl PaymentStatus {
    /// The payment state machine. Refunds move between paid, partially
    /// refunded and refunded both ways (a gateway refund that failed gives the
    /// amount back); a failed asynchronous payment can be followed by another.
    pub fn transition(self, to: PaymentStatus) -> Result<PaymentStatus, IllegalTransition> {
        use PaymentStatus::*;
        let allowed = match self {
            Pending => matches!(to, Paid | Failed | Mismatched),
            Failed => matches!(to, Paid | Mismatched),
            // An admin accepts the payment as it is, or it is given back.
            Mismatched => matches!(to, Paid | Refunded),
            // The gateway refused to give back a payment that was never
            // applied: it is the admin's to decide again.
            Refunded => matches!(to, Paid | PartiallyRefunded | Refunded | Mismatched),
            Paid | PartiallyRefunded => {
                matches!(to, Paid | PartiallyRefunded | Refunded)
            }
        };
        check("payment", self.as_str(), to.as_str(), allowed).map(|()| to)
    }
}

impl ItemStatus {
    /// The item state machine.
    pub fn transition(self, to: ItemStatus) -> Result<ItemStatus, IllegalTransition> {
        use ItemStatus::*;
        let allowed = match self {
            // `revoked`: withdrawn by a refund, cancel or chargeback, from any state.
            Pending => matches!(
                to,
                Processing | Waiting | Delivered | Failed | Fulfilled | Revoked
            ),
            Processing => matches!(
                to,
                Waiting | Fulfilled | Delivered | Failed | Pending | Revoked
            ),
            Waiting => matches!(to, Processing | Fulfilled | Delivered | Failed | Revoked),
            Fulfilled => matches!(to, Delivered | Failed | Revoked),
            Failed => matches!(to, Processing | Pending | Fulfilled | Delivered | Revoked),
            Delivered => matches!(to, Revoked),
            Revoked => false,
        };
        check("item", self.as_str(), to.as_str(), allowed).map(|()| to)
    }
}

pub(crate) fn check(
    machine: &'static str,
    from: &'static str,
    to: &'static str,
    allowed: bool,
) -> Result<(), IllegalTransition> {
    if allowed {
        Ok(())
    } else {
        Err(IllegalTransition { machine, from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_happy_path_is_allowed() {
        let s = OrderStatus::Pending;
        let s = s
            .transition(OrderStatus::Processing)
            .expect("pending → processing");
        assert_eq!(
            s.transition(OrderStatus::Completed),
            Ok(OrderStatus::Completed)
        );
    }

    #[test]
    fn terminal_orders_do_not_move() {
        for to in OrderStatus::ALL {
            assert!(OrderStatus::Cancelled.transition(*to).is_err());
            assert!(OrderStatus::Refunded.transition(*to).is_err());
        }
        let err = OrderStatus::Completed
            .transition(OrderStatus::Pending)
            .expect_err("completed → pending");
        assert_eq!(
            err.to_string(),
            "illegal order transition from `completed` to `pending`"
        );
    }

    #[test]
    fn items_never_leave_revoked_and_delivered_only_revokes() {
        for to in ItemStatus::ALL {
            assert!(ItemStatus::Revoked.transition(*to).is_err());
            assert_eq!(
                ItemStatus::Delivered.transition(*to).is_ok(),
                *to == ItemStatus::Revoked
            );
        }
    }

    #[test]
    fn a_payment_is_never_unpaid_again() {
        for to in [PaymentStatus::Pending, PaymentStatus::Failed] {
            assert!(PaymentStatus::Paid.transition(to).is_err());
            assert!(PaymentStatus::Refunded.transition(to).is_err());
        }
        assert!(
            PaymentStatus::Pending
                .transition(PaymentStatus::Refunded)
                .is_err()
        );
        assert!(
            PaymentStatus::Failed
                .transition(PaymentStatus::Paid)
                .is_ok()
        );
        assert!(
            PaymentStatus::Refunded
                .transition(PaymentStatus::Paid)
                .is_ok()
        );
    }

    #[test]
    fn a_mismatched_payment_is_accepted_or_given_back_and_nothing_else() {
        use PaymentStatus::*;
        for from in [Pending, Failed] {
            assert!(from.transition(Mismatched).is_ok());
        }
        for from in [Paid, PartiallyRefunded] {
            assert!(from.transition(Mismatched).is_err(), "{from}");
        }
        for to in PaymentStatus::ALL {
            assert_eq!(
                Mismatched.transition(*to).is_ok(),
                matches!(to, Paid | Refunded),
                "{to}"
            );
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(*s));
        }
        for s in ItemStatus::ALL {
            assert_eq!(s.as_str().parse::<ItemStatus>(), Ok(*s));
        }
        assert!("shipped".parse::<OrderStatus>().is_err());
    }
}
