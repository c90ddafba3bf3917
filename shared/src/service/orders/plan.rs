//! Every row of an order built in memory, each action rendered; nothing is
//! written until the whole plan holds.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::validate::money;
use super::{CreateOrderError, NewOrder, NewPaymentStatus};
use crate::db::catalog::Product;
use crate::db::deliveries::DeliveryRow;
use crate::db::orders::{ItemRow, ItemSummary, OrderRow, OrderSummary};
use crate::domain::action::{
    ActionConfig, DiscordPayload, DownloadPayload, RconPayload, SupplierKeyPayload,
};
use crate::domain::delivery::Purpose;
use crate::domain::ids;
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::template::Template;
use crate::service::Invalid;
use crate::service::deliverable::AcceptRules;

pub(super) struct Plan {
    pub(super) order: OrderRow,
    pub(super) items: Vec<ItemRow>,
    pub(super) deliveries: Vec<DeliveryRow>,
}

/// How many deliveries `quantity` units of `product` plan: a key product
/// one per unit per key action, any other action one per item.
fn deliveries_of(product: &Product, quantity: i32) -> usize {
    product
        .actions
        .iter()
        .map(|a| match a.config {
            ActionConfig::SupplierKey { .. } => usize::try_from(quantity).unwrap_or(0),
            _ => 1,
        })
        .sum()
}

