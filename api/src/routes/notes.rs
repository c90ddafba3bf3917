//! Staff notes on an order (`admin`): add, list (with each note's earlier
//! texts), edit, delete. The order's detail carries them for `admin`
//! callers only: API clients and store front-ends never see them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use courier_shared::db::notes::{self, Note};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::ValidJson;
use crate::routes::payments::order_id;
use crate::startup::AppState;

/// A note's text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// 1 to 10,000 characters.
    pub body: String,
}

/// The order's notes, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NoteList {
    pub notes: Vec<Note>,
}

fn body(b: &NoteBody) -> Result<&str, ApiError> {
    let text = b.body.trim();
    if text.is_empty() || text.chars().count() > 10_000 {
        return Err(ApiError::invalid(
            "body",
            "a note has 1 to 10000 characters",
        ));
    }
    Ok(text)
}

#[utoipa::path(post, path = "/v1/orders/{reference}/notes", operation_id = "add_note", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    request_body = NoteBody,
    responses((status = 201, description = "The note, by the caller's key", body = Note)))]
/// Adds a staff note to an order.
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ValidJson(b): ValidJson<NoteBody>,
) -> Result<(StatusCode, Json<Note>), ApiError> {
    caller.require(ADMIN)?;
    let text = body(&b)?;
    let id = order_id(&state, &reference).await?;
    let mut conn = state.pool.acquire().await?;
    let note = notes::add(&mut conn, id, text, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(note)))
}

#[utoipa::path(get, path = "/v1/orders/{reference}/notes", operation_id = "list_notes", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    responses((status = 200, description = "Notes not deleted, oldest first, each with its earlier texts", body = NoteList)))]
/// The order's staff notes.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<NoteList>, ApiError> {
    caller.require(ADMIN)?;
    let id = order_id(&state, &reference).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(NoteList {
        notes: notes::list(&mut conn, id).await?,
    }))
}

#[utoipa::path(patch, path = "/v1/orders/{reference}/notes/{note_id}", operation_id = "edit_note", tag = "orders",
    params(
        ("reference" = String, Path, description = "Order id (UUID) or order number"),
        ("note_id" = i64, Path, description = "The note's id"),
    ),
    request_body = NoteBody,
    responses((status = 200, description = "The note with its new text; the old one is kept as a revision", body = Note)))]
/// Replaces a note's text, keeping the old one.
pub async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((reference, note_id)): ApiPath<(String, i64)>,
    ValidJson(b): ValidJson<NoteBody>,
) -> Result<Json<Note>, ApiError> {
    caller.require(ADMIN)?;
    let text = body(&b)?;
    let id = order_id(&state, &reference).await?;
    let mut tx = state.pool.begin().await?;
    let note = notes::edit(&mut tx, id, note_id, text, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found("note"))?;
    tx.commit().await?;
    Ok(Json(note))
}

#[utoipa::path(delete, path = "/v1/orders/{reference}/notes/{note_id}", operation_id = "delete_note", tag = "orders",
    params(
        ("reference" = String, Path, description = "Order id (UUID) or order number"),
        ("note_id" = i64, Path, description = "The note's id"),
    ),
    responses((status = 204, description = "Hidden from the list; kept with its history")))]
/// Deletes a note (it is kept, hidden, for the record).
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((reference, note_id)): ApiPath<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    caller.require(ADMIN)?;
    let id = order_id(&state, &reference).await?;
    let mut conn = state.pool.acquire().await?;
    if !notes::delete(&mut conn, id, note_id, &caller.actor()).await? {
        return Err(ApiError::not_found("note"));
    }
    Ok(StatusCode::NO_CONTENT)
}
