//! The clouds Tether has seen in webhooks. Each cloud origin (`wss://host:port`) gets a short,
//! stable id that goes into the local URLs handed to the app (`/c/<id>/app-ws`), so a request
//! arriving on the local listener names the cloud it belongs to: one app server may serve
//! sessions from several cloud regions.

use std::collections::HashMap;
use std::sync::Mutex;

use url::Url;

/// Path prefix of local URLs that name a cloud.
pub const PREFIX: &str = "/c/";

/// Known cloud origins by id. Bounded: webhooks are unauthenticated, so a flood of forged
/// origins must not grow memory without limit.
#[derive(Debug)]
pub struct CloudTable {
    by_id: Mutex<HashMap<String, Url>>,
    max: usize,
}

/// Why a cloud could not be recorded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudError {
    #[error("not a ws:// or wss:// URL: {0}")]
    NotWebSocket(String),
    #[error("too many distinct clouds (limit {0})")]
    Full(usize),
}

impl CloudTable {
    /// An empty table holding at most `max` origins.
    pub fn new(max: usize) -> CloudTable {
        CloudTable {
            by_id: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Records the origin of `ws_url` and returns its id.
    pub fn register(&self, ws_url: &Url) -> Result<String, CloudError> {
        let origin =
            origin_of(ws_url).ok_or_else(|| CloudError::NotWebSocket(ws_url.to_string()))?;
        let id = id_of(&origin);
        let mut table = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&id) {
            if table.len() >= self.max {
                return Err(CloudError::Full(self.max));
            }
            table.insert(id.clone(), origin);
        }
        Ok(id)
    }

    /// The origin recorded under `id`.
    pub fn get(&self, id: &str) -> Option<Url> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Number of known clouds.
    pub fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no cloud is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// A stable 8-hex-digit id for an origin (FNV-1a, 32 bits).
fn id_of(origin: &Url) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in origin.as_str().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
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
pub fn join(origin: &Url, path_and_query: &str, http: bool) -> Option<Url> {
    let mut url = origin.join(path_and_query.trim_start_matches('/')).ok()?;
    if http {
        let scheme = if origin.scheme() == "wss" {
            "https"
        } else {
            "http"
        };
        // `set_scheme` refuses ws->http changes on special schemes; rebuild the text instead.
        let text = url.as_str().replacen(origin.scheme(), scheme, 1);
        url = Url::parse(&text).ok()?;
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn ids_are_stable_per_origin() {
        let t = CloudTable::new(4);
        let a = t.register(&url("wss://api.example.net/app-ws")).expect("a");
        let b = t.register(&url("wss://api.example.net/tpa-ws")).expect("b");
        let c = t
            .register(&url("ws://api.example.net:8002/app-ws"))
            .expect("c");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 8);
        assert_eq!(
            t.get(&a).map(|u| u.to_string()),
            Some("wss://api.example.net/".into())
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn table_is_bounded() {
        let t = CloudTable::new(1);
        t.register(&url("ws://a/app-ws")).expect("first");
        assert_eq!(t.register(&url("ws://b/app-ws")), Err(CloudError::Full(1)));
        assert!(t.register(&url("http://a/")).is_err());
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
