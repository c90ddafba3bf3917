//! The checks of an order that need no database, and its total.

use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::NewOrder;
use crate::service::Invalid;

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i32 = 10_000;
const MAX_TEXT: usize = 255;
/// Custom fields per item: how many, and the size of each key and value.
const MAX_CUSTOM_FIELDS: usize = 20;
const MAX_CUSTOM_KEY: usize = 64;
const MAX_CUSTOM_VALUE: usize = 1024;

fn text(field: &str, value: &Option<String>) -> Result<(), Invalid> {
    value
        .as_deref()
        .map_or(Ok(()), |v| crate::service::check_text(field, v, MAX_TEXT))
}

pub(super) fn money(field: &str, value: Decimal) -> Result<(), Invalid> {
    if value.is_sign_negative() {
        return Err(Invalid::new(field, "must not be negative"));
    }
    if value.scale() > 4 {
        return Err(Invalid::new(field, "must have at most 4 decimal places"));
    }
    if value > Decimal::from(1_000_000_000) {
        return Err(Invalid::new(field, "is unreasonably large"));
    }
    Ok(())
}

/// Checks everything that does not need the database.
pub fn validate(order: &NewOrder) -> Result<(), Invalid> {
    if order.currency.len() != 3 || !order.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(Invalid::new(
            "currency",
            "must be a three-letter ISO 4217 code in capitals, e.g. USD",
        ));
    }
    money("tax", order.tax)?;
    money("discount", order.discount)?;
    if let Some(paid) = order.amount_paid {
        money("amount_paid", paid)?;
    }
    text("gateway", &order.gateway)?;
    text("transaction_id", &order.transaction_id)?;
    text("customer.name", &order.customer.name)?;
    text("customer.phone", &order.customer.phone)?;
    text("customer.email", &order.customer.email)?;
    text("customer.account_ref", &order.customer.account_ref)?;
    for (field, address) in [
        ("billing_address", &order.billing_address),
        ("shipping_address", &order.shipping_address),
    ] {
        if let Some(a) = address {
            for (part, value) in [
                ("name", &a.name),
                ("line1", &a.line1),
                ("line2", &a.line2),
                ("city", &a.city),
                ("region", &a.region),
                ("postal_code", &a.postal_code),
                ("country", &a.country),
            ] {
                text(&format!("{field}.{part}"), value)?;
            }
        }
    }
    if let Some(email) = &order.customer.email {
        let parts: Vec<&str> = email.split('@').collect();
        if parts.len() != 2 || parts[0].is_empty() || !parts[1].contains('.') {
            return Err(Invalid::new("customer.email", "is not an email address"));
        }
    }
    if let Some(name) = &order.game.username
        && (name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Invalid::new(
            "game.username",
            "must be 1 to 32 letters, digits, '_', '.' or '-'",
        ));
    }
    if let Some(uuid) = &order.game.uuid
        && Uuid::parse_str(uuid).is_err()
    {
        return Err(Invalid::new("game.uuid", "is not a UUID"));
    }
    if let Some(id) = &order.discord_user_id
        && (id.is_empty() || id.len() > 20 || !id.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(Invalid::new(
            "discord_user_id",
            "must be a Discord snowflake (digits)",
        ));
    }
    if order.items.is_empty() {
        return Err(Invalid::new("items", "an order needs at least one item"));
    }
    if order.items.len() > MAX_ITEMS {
        return Err(Invalid::new(
            "items",
            format!("at most {MAX_ITEMS} items per order"),
        ));
    }
    for (i, item) in order.items.iter().enumerate() {
        if item.product.is_empty() || item.product.len() > 64 {
            return Err(Invalid::new(
                format!("items[{i}].product"),
                "must name a product SKU (at most 64 characters)",
            ));
        }
        crate::service::check_text(&format!("items[{i}].product"), &item.product, 64)?;
        if item.custom_fields.len() > MAX_CUSTOM_FIELDS {
            return Err(Invalid::new(
                format!("items[{i}].custom_fields"),
                format!("at most {MAX_CUSTOM_FIELDS} fields"),
            ));
        }
        for (key, value) in &item.custom_fields {
            let field = format!("items[{i}].custom_fields");
            if key.is_empty() || key.chars().count() > MAX_CUSTOM_KEY {
                return Err(Invalid::new(
                    field,
                    format!("keys must be 1 to {MAX_CUSTOM_KEY} characters"),
                ));
            }
            let size = match value {
                Value::String(s) => s.chars().count(),
                other => other.to_string().len(),
            };
            if size > MAX_CUSTOM_VALUE {
                return Err(Invalid::new(
                    format!("{field}.{key}"),
                    format!("must be at most {MAX_CUSTOM_VALUE} characters"),
                ));
            }
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(Invalid::new(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        money(&format!("items[{i}].unit_price"), item.unit_price)?;
    }
    Ok(())
}

impl NewOrder {
    /// Items (unit price × quantity) − discount + tax.
    pub fn total(&self) -> Decimal {
        let items: Decimal = self
            .items
            .iter()
            .map(|i| i.unit_price * Decimal::from(i.quantity))
            .sum();
        items - self.discount + self.tax
    }
}

/// SHA-256 of the request as parsed, so formatting differences do not count as
/// a different body but any change of content does.
pub fn request_hash(order: &NewOrder) -> Vec<u8> {
    let canonical = serde_json::to_vec(order).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}
