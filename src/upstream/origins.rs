//! Which cloud origins Tether may dial. The cloud's webhook is unauthenticated, so the URL in
//! it is a claim: only an origin on this list is ever dialled, and only there does the app's
//! init (its API key) go. Pure: patterns in, yes/no out.
//!
//! A pattern is `scheme://host[:port]`:
//! - the host may start with `*.`, which admits every subdomain (at any depth) but not the
//!   domain itself;
//! - the port may be `*`; without one, only the scheme's default port matches;
//! - a pattern without a scheme means `wss://`;
//! - `*` alone admits every origin (an explicit opt-out, for closed networks and tests).

use url::Url;

/// The MentraOS / AugmentOS cloud hosts and their subdomains (PROTOCOL §2–§3 name
/// `api.mentra.glass` and `prod.augmentos.cloud`), over TLS only.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "wss://mentra.glass",
    "wss://*.mentra.glass",
    "wss://augmentos.cloud",
    "wss://*.augmentos.cloud",
];

/// A parsed allowlist. The default admits nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    any: bool,
    patterns: Vec<Pattern>,
    text: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: Host,
    /// `None` = any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.suffix`: the suffix, with its leading dot.
    Subdomains(String),
}

/// A pattern that cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an origin pattern (expected ws[s]://host[:port], *.domain or *): {0:?}")]
pub struct PatternError(pub String);

impl AllowList {
    /// Parses every pattern; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<AllowList, PatternError> {
        let mut list = AllowList {
            any: false,
            patterns: Vec::new(),
            text: Vec::new(),
        };
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            list.text.push(p.to_string());
            if p == "*" {
                list.any = true;
                continue;
            }
            list.patterns.push(Pattern::parse(p)?);
        }
        Ok(list)
    }

    /// The patterns as written, for `/config` and logs.
    pub fn patterns(&self) -> &[String] {
        &self.text
    }

    /// Whether every origin is admitted.
    pub fn admits_any(&self) -> bool {
        self.any
    }

    /// Whether the origin of `url` (a `ws://` or `wss://` URL) is admitted.
    pub fn admits(&self, url: &Url) -> bool {
        if !matches!(url.scheme(), "ws" | "wss") {
            return false;
        }
        if self.any {
            return true;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let port = url.port_or_known_default();
        self.patterns
            .iter()
            .any(|p| p.admits(url.scheme(), &host, port))
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, PatternError> {
        let bad = || PatternError(text.to_string());
        let (scheme, rest) = match text.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("wss".to_string(), text),
        };
        if scheme != "ws" && scheme != "wss" {
            return Err(bad());
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        // A bracketed IPv6 host keeps its colons inside the brackets.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let port = match port {
            None => Some(if scheme == "wss" { 443 } else { 80 }),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                Host::Subdomains(format!(".{suffix}"))
            }
            Some(_) => return Err(bad()),
            None if host.is_empty() || host.contains('*') => return Err(bad()),
            None => {
                // Normalise the way `Url` does (IDNA, IPv6 brackets), so matching compares
                // like with like.
                let probe = Url::parse(&format!("{scheme}://{host}/")).map_err(|_| bad())?;
                Host::Exact(probe.host_str().ok_or_else(bad)?.to_string())
            }
        };
        Ok(Pattern { scheme, host, port })
    }

    fn admits(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme != scheme {
            return false;
        }
        if self.port.is_some() && self.port != port {
            return false;
        }
        match &self.host {
            Host::Exact(h) => h == host,
            Host::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn defaults_admit_the_clouds_and_their_subdomains_over_tls_only() {
        let list = AllowList::parse(DEFAULT_ALLOWED).expect("defaults");
        for ok in [
            "wss://api.mentra.glass/app-ws",
            "wss://mentra.glass/app-ws",
            "wss://eu.api.mentra.glass:443/ws/miniapp",
            "wss://prod.augmentos.cloud/tpa-ws",
            "wss://API.Mentra.Glass/app-ws",
        ] {
            assert!(list.admits(&url(ok)), "{ok}");
        }
        for no in [
            "ws://api.mentra.glass/app-ws",
            "wss://api.mentra.glass:8443/app-ws",
            "wss://evilmentra.glass/app-ws",
            "wss://mentra.glass.evil.net/app-ws",
            "wss://127.0.0.1/app-ws",
            "https://api.mentra.glass/",
        ] {
            assert!(!list.admits(&url(no)), "{no}");
        }
    }

    #[test]
    fn ports_hosts_and_the_opt_out() {
        let list = AllowList::parse(&["ws://127.0.0.1:*", "ws://localhost:8002", "[::1]:9000"])
            .expect("list");
        assert!(list.admits(&url("ws://127.0.0.1:41234/app-ws")));
        assert!(!list.admits(&url("ws://127.0.0.2:41234/app-ws")));
        assert!(list.admits(&url("ws://localhost:8002/app-ws")));
        assert!(!list.admits(&url("ws://localhost:8003/app-ws")));
        assert!(list.admits(&url("wss://[::1]:9000/app-ws")));
        let any = AllowList::parse(&["*"]).expect("any");
        assert!(any.admits(&url("ws://anything:1/x")));
        assert!(!any.admits(&url("http://anything/")));
        assert!(!AllowList::parse::<&str>(&[])
            .expect("empty")
            .admits(&url("wss://a/")));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "https://x",
            "wss://",
            "wss://a/b",
            "wss://*",
            "wss://a.*.b",
            "wss://x:port",
            "wss://u@x",
        ] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
