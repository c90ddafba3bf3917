//! Staff notes on an order: never part of what customers or store
//! front-ends read (the order view does not include them). An edit keeps
//! the text it replaces as a revision; a delete hides the note and keeps it
//! (with its history) for the record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::DbError;

/// An earlier text of a note.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Revision {
    pub body: String,
    /// Who wrote this text.
    pub author: String,
    pub written_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Note {
    pub id: i64,
    pub order_id: Uuid,
    pub body: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who wrote the current text, when it was edited.
    pub updated_by: Option<String>,
    /// Earlier texts, oldest first.
    pub revisions: Vec<Revision>,
}

fn note_from_row(r: &sqlx::postgres::PgRow) -> Result<Note, DbError> {
    Ok(Note {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        body: r.try_get("body")?,
        author: r.try_get("author")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        updated_by: r.try_get("updated_by")?,
        revisions: Vec::new(),
    })
}

pub async fn add(
    conn: &mut PgConnection,
    order_id: Uuid,
    body: &str,
    author: &str,
) -> Result<Note, DbError> {
    let row = sqlx::query(
        "INSERT INTO order_notes (order_id, body, author) VALUES ($1, $2, $3) \
         RETURNING id, order_id, body, author, created_at, updated_at, updated_by",
    )
    .bind(order_id)
    .bind(body)
    .bind(author)
    .fetch_one(conn)
    .await?;
    note_from_row(&row)
}

/// The order's notes that are not deleted, oldest first, each with its history.
pub async fn list(conn: &mut PgConnection, order_id: Uuid) -> Result<Vec<Note>, DbError> {
    let rows = sqlx::query(
        "SELECT id, order_id, body, author, created_at, updated_at, updated_by FROM order_notes \
         WHERE order_id = $1 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut notes = rows
        .iter()
        .map(note_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<i64> = notes.iter().map(|n| n.id).collect();
    let revisions = sqlx::query(
        "SELECT note_id, body, author, written_at FROM order_note_revisions \
         WHERE note_id = ANY($1) ORDER BY note_id, id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &revisions {
        let note_id: i64 = r.try_get("note_id")?;
        if let Some(n) = notes.iter_mut().find(|n| n.id == note_id) {
            n.revisions.push(Revision {
                body: r.try_get("body")?,
                author: r.try_get("author")?,
                written_at: r.try_get("written_at")?,
            });
        }
    }
    Ok(notes)
}

/// Replaces a note's text, keeping the old one; `None` when the order has
/// no such note (or it was deleted).
pub async fn edit(
    conn: &mut PgConnection,
    order_id: Uuid,
    note_id: i64,
    body: &str,
    by: &str,
) -> Result<Option<Note>, DbError> {
    let row = sqlx::query(
        "WITH old AS (SELECT id, body, coalesce(updated_by, author) AS author, updated_at \
           FROM order_notes WHERE id = $1 AND order_id = $2 AND deleted_at IS NULL FOR UPDATE), \
         kept AS (INSERT INTO order_note_revisions (note_id, body, author, written_at) \
           SELECT id, body, author, updated_at FROM old) \
         UPDATE order_notes n SET body = $3, updated_by = $4, updated_at = now() FROM old \
         WHERE n.id = old.id \
         RETURNING n.id, n.order_id, n.body, n.author, n.created_at, n.updated_at, n.updated_by",
    )
    .bind(note_id)
    .bind(order_id)
    .bind(body)
    .bind(by)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: i64 = row.try_get("id")?;
    Ok(list(conn, order_id).await?.into_iter().find(|n| n.id == id))
}

/// Hides a note; `false` when the order has no such note.
pub async fn delete(
    conn: &mut PgConnection,
    order_id: Uuid,
    note_id: i64,
    by: &str,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE order_notes SET deleted_at = now(), deleted_by = $3 \
         WHERE id = $1 AND order_id = $2 AND deleted_at IS NULL",
    )
    .bind(note_id)
    .bind(order_id)
    .bind(by)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
