//! Public identifiers: order numbers (`ORD-` + 10 characters).

use rand::Rng;

/// Crockford's base32 alphabet: no I, L, O or U, so numbers read aloud or typed survive.
const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A fresh random order number; uniqueness is enforced by the database, and the
/// caller retries on the (1 in 10^15) collision.
pub fn new_order_number() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(14);
    s.push_str("ORD-");
    for _ in 0..10 {
        s.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    s
}

/// Whether `s` has the shape of an order number (used to route `GET /v1/orders/{ref}`).
pub fn looks_like_order_number(s: &str) -> bool {
    s.len() == 14 && s.starts_with("ORD-") && s.bytes().skip(4).all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_numbers_have_the_documented_shape() {
        for _ in 0..1000 {
            let n = new_order_number();
            assert!(looks_like_order_number(&n), "{n}");
        }
        assert!(!looks_like_order_number("ORD-12345"));
        assert!(!looks_like_order_number("ORD-IIIIIIIIII"));
    }
}