/// Refuses an order over `api.max_deliveries_per_order`, counted before
/// anything is rendered (so a huge order never builds its rows).
pub(super) fn within_limit(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Result<(), CreateOrderError> {
    let planned = order
        .items
        .iter()
        .filter_map(|i| {
            products
                .get(&i.product)
                .map(|p| deliveries_of(p, i.quantity))
        })
        .sum();
    if planned > rules.max_deliveries {
        return Err(CreateOrderError::TooManyDeliveries {
            planned,
            limit: rules.max_deliveries,
        });
    }
    Ok(())
}

impl Plan {
    /// The plan of an order that waits (`hold`) before its deliveries
    /// start: the order and items only; its deliveries are planned again,
    /// from the products as they are then, when it is processed.
    pub(super) fn held(
        mut self,
        hold: Option<(
            crate::domain::order::ProcessHold,
            Option<chrono::DateTime<chrono::Utc>>,
        )>,
    ) -> Self {
        if let Some((hold, after)) = hold {
            self.deliveries.clear();
            self.order.process_hold = Some(hold);
            self.order.process_after = after;
        }
        self
    }

    /// A paid order accepted with deliveries to run starts `processing`,
    /// and so does each item with one: the first claim then has no status
    /// to write (a status change per order and per item fewer on the hot
    /// path). Deliveries of actions in `held` are parked, not queued; an
    /// order with nothing queued stays `pending`.
    pub(super) fn started(mut self, held: &HashMap<Uuid, String>) -> Self {
        if self.order.payment_status != PaymentStatus::Paid || self.order.process_hold.is_some() {
            return self;
        }
        let queued: std::collections::HashSet<Uuid> = self
            .deliveries
            .iter()
            .filter(|d| d.action_id.is_none_or(|a| !held.contains_key(&a)))
            .filter_map(|d| d.item_id)
            .collect();
        if queued.is_empty() {
            return self;
        }
        self.order.status = OrderStatus::Processing;
        for item in &mut self.items {
            if queued.contains(&item.id) {
                item.delivery_status = crate::domain::order::ItemStatus::Processing;
            }
        }
        self
    }

    pub(super) fn summary(&self) -> OrderSummary {
        let o = &self.order;
        OrderSummary {
            id: o.id,
            order_number: o.order_number.clone(),
            status: o.status,
            payment_status: o.payment_status,
            gateway: o.gateway.clone(),
            transaction_id: o.transaction_id.clone(),
            currency: o.currency.clone(),
            subtotal: o.subtotal,
            discount: o.discount,
            tax: o.tax,
            total: o.total,
            created_at: o.created_at,
            deliveries_queued: self.deliveries.len(),
            process_hold: o.process_hold,
            process_after: o.process_after,
            items: self
                .items
                .iter()
                .map(|i| ItemSummary {
                    id: i.id,
                    position: i.position,
                    product: i.sku.clone(),
                    product_name: i.product_name.clone(),
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                    total: i.total,
                    delivery_status: i.delivery_status,
                    deliveries: i64::try_from(
                        self.deliveries
                            .iter()
                            .filter(|d| d.item_id == Some(i.id))
                            .count(),
                    )
                    .unwrap_or(i64::MAX),
                })
                .collect(),
        }
    }
}

/// Builds every row in memory, rendering each action; fails with the field at
/// fault before anything is written.
///
/// `existing` gives the ids of an order already stored (a pending order being
/// paid): its deliveries are planned with them.
pub(super) fn plan(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    idempotency_key: Option<&str>,
    hash: &[u8],
    existing: Option<(Uuid, String, Vec<Uuid>)>,
) -> Result<Plan, Invalid> {
    let (order_id, order_number, item_ids) = match existing {
        Some((id, number, items)) => (id, number, Some(items)),
        None => (Uuid::new_v4(), ids::new_order_number(), None),
    };
    let paid = order.payment_status == NewPaymentStatus::Paid;
    let mut items = Vec::with_capacity(order.items.len());
    let mut rows = Vec::new();
    let mut subtotal = Decimal::ZERO;
    for (i, item) in order.items.iter().enumerate() {
        let product = products.get(&item.product).ok_or_else(|| {
            Invalid::new(
                format!("items[{i}].product"),
                format!("no product with SKU `{}`", item.product),
            )
        })?;
        let total = item.unit_price * Decimal::from(item.quantity);
        subtotal += total;
        let item_id = item_ids
            .as_ref()
            .and_then(|ids| ids.get(i).copied())
            .unwrap_or_else(Uuid::new_v4);
        items.push(ItemRow {
            id: item_id,
            order_id,
            position: i32::try_from(i).unwrap_or(i32::MAX),
            product_id: product.id,
            sku: product.sku.clone(),
            product_name: product.name.clone(),
            quantity: item.quantity,
            unit_price: item.unit_price,
            total,
            custom_fields: Value::Object(item.custom_fields.clone()),
            delivery_status: crate::domain::order::ItemStatus::Pending,
        });
        for action in &product.actions {
            // A key product delivers one key per unit, each its own delivery.
            let units = match action.config {
                ActionConfig::SupplierKey { .. } => item.quantity,
                _ => 1,
            };
            for _unit in 0..units {
                let delivery_id = Uuid::new_v4();
                let values = HashMap::from([
                    ("username", order.game.username.clone().unwrap_or_default()),
                    ("uuid", order.game.uuid.clone().unwrap_or_default()),
                    ("quantity", item.quantity.to_string()),
                    ("order_number", order_number.clone()),
                    ("order_id", order_id.to_string()),
                    ("email", order.customer.email.clone().unwrap_or_default()),
                    (
                        "discord_user_id",
                        order.discord_user_id.clone().unwrap_or_default(),
                    ),
                    ("sku", product.sku.clone()),
                    ("delivery_id", delivery_id.to_string()),
                ]);
                let (target, payload) = match &action.config {
                    ActionConfig::Rcon {
                        game_server_id,
                        command,
                        on_ambiguous,
                        require_online,
                        revoke_command,
                        chargeback_command,
                    } => {
                        let render = |template: &str| {
                            Template::parse(template)
                                .map_err(|e| {
                                    Invalid::new(
                                        format!("items[{i}].product"),
                                        format!(
                                            "product `{}` has an invalid command: {e}",
                                            product.sku
                                        ),
                                    )
                                })?
                                .render(&values)
                                .map_err(|e| {
                                    let field = match &e {
                                        crate::domain::template::RenderError::Missing {
                                            field,
                                            ..
                                        }
                                        | crate::domain::template::RenderError::Unsafe {
                                            field,
                                            ..
                                        } => *field,
                                    };
                                    let field = if field.starts_with("items[]") {
                                        format!("items[{i}]")
                                    } else {
                                        field.to_owned()
                                    };
                                    Invalid::new(field, e.to_string())
                                })
                        };
                        let payload = RconPayload {
                            game_server_id: *game_server_id,
                            command: render(command)?,
                            on_ambiguous: *on_ambiguous,
                            require_online: if *require_online {
                                let name = order.game.username.clone().ok_or_else(|| {
                                    Invalid::new(
                                        "game.username",
                                        "is required: the product checks the player is online",
                                    )
                                })?;
                                Some(name)
                            } else {
                                None
                            },
                            revoke_command: revoke_command.as_deref().map(render).transpose()?,
                            chargeback_command: chargeback_command
                                .as_deref()
                                .map(render)
                                .transpose()?,
                        };
                        (
                            game_server_id.to_string(),
                            serde_json::to_value(payload).unwrap_or_default(),
                        )
                    }
                    ActionConfig::DiscordRole { guild_id, role_id } => {
                        let user_id = order.discord_user_id.clone().ok_or_else(|| {
                            Invalid::new(
                                "discord_user_id",
                                format!(
                                    "is required: product `{}` gives a Discord role",
                                    product.sku
                                ),
                            )
                        })?;
                        let payload = DiscordPayload {
                            guild_id: guild_id.clone(),
                            role_id: role_id.clone(),
                            user_id,
                            revoke: false,
                        };
                        (
                            guild_id.clone(),
                            serde_json::to_value(payload).unwrap_or_default(),
                        )
                    }
                    ActionConfig::SupplierKey {
                        candidates,
                        low_stock_threshold,
                        ..
                    } => {
                        let payload = SupplierKeyPayload {
                            product_id: product.id,
                            item_id,
                            candidates: candidates.clone(),
                            low_stock_threshold: *low_stock_threshold,
                        };
                        let target = candidates
                            .first()
                            .map_or_else(|| "stock".to_owned(), |c| c.supplier.clone());
                        (target, serde_json::to_value(payload).unwrap_or_default())
                    }
                    ActionConfig::Download {
                        expires_hours,
                        max_downloads,
                    } => {
                        let payload = DownloadPayload {
                            product_id: product.id,
                            item_id,
                            expires_hours: *expires_hours,
                            max_downloads: *max_downloads,
                        };
                        (
                            product.sku.clone(),
                            serde_json::to_value(payload).unwrap_or_default(),
                        )
                    }
                };
                if paid {
                    rows.push(DeliveryRow {
                        id: delivery_id,
                        order_id,
                        item_id: Some(item_id),
                        action_id: Some(action.id),
                        kind: action.config.kind(),
                        purpose: Purpose::Deliver,
                        revokes: None,
                        target,
                        payload,
                    });
                }
            }
        }
    }
    money("subtotal", subtotal)?;
    if order.discount > subtotal {
        return Err(Invalid::new(
            "discount",
            format!("is more than the items' subtotal {subtotal}"),
        ));
    }
    let total = subtotal - order.discount + order.tax;
    // A total finer than the currency's minor unit could never be paid
    // exactly (gateways count in minor units), so no payment would match it.
    if crate::domain::money::to_minor(total, &order.currency).is_none() {
        return Err(Invalid::new(
            "items",
            format!(
                "the order's total {total} {} has more decimal places than {} allows ({}); round the prices",
                order.currency,
                order.currency,
                crate::domain::money::minor_unit_exponent(&order.currency)
            ),
        ));
    }
    Ok(Plan {
        order: OrderRow {
            id: order_id,
            order_number,
            status: OrderStatus::Pending,
            payment_status: if paid {
                PaymentStatus::Paid
            } else {
                PaymentStatus::Pending
            },
            gateway: order.gateway.clone(),
            transaction_id: order.transaction_id.clone(),
            customer_name: order.customer.name.clone(),
            customer_email: order.customer.email.clone(),
            customer_phone: order.customer.phone.clone(),
            customer_ip: order.customer.ip.map(|ip| ip.to_string()),
            game_username: order.game.username.clone(),
            game_uuid: order.game.uuid.clone(),
            discord_user_id: order.discord_user_id.clone(),
            currency: order.currency.clone(),
            subtotal,
            discount: order.discount,
            tax: order.tax,
            total,
            idempotency_key: idempotency_key.map(str::to_owned),
            request_hash: hash.to_vec(),
            created_at: chrono::Utc::now(),
            customer_ref: order.customer.account_ref.clone(),
            billing_address: order
                .billing_address
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok()),
            shipping_address: order
                .shipping_address
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok()),
            process_hold: None,
            process_after: None,
        },
        items,
        deliveries: rows,
    })
}
