//! Cloud ids in the local URLs handed to the app (`/c/<id>/app-ws`): a request arriving on
//! the local listener names the cloud it belongs to, since one app server may serve sessions
//! from several cloud regions.
//!
//! An id is self-describing and sealed: a 128-bit HMAC-SHA256 tag of the origin under a
//! per-install key, followed by the origin itself (hex). So an id names exactly one origin,
//! nobody without the key can make one (a forged webhook cannot mint an id that routes to
//! its own origin), two origins never share an id, and no table is kept: nothing a stranger
//! sends grows memory here. With the key kept in `state.dir`, ids stay valid across restarts.

use std::path::Path;

use aws_lc_rs::{constant_time, hmac, rand as lc_rand};
use url::Url;

/// Path prefix of local URLs that name a cloud.
pub const PREFIX: &str = "/c/";

/// Length of the tag part of an id, in hex digits (128 bits).
const TAG_HEX: usize = 32;

/// Longest origin an id may carry (`wss://` + a 253-byte host + `:65535/`).
const MAX_ORIGIN: usize = 270;

/// Name of the key file inside `state.dir`.
pub const KEY_FILE: &str = "cloud-id.key";

/// Mints and opens cloud ids.
pub struct CloudIds {
    key: hmac::Key,
}

impl std::fmt::Debug for CloudIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudIds { key: <secret> }")
    }
}

/// Why an id could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudError {
    #[error("not a ws:// or wss:// URL: {0}")]
    NotWebSocket(String),
    #[error("origin longer than {MAX_ORIGIN} bytes")]
    TooLong,
}

/// Why the id key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create the cloud id key {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cloud id key {0} is not 64 hex digits; delete it to have a new one made")]
    Malformed(String),
    #[error("no randomness for a cloud id key")]
    Random,
}

impl CloudIds {
    /// Ids under a fresh random key: valid until this process exits.
    pub fn ephemeral() -> Result<CloudIds, KeyError> {
        let mut key = [0u8; 32];
        lc_rand::fill(&mut key).map_err(|_| KeyError::Random)?;
        Ok(CloudIds::from_key(&key))
    }

