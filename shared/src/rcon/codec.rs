//! The RCON packet: `size: i32 LE | id: i32 LE | type: i32 LE | body | 0 | 0`,
//! where `size` counts everything after itself (so at least 10).

/// Client → server: log in with the password.
pub const TYPE_AUTH: i32 = 3;
/// Client → server: run a command. Server → client: the answer to a login.
pub const TYPE_EXEC: i32 = 2;
/// Server → client: (part of) a command's output.
pub const TYPE_RESPONSE: i32 = 0;

/// Smallest legal `size`: id, type and the two terminating NULs.
pub const MIN_SIZE: i32 = 10;
/// Largest `size` accepted from a server. Both dialects document 4096; we allow
/// headroom for servers that exceed it, but never an arbitrary allocation.
pub const MAX_SIZE: i32 = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub id: i32,
    pub kind: i32,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet declares size {0}, below the minimum of 10")]
    TooShort(i32),
    #[error("packet declares size {0}, above the limit of {MAX_SIZE}")]
    TooLarge(i32),
}

/// Encodes one packet. The caller checks the body length against the dialect's limit.
pub fn encode(id: i32, kind: i32, body: &[u8]) -> Vec<u8> {
    let size = body.len() + 10;
    let mut out = Vec::with_capacity(size + 4);
    // Bodies are capped far below i32::MAX by the callers' dialect limits.
    out.extend_from_slice(&i32::try_from(size).unwrap_or(i32::MAX).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&[0, 0]);
    out
}

fn le_i32(bytes: &[u8]) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    i32::from_le_bytes(b)
}

/// Decodes the first packet of `buf`. `Ok(None)`: more bytes are needed (never
/// more than `MAX_SIZE + 4` in all). On success returns the packet and how many
/// bytes it used. Trailing NULs of the body are stripped leniently (servers
/// differ on one or two).
pub fn decode(buf: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = le_i32(&buf[..4]);
    if size < MIN_SIZE {
        return Err(DecodeError::TooShort(size));
    }
    if size > MAX_SIZE {
        return Err(DecodeError::TooLarge(size));
    }
    // Both bounds were checked just above, so the cast cannot wrap.
    let total = 4 + size as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let id = le_i32(&buf[4..8]);
    let kind = le_i32(&buf[8..12]);
    let mut body = &buf[12..total];
    for _ in 0..2 {
        if let [rest @ .., 0] = body {
            body = rest;
        }
    }
    Ok(Some((
        Packet {
            id,
            kind,
            body: body.to_vec(),
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn round_trips() {
        let bytes = encode(7, TYPE_EXEC, b"list");
        let (p, used) = decode(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(
            p,
            Packet {
                id: 7,
                kind: TYPE_EXEC,
                body: b"list".to_vec()
            }
        );
    }

    #[test]
    fn partial_input_asks_for_more() {
        let bytes = encode(1, TYPE_RESPONSE, b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn declared_sizes_out_of_range_are_errors_not_panics() {
        for size in [i32::MIN, -1, 0, 9] {
            let mut b = size.to_le_bytes().to_vec();
            b.extend_from_slice(&[0; 12]);
            assert_eq!(decode(&b), Err(DecodeError::TooShort(size)));
        }
        let b = (MAX_SIZE + 1).to_le_bytes();
        assert_eq!(decode(&b), Err(DecodeError::TooLarge(MAX_SIZE + 1)));
    }

    /// Property: for any bytes whatsoever, decoding returns without panicking,
    /// never claims more bytes than it was given, and never yields a body longer
    /// than the limit.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0xC0FFEE);
        for round in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if round % 3 == 0 && buf.len() >= 4 {
                // Make the declared size plausible so the body paths run too.
                let size = rng.random_range(-20..80_i32);
                buf[..4].copy_from_slice(&size.to_le_bytes());
            }
            let mut rest = &buf[..];
            while let Ok(Some((packet, used))) = decode(rest) {
                assert!(used <= rest.len() && used >= 14);
                assert!(packet.body.len() <= MAX_SIZE as usize);
                rest = &rest[used..];
            }
        }
    }
}
