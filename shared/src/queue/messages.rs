//! The body of a job message. The message only names the delivery: the row in
//! Postgres is the truth, so a stale or duplicated message is harmless.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::delivery::DeliveryKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub delivery_id: Uuid,
    pub kind: DeliveryKind,
}

impl JobMessage {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "delivery_id": self.delivery_id, "kind": self.kind })
    }
}
