//! How an item's status follows from its deliveries, and an order's from its items.

use super::IllegalTransition;
use super::delivery::DeliveryStatus;
use super::order::{ItemStatus, OrderStatus};

/// Whether an item at `from` moves to `to`: `None` when it stays (already
/// there, or revoked — what its deliveries do after a withdrawal no longer
/// moves it), an error when the state machine forbids the move.
pub fn item_move(
    from: ItemStatus,
    to: ItemStatus,
) -> Result<Option<ItemStatus>, IllegalTransition> {
    // A delivered item — by its deliveries or marked by staff — is not moved
    // back by what its deliveries do later (a delivery left running when
    // staff marked it); only a withdrawal revokes it.
    if from == to
        || from == ItemStatus::Revoked
        || (from == ItemStatus::Delivered && to != ItemStatus::Revoked)
    {
        return Ok(None);
    }
    from.transition(to).map(Some)
}

/// The status an item takes when its deliveries say `to`. A key item passes
/// through `fulfilled` (key obtained) on its way to `delivered` (key available
/// to the customer): both steps are checked, the final one is written.
pub fn item_rollup(
    from: ItemStatus,
    to: ItemStatus,
    has_keys: bool,
) -> Result<Option<ItemStatus>, IllegalTransition> {
    if to == ItemStatus::Delivered
        && has_keys
        && !matches!(
            from,
            ItemStatus::Delivered | ItemStatus::Fulfilled | ItemStatus::Revoked
        )
    {
        from.transition(ItemStatus::Fulfilled)?;
        return item_move(ItemStatus::Fulfilled, to).map(|_| Some(to));
    }
    item_move(from, to)
}

/// Whether an order at `from` moves to `to` because of delivery progress:
/// `None` when it stays — already there, final (refunded, cancelled), or set
/// by a refund (partially refunded is not moved back by a delivery).
pub fn order_move(
    from: OrderStatus,
    to: OrderStatus,
) -> Result<Option<OrderStatus>, IllegalTransition> {
    if from == to || from.is_final() || (!from.follows_deliveries() && to.follows_deliveries()) {
        return Ok(None);
    }
    from.transition(to).map(Some)
}

/// The item status implied by the statuses of all its deliveries.
pub fn item_status(deliveries: &[DeliveryStatus]) -> ItemStatus {
    use DeliveryStatus::*;
    // No deliveries (a product fulfilled by hand): nothing says it is done.
    if deliveries.is_empty() {
        return ItemStatus::Pending;
    }
    if deliveries.iter().all(|d| *d == Succeeded) {
        ItemStatus::Delivered
    } else if deliveries
        .iter()
        .any(|d| matches!(d, Queued | Running | Retrying | Held))
    {
        ItemStatus::Processing
    } else if deliveries.contains(&Waiting) {
        ItemStatus::Waiting
    } else {
        // Only succeeded, dead and cancelled remain: nothing will run by itself.
        ItemStatus::Failed
    }
}

/// The status of a key item whose codes are e-mailed: `fulfilled` while its
/// key deliveries are done and the e-mail is not yet accepted by the SMTP
/// server, `delivered` once it is, `failed` when the e-mail is dead (or was
/// cancelled). Until the keys are all in, the key deliveries decide.
pub fn key_item_status(keys: &[DeliveryStatus], email: DeliveryStatus) -> ItemStatus {
    let by_keys = item_status(keys);
    if by_keys != ItemStatus::Delivered {
        return by_keys;
    }
    match email {
        DeliveryStatus::Succeeded => ItemStatus::Delivered,
        DeliveryStatus::Dead | DeliveryStatus::Cancelled => ItemStatus::Failed,
        _ => ItemStatus::Fulfilled,
    }
}

