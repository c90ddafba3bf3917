//! Statuses of the money around an order: refunds, stored gateway events and
//! disputes (the payment status itself is in `order`).

use super::text_enum;

text_enum!(
    /// Why money goes back (the list admins pick from).
    RefundReason, "refund reason" {
        RequestedByCustomer => "requested_by_customer",
        Duplicate => "duplicate",
        Fraudulent => "fraudulent",
        NotAsDescribed => "not_as_described",
        Other => "other",
    }
);

text_enum!(
    /// Where a refund stands: `pending` (Courier asked the gateway, no answer
    /// yet), `succeeded`, `failed` (the gateway refused; refundable again), or
    /// `recorded` (the money moves outside Courier).
    RefundStatus, "refund status" {
        Pending => "pending",
        Succeeded => "succeeded",
        Failed => "failed",
        Recorded => "recorded",
    }
);

text_enum!(
    /// Who made a refund: through Courier's API, or at the gateway (seen in a webhook).
    RefundSource, "refund source" {
        Api => "api",
        Gateway => "gateway",
    }
);

text_enum!(
    /// A stored gateway event: `received` (being applied), `applied`,
    /// `pending` (kept until its payment arrives), `ignored` (nothing to do)
    /// or `failed` (verified but unusable; an admin alert says why).
    EventStatus, "payment event status" {
        Received => "received",
        Applied => "applied",
        Pending => "pending",
        Ignored => "ignored",
        Failed => "failed",
    }
);

text_enum!(
    /// How a closed dispute ended. Stripe has no "accepted" status: accepting
    /// closes it `lost` with no evidence submitted, told apart by time.
    DisputeOutcome, "dispute outcome" {
        Won => "won",
        Lost => "lost",
        Accepted => "accepted",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for s in RefundStatus::ALL {
            assert_eq!(s.as_str().parse::<RefundStatus>(), Ok(*s));
        }
        for s in EventStatus::ALL {
            assert_eq!(s.as_str().parse::<EventStatus>(), Ok(*s));
        }
        for s in DisputeOutcome::ALL {
            assert_eq!(s.as_str().parse::<DisputeOutcome>(), Ok(*s));
        }
        assert!("maybe".parse::<RefundSource>().is_err());
    }
}