    /// Ids under the key in `dir/cloud-id.key`, made (mode 0600) on first use, so ids
    /// handed to an app stay valid across restarts of Tether.
    pub fn persistent(dir: &Path) -> Result<CloudIds, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = decode_hex(text.trim())
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| KeyError::Malformed(path.display().to_string()))?;
                Ok(CloudIds::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let mut key = [0u8; 32];
                lc_rand::fill(&mut key).map_err(|_| KeyError::Random)?;
                write_private(&path, hex(&key).as_bytes()).map_err(io)?;
                Ok(CloudIds::from_key(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_key(key: &[u8]) -> CloudIds {
        CloudIds {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The id of `ws_url`'s origin.
    pub fn register(&self, ws_url: &Url) -> Result<String, CloudError> {
        let origin =
            origin_of(ws_url).ok_or_else(|| CloudError::NotWebSocket(ws_url.to_string()))?;
        let text = origin.as_str();
        if text.len() > MAX_ORIGIN {
            return Err(CloudError::TooLong);
        }
        let tag = hmac::sign(&self.key, text.as_bytes());
        let mut id = hex(&tag.as_ref()[..TAG_HEX / 2]);
        id.push_str(&hex(text.as_bytes()));
        Ok(id)
    }

    /// The origin an id names, if this key made it.
    pub fn get(&self, id: &str) -> Option<Url> {
        if id.len() <= TAG_HEX || id.len() > TAG_HEX + 2 * MAX_ORIGIN {
            return None;
        }
        let (tag, origin) = id.split_at_checked(TAG_HEX)?;
        let tag = decode_hex(tag)?;
        let origin = String::from_utf8(decode_hex(origin)?).ok()?;
        let expected = hmac::sign(&self.key, origin.as_bytes());
        constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_HEX / 2], &tag).ok()?;
        Url::parse(&origin).ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `scheme://host[:port]/` of a WebSocket URL.
pub fn origin_of(url: &Url) -> Option<Url> {
    if !matches!(url.scheme(), "ws" | "wss") {
        return None;
    }
    let host = url.host_str()?;
    let text = match url.port() {
        Some(port) => format!("{}://{host}:{port}/", url.scheme()),
        None => format!("{}://{host}/", url.scheme()),
    };
    Url::parse(&text).ok()
}

/// Splits a local path `/c/<id>/<rest>` into the id and `/<rest>`.
pub fn split_local_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// Joins a cloud origin with a path and query taken from a local request, switching the
/// scheme to `http`/`https` when `http` is set (the SDK derives HTTP calls from the ws URL).
/// The result is always on `origin`: the path is appended, never resolved as a reference
/// (`/wss://elsewhere/x` or `/\\elsewhere` must not leave it), and `None` if it would.
pub fn join(origin: &Url, path_and_query: &str, http: bool) -> Option<Url> {
    let base = origin.as_str().trim_end_matches('/');
    let sep = if path_and_query.starts_with('/') {
        ""
    } else {
        "/"
    };
    let url = Url::parse(&format!("{base}{sep}{path_and_query}")).ok()?;
    if origin_of(&url).as_ref() != Some(origin) || url.fragment().is_some() {
        return None;
    }
    if !http {
        return Some(url);
    }
    let scheme = if origin.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    // `set_scheme` refuses ws->http changes on special schemes; rebuild the text instead.
    let text = url.as_str().replacen(origin.scheme(), scheme, 1);
    Url::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn ids_name_one_origin_and_cannot_be_forged() {
        let ids = CloudIds::ephemeral().expect("key");
        let a = ids
            .register(&url("wss://api.example.net/app-ws"))
            .expect("a");
        let b = ids
            .register(&url("wss://api.example.net/tpa-ws"))
            .expect("b");
        let c = ids
            .register(&url("ws://api.example.net:8002/app-ws"))
            .expect("c");
        assert_eq!(a, b, "one id per origin");
        assert_ne!(a, c);
        assert_eq!(
            ids.get(&a).map(|u| u.to_string()),
            Some("wss://api.example.net/".into())
        );
        // Another key (another install) cannot open it, nor mint one this key accepts.
        let other = CloudIds::ephemeral().expect("key");
        assert_eq!(other.get(&a), None);
        let forged = other
            .register(&url("ws://evil.example:1/app-ws"))
            .expect("forged");
        assert_eq!(ids.get(&forged), None);
        // A tampered origin or tag is refused.
        let mut tampered = a.clone();
        tampered.replace_range(a.len() - 2.., "2e");
        assert_eq!(ids.get(&tampered), None);
        let mut bad_tag = a.clone();
        bad_tag.replace_range(..2, if a.starts_with("00") { "01" } else { "00" });
        assert_eq!(ids.get(&bad_tag), None);
        for junk in ["", "zz", "ab12cd34", &"0".repeat(40), &"é".repeat(40)] {
            assert_eq!(ids.get(junk), None, "{junk}");
        }
        assert!(ids.register(&url("http://a/")).is_err());
        let long = format!("wss://{}example/app-ws", "a234567890.".repeat(27));
        assert!(ids.register(&url(&long)).is_err());
    }

    #[test]
    fn a_persistent_key_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("tether-ids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = CloudIds::persistent(&dir).expect("create");
        let id = first
            .register(&url("wss://api.example.net/app-ws"))
            .expect("id");
        let again = CloudIds::persistent(&dir).expect("reopen");
        assert!(again.get(&id).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join(KEY_FILE), "nope").expect("write");
        assert!(matches!(
            CloudIds::persistent(&dir),
            Err(KeyError::Malformed(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_joined_path_never_leaves_the_origin() {
        let o = url("wss://api.example.net/");
        for tricky in [
            "/wss://evil.example/app-ws",
            "/ws:evil.example/x",
            "/\\\\evil.example/x",
            "/\\/evil.example/x",
            "//evil.example/x",
            "/https://evil.example/api/tts",
            "/%2F%2Fevil.example/x",
            "/../../x",
            "/x#frag",
        ] {
            for http in [false, true] {
                if let Some(u) = join(&o, tricky, http) {
                    assert_eq!(u.host_str(), Some("api.example.net"), "{tricky} -> {u}");
                    assert_eq!(u.port_or_known_default(), Some(443), "{tricky} -> {u}");
                }
            }
        }
        assert_eq!(
            join(&o, "//x/app-ws", false).map(|u| u.path().to_string()),
            Some("//x/app-ws".into()),
            "the path is kept as the cloud named it"
        );
    }

    #[test]
    fn local_paths_split_and_join() {
        assert_eq!(
            split_local_path("/c/ab12cd34/app-ws"),
            Some(("ab12cd34", "/app-ws"))
        );
        assert_eq!(split_local_path("/c/ab12cd34"), Some(("ab12cd34", "/")));
        assert_eq!(split_local_path("/app-ws"), None);
        let o = url("wss://api.example.net/");
        assert_eq!(
            join(&o, "/app-ws", false).map(String::from),
            Some("wss://api.example.net/app-ws".into())
        );
        assert_eq!(
            join(&o, "/api/tts?text=hi%20there", true).map(String::from),
            Some("https://api.example.net/api/tts?text=hi%20there".into())
        );
        let plain = url("ws://127.0.0.1:7002/");
        assert_eq!(
            join(&plain, "/api/sdk/simple-storage/u", true).map(String::from),
            Some("http://127.0.0.1:7002/api/sdk/simple-storage/u".into())
        );
    }
}
