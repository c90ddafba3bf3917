//! Amounts in a currency's minor unit (as gateways count them) and the rule
//! that decides whether a payment pays an order.

use rust_decimal::Decimal;

/// Digits after the point in the currency's minor unit (ISO 4217), as Stripe
/// counts amounts.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "JOD", "KWD", "OMR", "TND"];
    let c = currency.to_ascii_uppercase();
    if ZERO.contains(&c.as_str()) {
        0
    } else if THREE.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// `amount` minor units of `currency` as a decimal (1048 USD cents → 10.48).
pub fn from_minor(amount: i64, currency: &str) -> Decimal {
    Decimal::new(amount, minor_unit_exponent(currency))
}

/// The amount in minor units; `None` if it has a fraction of the minor unit.
pub fn to_minor(amount: Decimal, currency: &str) -> Option<i64> {
    let scaled = amount * Decimal::from(10_i64.pow(minor_unit_exponent(currency)));
    if scaled.fract() != Decimal::ZERO {
        return None;
    }
    i64::try_from(scaled).ok()
}

/// What a gateway says it took: minor units and an ISO 4217 code (any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub amount_minor: i64,
    pub currency: String,
}

impl Received {
    pub fn amount(&self) -> Decimal {
        from_minor(self.amount_minor, &self.currency)
    }

    pub fn currency(&self) -> String {
        self.currency.to_ascii_uppercase()
    }
}

/// Why `paid` does not pay an order of `total` in `currency`, or `None` when
/// it does: the currency must be the order's and the amount, in the minor
/// unit, exactly its total — less is underpaid, more is overpaid.
pub fn mismatch(total: Decimal, currency: &str, paid: Option<&Received>) -> Option<String> {
    let Some(paid) = paid else {
        return Some("the payment carries no amount".into());
    };
    if !paid.currency.eq_ignore_ascii_case(currency.trim()) {
        return Some(format!(
            "paid in {} but the order is in {}",
            paid.currency(),
            currency.trim()
        ));
    }
    let Some(expected) = to_minor(total, currency) else {
        return Some(format!(
            "the order's total {total} {} is finer than the currency's minor unit and cannot be paid exactly",
            currency.trim()
        ));
    };
    match Some(expected) {
        Some(e) if e == paid.amount_minor => None,
        Some(e) if paid.amount_minor < e => Some(format!(
            "underpaid: {} {} paid for a total of {total} {}",
            paid.amount(),
            paid.currency(),
            currency.trim()
        )),
        _ => Some(format!(
            "overpaid: {} {} paid for a total of {total} {}",
            paid.amount(),
            paid.currency(),
            currency.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid(amount_minor: i64, currency: &str) -> Received {
        Received {
            amount_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn amounts_follow_the_currency_minor_unit() {
        assert_eq!(from_minor(1048, "usd"), Decimal::new(1048, 2));
        assert_eq!(from_minor(500, "JPY"), Decimal::from(500));
        assert_eq!(to_minor(Decimal::new(1234, 2), "EUR"), Some(1234));
        assert_eq!(
            to_minor(Decimal::new(1234, 3), "EUR"),
            None,
            "no fractions of a cent"
        );
        assert_eq!(to_minor(Decimal::new(1500, 3), "KWD"), Some(1500));
    }

    #[test]
    fn only_the_exact_total_in_the_order_currency_pays_an_order() {
        let total = Decimal::new(999, 2);
        assert_eq!(mismatch(total, "USD", Some(&paid(999, "usd"))), None);
        assert_eq!(
            mismatch(Decimal::new(99900, 4), "USD", Some(&paid(999, "USD"))),
            None
        );
        let under = mismatch(total, "USD", Some(&paid(1, "usd"))).expect("underpaid");
        assert!(under.starts_with("underpaid: 0.01 USD"), "{under}");
        let over = mismatch(total, "USD", Some(&paid(5000, "usd"))).expect("overpaid");
        assert!(over.starts_with("overpaid"), "{over}");
        let other = mismatch(total, "USD", Some(&paid(999, "eur"))).expect("currency");
        assert!(other.contains("EUR"), "{other}");
        assert!(mismatch(total, "USD", None).is_some());
        assert_eq!(
            mismatch(Decimal::from(500), "JPY", Some(&paid(500, "jpy"))),
            None
        );
        assert!(
            mismatch(Decimal::new(10001, 4), "USD", Some(&paid(100, "usd"))).is_some(),
            "a total with a fraction of a cent is never paid exactly"
        );
    }
}
