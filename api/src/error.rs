//! One error shape for every failure: `{"error": {"code", "message", "field"?}}`.
//! Known failures map to a status and a stable `code`; anything unexpected is
//! logged with its cause and answered with an opaque 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_shared::error::DbError;
use courier_shared::service::Invalid;
use courier_shared::service::catalog::CatalogError;
use courier_shared::service::orders::CreateOrderError;
use courier_shared::service::payments::PaymentError;
use serde::Serialize;
use utoipa::ToSchema;

/// The one error shape: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `validation_failed`, `not_found`,
    /// `unauthorized`, `forbidden`, `idempotency_key_reused`, … (docs/api.md lists them).
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// The body field, parameter or header at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// `422 validation_failed` naming the field (or parameter) at fault.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        courier_shared::service::Invalid::new(field, message).into()
    }

    /// Names the field (or parameter) at fault.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// A path segment that is neither an order id nor an order number.
    pub fn invalid_reference() -> Self {
        ApiError {
            field: Some("reference".into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_reference",
                "expected an order id (UUID) or an order number (ORD-XXXXXXXXXX)",
            )
        }
    }

    /// Logs `cause` and hides it from the caller.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is not reachable; try again",
            );
        }
        ApiError::internal(&e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<CreateOrderError> for ApiError {
    fn from(e: CreateOrderError) -> Self {
        match e {
            CreateOrderError::Invalid(i) => i.into(),
            CreateOrderError::NotDeliverable(i) => ApiError {
                code: "not_deliverable",
                ..i.into()
            },
            e @ CreateOrderError::TooManyDeliveries { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_deliveries",
                e.to_string(),
            )
            .with_field("items"),
            CreateOrderError::IdempotencyConflict => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            ),
            CreateOrderError::Db(e) => e.into(),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(i) => i.into(),
            CatalogError::NotDeliverable(i) => ApiError {
                code: "not_deliverable",
                ..i.into()
            },
            CatalogError::Db(e) => e.into(),
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        let message = e.to_string();
        match e {
            PaymentError::Invalid(i) => i.into(),
            PaymentError::NotFound => ApiError::not_found("order"),
            PaymentError::NotPaid(_) => {
                ApiError::new(StatusCode::CONFLICT, "order_not_paid", message)
            }
            PaymentError::AlreadyRefunded => {
                ApiError::new(StatusCode::CONFLICT, "already_refunded", message)
            }
            PaymentError::ExceedsRemaining { .. } => ApiError {
                field: Some("amount".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "refund_exceeds_remaining",
                    message,
                )
            },
            PaymentError::IdempotencyConflict => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
            }
            PaymentError::NotCancellable(_) => {
                ApiError::new(StatusCode::CONFLICT, "order_not_cancellable", message)
            }
            PaymentError::OrderClosed(_) => {
                ApiError::new(StatusCode::CONFLICT, "order_closed", message)
            }
            PaymentError::NoMismatchedPayment(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_mismatched_payment", message)
            }
            PaymentError::Db(e) => e.into(),
        }
    }
}
