//! The Stripe objects Courier reads, as typed structs (only the fields it
//! uses; Stripe sends many more). Amounts are integers in the currency's
//! minor unit, as Stripe sends them; a field of the wrong type makes the
//! object unusable, and the event is stored `failed` with the field named.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::money::Received;

/// An event envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: StripeData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StripeData {
    /// Read as the type the event's kind says (`object::<CheckoutSession>()`).
    pub object: Value,
}

/// Reads `object` as `T`, naming the field at fault when it does not fit.
pub fn object<T: DeserializeOwned>(object: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        format!(
            "the event's object does not fit ({}: {})",
            e.path(),
            e.inner()
        )
    })
}

/// Metadata: strings set by the store's checkout code.
pub type Metadata = BTreeMap<String, String>;

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// What any object carries that names the payment and the order it is about.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Refs {
    pub object: Option<String>,
    pub id: Option<String>,
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

impl Refs {
    pub fn from_object(object: &Value) -> Refs {
        // Read from the borrowed value: no copy of the whole object.
        Refs::deserialize(object).unwrap_or_default()
    }

    pub fn payment_intent(&self) -> Option<&str> {
        nonempty(&self.payment_intent)
    }

    pub fn order_id(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("order_id"))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The Checkout Session's own id, when the object is one.
    pub fn session_id(&self) -> Option<&str> {
        (self.object.as_deref() == Some("checkout.session"))
            .then(|| nonempty(&self.id))
            .flatten()
    }

    /// The payment the object belongs to: its PaymentIntent, else the order
    /// named in its metadata. Events about one payment are serialised on it.
    pub fn payment_ref(&self) -> Option<&str> {
        self.payment_intent().or_else(|| self.order_id())
    }
}

/// A Checkout Session.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub payment_status: Option<String>,
    pub payment_intent: Option<String>,
    pub currency: Option<String>,
    pub amount_subtotal: Option<i64>,
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub total_details: Option<TotalDetails>,
    #[serde(default)]
    pub customer_details: Option<CustomerDetails>,
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TotalDetails {
    pub amount_tax: Option<i64>,
    pub amount_discount: Option<i64>,
    pub amount_shipping: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CustomerDetails {
    pub name: Option<String>,
    pub email: Option<String>,
}

impl CheckoutSession {
    pub fn payment_intent(&self) -> Option<&str> {
        nonempty(&self.payment_intent)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// What the customer paid, as Stripe says: `amount_total` in `currency`.
    pub fn received(&self) -> Option<Received> {
        Some(Received {
            amount_minor: self.amount_total?,
            currency: nonempty(&self.currency)?.to_owned(),
        })
    }

    pub fn totals(&self) -> TotalDetails {
        self.total_details.clone().unwrap_or_default()
    }
}

/// A Charge (in `charge.refunded`).
#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub currency: Option<String>,
    /// Cumulative: every refund of the charge so far.
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default)]
    pub refunds: Option<RefundList>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RefundList {
    #[serde(default)]
    pub data: Vec<Refund>,
}

/// A Refund as listed on its charge.
#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

impl Charge {
    pub fn refunds(&self) -> &[Refund] {
        self.refunds.as_ref().map_or(&[], |l| l.data.as_slice())
    }
}

/// A Dispute.
#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub reason: Option<String>,
    pub status: Option<String>,
    #[serde(default)]
    pub evidence_details: Option<EvidenceDetails>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EvidenceDetails {
    pub due_by: Option<i64>,
    pub submission_count: Option<i64>,
}
