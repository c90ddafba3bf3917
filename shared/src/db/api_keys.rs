//! API keys: only the SHA-256 of a key is stored.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Hash of a presented key, as stored.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A fresh key: `ck_` + 64 hex characters (256 random bits).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("ck_{}", hex::encode(bytes))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
}

/// Stores a key (by hash). Re-inserting the same key updates its name and scopes.
pub async fn insert(
    pool: &PgPool,
    name: &str,
    key: &str,
    scopes: &[String],
) -> Result<Uuid, sqlx::Error> {
    let prefix: String = key.chars().take(10).collect();
    sqlx::query_scalar(
        "INSERT INTO api_keys (id, name, key_prefix, key_hash, scopes) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (key_hash) DO UPDATE SET name = EXCLUDED.name, scopes = EXCLUDED.scopes, revoked_at = NULL \
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(prefix)
    .bind(hash(key))
    .bind(scopes)
    .fetch_one(pool)
    .await
}

/// The unrevoked key with this secret, if any.
pub async fn find(pool: &PgPool, key: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(key))
    .fetch_optional(pool)
    .await
}
