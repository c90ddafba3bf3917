//! Outbound webhooks: the events an endpoint can want, the secrets, and which
//! URLs an endpoint may have (no requests into Courier's own network unless
//! `webhooks.allow_private_targets` says so).

use std::net::{IpAddr, Ipv4Addr};

/// Every event name, as it travels in `event` (and in an endpoint's `events`).
/// The triggers of migration `20261206000001_webhooks.sql` emit them.
pub const EVENTS: &[&str] = &[
    "order.received",
    "order.completed",
    "order.refunded",
    "order.updated",
    "order.failed",
    "delivery.dead",
    "dispute.created",
    "dispute.closed",
];

/// Older names still accepted in `events`: `order.created` is sent for
/// `order.received`, under that name.
pub const ALIASES: &[(&str, &str)] = &[("order.created", "order.received")];

/// The event of "send test event".
pub const TEST_EVENT: &str = "endpoint.test";

/// Checks an endpoint's `events`: known names, aliases or `*`; 1 to 32 of them.
pub fn check_events(events: &[String]) -> Result<(), String> {
    if events.is_empty() || events.len() > 32 {
        return Err("list 1 to 32 event names, or [\"*\"] for all".into());
    }
    for e in events {
        if e != "*" && !EVENTS.contains(&e.as_str()) && !ALIASES.iter().any(|(a, _)| a == e) {
            return Err(format!(
                "`{}` is not an event; use `*` or one of {}, order.created",
                e.chars().take(64).collect::<String>(),
                EVENTS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A new signing secret: `whsec_` and the base64 of 24 random bytes (the
/// Standard Webhooks form).
pub fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Why a URL cannot be an endpoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Not an absolute http(s) URL with a host, or too long, or with credentials.
    Invalid(String),
    /// Its host is, or resolves to, an address inside a private network.
    Private(String),
    /// Its host name does not resolve.
    Unresolved(String),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Invalid(s) | TargetError::Private(s) | TargetError::Unresolved(s) => {
                f.write_str(s)
            }
        }
    }
}

/// Parses an endpoint URL: `http` or `https`, a host, no user or password,
/// at most 2,000 characters. Returns the host and port to resolve.
pub fn parse_url(raw: &str) -> Result<(url::Url, String, u16), TargetError> {
    if raw.len() > 2000 {
        return Err(TargetError::Invalid(
            "a URL has at most 2000 characters".into(),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| TargetError::Invalid(format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Invalid("use an http or https URL".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Invalid(
            "a URL with a user or password is refused; authenticate receivers with the signature"
                .into(),
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(TargetError::Invalid("the URL has no host".into())),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| TargetError::Invalid("the URL has no port".into()))?;
    Ok((url, host, port))
}

/// Resolves `raw`'s host and refuses it when any of its addresses is
/// private (unless `allow_private`). Returns the parsed URL.
pub async fn check_target(raw: &str, allow_private: bool) -> Result<url::Url, TargetError> {
    let (url, host, port) = parse_url(raw)?;
    let addrs: Vec<IpAddr> = match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
        Ok(Err(e)) => {
            return Err(TargetError::Unresolved(format!(
                "`{host}` does not resolve: {e}"
            )));
        }
        Err(_) => {
            return Err(TargetError::Unresolved(format!(
                "`{host}` did not resolve within 5 s"
            )));
        }
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(format!("`{host}` has no address")));
    }
    if !allow_private && let Some(a) = addrs.iter().find(|a| is_private(**a)) {
        return Err(TargetError::Private(format!(
            "`{host}` is {a}, an address inside a private network (loopback, private, link-local or metadata); set webhooks.allow_private_targets to allow it"
        )));
    }
    Ok(url)
}

/// Addresses a webhook must not reach: loopback, private (RFC 1918, unique
/// local), link-local (the cloud metadata services live there), shared
/// (CGNAT), unspecified, broadcast, multicast, benchmarking, and IPv6 forms
/// that carry such an IPv4 address.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_private_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let s = a.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    (s[6] & 0xff) as u8,
                    (s[7] >> 8) as u8,
                    (s[7] & 0xff) as u8,
                );
                return is_private_v4(v4);
            }
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

fn is_private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared 100.64.0.0/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn private_and_metadata_addresses_are_refused_public_ones_are_not() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_private(ip(a)), "{a} should be private");
        }
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!is_private(ip(a)), "{a} should be public");
        }
    }

    #[test]
    fn urls_need_http_a_host_and_no_credentials() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("https://user:pw@example.com/").is_err());
        assert!(parse_url("/relative").is_err());
        assert!(parse_url(&format!("https://example.com/{}", "a".repeat(2000))).is_err());
    }

    #[test]
    fn events_are_known_names_aliases_or_a_star() {
        assert!(check_events(&["order.completed".into(), "order.created".into()]).is_ok());
        assert!(check_events(&["*".into()]).is_ok());
        assert!(check_events(&[]).is_err());
        assert!(check_events(&["order.shipped".into()]).is_err());
    }

    #[test]
    fn secrets_are_whsec_and_24_bytes() {
        use base64::Engine;
        let s = new_secret();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim_start_matches("whsec_"))
            .unwrap_or_default();
        assert!(s.starts_with("whsec_"));
        assert_eq!(raw.len(), 24);
        assert_ne!(new_secret(), s);
    }
}
