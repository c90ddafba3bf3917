//! CD keys: the own stock of a product (taken atomically, never twice) and the
//! keys obtained for deliveries. Codes are stored encrypted (`crypto`).

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::crypto::{CryptoError, KeyCipher};
use crate::error::DbError;

fn code_hash(product_id: Uuid, code: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(product_id.as_bytes());
    h.update(code.as_bytes());
    h.finalize().to_vec()
}

/// Adds codes to a product's stock; returns (added, duplicates skipped).
pub async fn add_stock(
    conn: &mut PgConnection,
    cipher: &KeyCipher,
    product_id: Uuid,
    codes: &[String],
) -> Result<(u64, u64), sqlx::Error> {
    let (mut added, mut dup) = (0, 0);
    for code in codes {
        let done = sqlx::query(
            "INSERT INTO key_stock (product_id, code_enc, code_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (product_id, code_hash) DO NOTHING",
        )
        .bind(product_id)
        .bind(cipher.encrypt(code, product_id.as_bytes()))
        .bind(code_hash(product_id, code))
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            added += 1;
        } else {
            dup += 1;
        }
    }
    Ok((added, dup))
}

/// Free codes left for a product.
pub async fn stock_left(conn: &mut PgConnection, product_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM key_stock WHERE product_id = $1 AND taken_by IS NULL")
        .bind(product_id)
        .fetch_one(conn)
        .await
}

/// Takes one free code for `delivery_id`, or returns the one it already took
/// (a redelivered job). `SKIP LOCKED` plus the unique index on `taken_by` mean
/// no two deliveries ever get the same code, however many run at once.
pub async fn take_from_stock(
    conn: &mut PgConnection,
    cipher: &KeyCipher,
    product_id: Uuid,
    delivery_id: Uuid,
) -> Result<Option<(i64, String)>, DbError> {
    let row = sqlx::query("SELECT id, code_enc FROM key_stock WHERE taken_by = $1")
        .bind(delivery_id)
        .fetch_optional(&mut *conn)
        .await?;
    let row = match row {
        Some(r) => Some(r),
        None => {
            sqlx::query(
                "UPDATE key_stock SET taken_by = $2, taken_at = now() WHERE id = ( \
                   SELECT id FROM key_stock WHERE product_id = $1 AND taken_by IS NULL \
                   ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, code_enc",
            )
            .bind(product_id)
            .bind(delivery_id)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(row) = row else { return Ok(None) };
    let enc: Vec<u8> = row.try_get("code_enc")?;
    let code = cipher
        .decrypt(&enc, product_id.as_bytes())
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
    Ok(Some((row.try_get("id")?, code)))
}

/// Where a delivery's key came from.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub source: &'static str,
    pub supplier: Option<String>,
    pub supplier_order_id: Option<String>,
    pub cost: Option<Decimal>,
    pub stock_id: Option<i64>,
}

/// Stores the key a delivery obtained (once: a repeat is a no-op), encrypted
/// and bound to the item.
pub async fn store_item_key(
    conn: &mut PgConnection,
    cipher: &KeyCipher,
    item_id: Uuid,
    delivery_id: Uuid,
    code: &str,
    src: &KeySource,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO item_keys (item_id, delivery_id, code_enc, source, supplier, supplier_order_id, cost, stock_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id) DO NOTHING",
    )
    .bind(item_id)
    .bind(delivery_id)
    .bind(cipher.encrypt(code, item_id.as_bytes()))
    .bind(src.source)
    .bind(&src.supplier)
    .bind(&src.supplier_order_id)
    .bind(src.cost)
    .bind(src.stock_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A redemption code staff gave with an item marked delivered by hand:
/// encrypted and bound to the item like every key, with no delivery.
pub async fn store_manual_code(
    conn: &mut PgConnection,
    cipher: &KeyCipher,
    item_id: Uuid,
    code: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO item_keys (item_id, code_enc, source) VALUES ($1, $2, 'manual')")
        .bind(item_id)
        .bind(cipher.encrypt(code, item_id.as_bytes()))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn has_key(conn: &mut PgConnection, delivery_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM item_keys WHERE delivery_id = $1)")
        .bind(delivery_id)
        .fetch_one(conn)
        .await
}

/// A key as the order API shows it; `code` only for callers allowed to see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: i64,
    pub delivery_id: Option<Uuid>,
    /// The redemption code, or `null` without the `orders:keys` scope.
    pub code: Option<String>,
    pub source: String,
    pub supplier: Option<String>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub cost: Option<Decimal>,
    pub released: bool,
}

/// The keys of an item; decrypted only when `cipher` is given, and only those
/// marked revealed and not released.
pub async fn item_keys(
    conn: &mut PgConnection,
    item_id: Uuid,
    cipher: Option<&KeyCipher>,
) -> Result<Vec<KeyView>, DbError> {
    let rows = sqlx::query("SELECT * FROM item_keys WHERE item_id = $1 ORDER BY id")
        .bind(item_id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            let enc: Vec<u8> = r.try_get("code_enc")?;
            let released: Option<chrono::DateTime<chrono::Utc>> = r.try_get("released_at")?;
            let revealed: Option<chrono::DateTime<chrono::Utc>> = r.try_get("revealed_at")?;
            // Only codes marked revealed (`mark_revealed` first) are shown: a key
            // stored a moment later waits for the next read, and a released
            // code is back in stock for the next buyer.
            let code = cipher
                .filter(|_| released.is_none() && revealed.is_some())
                .map(|c| c.decrypt(&enc, item_id.as_bytes()))
                .transpose()
                .map_err(|e: CryptoError| DbError::Corrupt(e.to_string()))?;
            Ok(KeyView {
                id: r.try_get("id")?,
                delivery_id: r.try_get("delivery_id")?,
                code,
                source: r.try_get("source")?,
                supplier: r.try_get("supplier")?,
                cost: r.try_get("cost")?,
                released: released.is_some(),
            })
        })
        .collect()
}

