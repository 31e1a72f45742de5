//! Who may read the admin listener's data routes (`/sessions`, `/config`): the decision as a
//! pure function of the listener's address, the configured token and the request's
//! `Authorization` header. No I/O, no clock; the server turns a [`Denial`] into a response.
//!
//! The rule: a configured token is always required; without one, the data routes are open
//! only when the admin listener is bound to a loopback address (nothing off the host can
//! reach it) and refused everywhere else.

use std::net::IpAddr;

use crate::config::Secret;

/// Why a data route was refused; also the `reason` label of `tether_admin_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The listener is off loopback and no token is configured: the routes are disabled.
    NoTokenConfigured,
    /// A token is configured and the request carries no bearer token.
    MissingToken,
    /// The request's bearer token is not the configured one.
    WrongToken,
}

// === impl Denial ===

impl Denial {
    /// Every reason, for pre-creating the metric's label values.
    pub const ALL: [Denial; 3] = [
        Denial::NoTokenConfigured,
        Denial::MissingToken,
        Denial::WrongToken,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Denial::NoTokenConfigured => "no_token_configured",
            Denial::MissingToken => "missing_token",
            Denial::WrongToken => "wrong_token",
        }
    }
}

/// Whether a listener bound to `ip` is reachable from this host only.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Decides whether a request may read a data route. `admin_ip` is the address the admin
/// listener is bound to, `token` the configured token (empty = none), `authorization` the
/// raw `Authorization` header of the request, if any.
pub fn authorize(
    admin_ip: IpAddr,
    token: &Secret,
    authorization: Option<&[u8]>,
) -> Result<(), Denial> {
    if token.is_empty() {
        return if is_loopback(admin_ip) {
            Ok(())
        } else {
            Err(Denial::NoTokenConfigured)
        };
    }
    let presented = authorization.and_then(bearer).ok_or(Denial::MissingToken)?;
    if tokens_match(token.expose().as_bytes(), presented) {
        Ok(())
    } else {
        Err(Denial::WrongToken)
    }
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares in time that depends only on the length of `presented` (the caller's input),
/// never on where the first difference is or on the expected token's contents.
fn tokens_match(expected: &[u8], presented: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let mut diff = u8::from(expected.len() != presented.len());
    for (i, byte) in presented.iter().enumerate() {
        diff |= byte ^ expected[i % expected.len()];
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-admin";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn without_a_token_only_loopback_is_open() {
        let none = Secret::default();
        for open in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(authorize(ip(open), &none, None), Ok(()), "{open}");
        }
        for public in ["0.0.0.0", "::", "10.1.2.3", "::ffff:10.1.2.3"] {
            assert_eq!(
                authorize(ip(public), &none, Some(b"Bearer anything")),
                Err(Denial::NoTokenConfigured),
                "{public}"
            );
        }
    }

    #[test]
    fn a_configured_token_is_required_everywhere() {
        let token = Secret::new(TOKEN);
        let good = format!("Bearer {TOKEN}");
        for at in ["0.0.0.0", "127.0.0.1"] {
            assert_eq!(
                authorize(ip(at), &token, Some(good.as_bytes())),
                Ok(()),
                "{at}"
            );
            assert_eq!(
                authorize(ip(at), &token, None),
                Err(Denial::MissingToken),
                "{at}"
            );
        }
    }

    #[test]
    fn bearer_header_forms() {
        let token = Secret::new(TOKEN);
        let at = ip("0.0.0.0");
        let check = |h: &str| authorize(at, &token, Some(h.as_bytes()));
        assert_eq!(check(&format!("bearer {TOKEN}")), Ok(()));
        assert_eq!(check(&format!("BEARER   {TOKEN}  ")), Ok(()));
        for missing in ["", "Bearer", "Bearer ", TOKEN, &format!("Basic {TOKEN}")] {
            assert_eq!(check(missing), Err(Denial::MissingToken), "{missing:?}");
        }
        for wrong in [
            "Bearer x".to_string(),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            format!("Bearer {}", TOKEN.to_uppercase()),
            format!("Bearer {TOKEN}{TOKEN}"),
        ] {
            assert_eq!(check(&wrong), Err(Denial::WrongToken), "{wrong:?}");
        }
    }

    #[test]
    fn comparison_handles_every_length() {
        assert!(tokens_match(b"abc", b"abc"));
        assert!(!tokens_match(b"abc", b""));
        assert!(!tokens_match(b"abc", b"abcabc"));
        assert!(!tokens_match(b"", b""));
        assert!(!tokens_match(b"abc", b"abd"));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::HashSet<_> = Denial::ALL.iter().map(|d| d.label()).collect();
        assert_eq!(labels.len(), Denial::ALL.len());
    }
}