/// The order status implied by its items, or `None` when the items say nothing
/// new (an untouched pending order stays pending until a worker claims work).
pub fn order_status(items: &[ItemStatus]) -> Option<OrderStatus> {
    use ItemStatus::*;
    if items.is_empty() {
        return None;
    }
    if items.iter().all(|i| matches!(i, Delivered)) {
        Some(OrderStatus::Completed)
    } else if items
        .iter()
        .any(|i| matches!(i, Processing | Waiting | Fulfilled))
    {
        Some(OrderStatus::Processing)
    } else if items.iter().any(|i| matches!(i, Pending)) {
        None
    } else {
        Some(OrderStatus::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus as D;
    use ItemStatus as I;

    #[test]
    fn a_key_item_is_fulfilled_until_its_email_is_accepted() {
        let keys = [D::Succeeded, D::Succeeded];
        assert_eq!(key_item_status(&keys, D::Queued), I::Fulfilled);
        assert_eq!(key_item_status(&keys, D::Retrying), I::Fulfilled);
        assert_eq!(key_item_status(&keys, D::Succeeded), I::Delivered);
        assert_eq!(key_item_status(&keys, D::Dead), I::Failed);
        assert_eq!(
            key_item_status(&[D::Succeeded, D::Running], D::Queued),
            I::Processing
        );
        assert_eq!(
            order_status(&[I::Fulfilled, I::Delivered]),
            Some(OrderStatus::Processing)
        );
    }

    #[test]
    fn item_is_delivered_only_when_every_delivery_succeeded() {
        assert_eq!(item_status(&[D::Succeeded, D::Succeeded]), I::Delivered);
        assert_eq!(item_status(&[D::Succeeded, D::Running]), I::Processing);
        assert_eq!(item_status(&[D::Succeeded, D::Waiting]), I::Waiting);
        assert_eq!(item_status(&[D::Succeeded, D::Dead]), I::Failed);
        assert_eq!(item_status(&[D::Dead, D::Retrying]), I::Processing);
        assert_eq!(item_status(&[D::Held]), I::Processing);
    }

    #[test]
    fn order_completes_when_all_items_delivered_and_fails_when_none_can_complete() {
        assert_eq!(
            order_status(&[I::Delivered, I::Delivered]),
            Some(OrderStatus::Completed)
        );
        assert_eq!(
            order_status(&[I::Delivered, I::Processing]),
            Some(OrderStatus::Processing)
        );
        assert_eq!(
            order_status(&[I::Failed, I::Waiting]),
            Some(OrderStatus::Processing)
        );
        assert_eq!(
            order_status(&[I::Failed, I::Delivered]),
            Some(OrderStatus::Failed)
        );
        assert_eq!(order_status(&[I::Pending, I::Pending]), None);
    }

    #[test]
    fn moves_skip_what_stays_and_refuse_what_the_machine_forbids() {
        assert_eq!(
            item_move(I::Pending, I::Processing),
            Ok(Some(I::Processing))
        );
        assert_eq!(item_move(I::Processing, I::Processing), Ok(None));
        assert_eq!(
            item_move(I::Revoked, I::Processing),
            Ok(None),
            "revoked stays"
        );
        assert_eq!(
            item_move(I::Delivered, I::Failed),
            Ok(None),
            "delivered stays"
        );
        assert_eq!(item_move(I::Delivered, I::Revoked), Ok(Some(I::Revoked)));
        assert!(item_move(I::Fulfilled, I::Processing).is_err());
        // A key item passes `fulfilled`; the final status is what is written.
        assert_eq!(
            item_rollup(I::Processing, I::Delivered, true),
            Ok(Some(I::Delivered))
        );
        assert_eq!(
            item_rollup(I::Fulfilled, I::Delivered, true),
            Ok(Some(I::Delivered))
        );
        assert_eq!(item_rollup(I::Revoked, I::Delivered, true), Ok(None));
        use OrderStatus as O;
        assert_eq!(
            order_move(O::Pending, O::Processing),
            Ok(Some(O::Processing))
        );
        assert_eq!(order_move(O::Refunded, O::Processing), Ok(None), "final");
        assert_eq!(
            order_move(O::PartiallyRefunded, O::Completed),
            Ok(None),
            "a refund's status is not moved back by deliveries"
        );
        assert!(order_move(O::Completed, O::Failed).is_err());
    }
}