/// Notes that the order's codes are about to be shown (to a caller with
/// `orders:keys`): from then on a refund cannot take them back. Called before
/// decrypting; the row lock orders it with a concurrent `release`, so a code
/// is either revealed or back in stock, never both.
pub async fn mark_revealed(conn: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    mark_revealed_in(conn, order_id, None).await
}

/// `mark_revealed` for one item of the order (`Some`), or all of them.
pub async fn mark_revealed_in(
    conn: &mut PgConnection,
    order_id: Uuid,
    item: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE item_keys SET revealed_at = now() WHERE id IN ( \
           SELECT k.id FROM item_keys k JOIN order_items i ON i.id = k.item_id \
           WHERE i.order_id = $1 AND ($2::uuid IS NULL OR i.id = $2) \
             AND k.revealed_at IS NULL AND k.released_at IS NULL \
           ORDER BY k.id FOR UPDATE OF k)",
    )
    .bind(order_id)
    .bind(item)
    .execute(conn)
    .await?;
    Ok(())
}

/// Returns a stock key to stock (refunds): the item's key is marked released
/// and the stock code is free again. False if it was not from stock, was
/// already shown to the customer, or was already released.
pub async fn release(conn: &mut PgConnection, item_key_id: i64) -> Result<bool, sqlx::Error> {
    let stock: Option<Option<i64>> = sqlx::query_scalar(
        "UPDATE item_keys SET released_at = now() WHERE id = $1 AND released_at IS NULL AND revealed_at IS NULL \
         AND source = 'stock' RETURNING stock_id",
    )
    .bind(item_key_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(Some(stock_id)) = stock else {
        return Ok(false);
    };
    sqlx::query("UPDATE key_stock SET taken_by = NULL, taken_at = NULL WHERE id = $1")
        .bind(stock_id)
        .execute(conn)
        .await?;
    Ok(true)
}

/// Records an admin alert (once per `dedupe` value among unacknowledged ones).
pub async fn alert(
    conn: &mut PgConnection,
    kind: &str,
    message: &str,
    dedupe: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_alerts (kind, message, data) SELECT $1, $2, $3 \
         WHERE NOT EXISTS (SELECT 1 FROM admin_alerts WHERE kind = $1 AND data->>'dedupe' = $4 AND acknowledged_at IS NULL)",
    )
    .bind(kind)
    .bind(message)
    .bind(json!({ "dedupe": dedupe }))
    .bind(dedupe)
    .execute(conn)
    .await?;
    Ok(())
}
