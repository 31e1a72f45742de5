//! A minimal HTTP/1.1 client for tests (one connection per request).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response read in full.
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends a request and reads the whole response.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    let uri: hyper::Uri = url.parse().expect("uri");
    let authority = uri.authority().expect("authority").to_string();
    let tcp = TcpStream::connect(&authority).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let resp = super::within("an HTTP response", sender.send_request(req))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = super::within("an HTTP body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// GET `url`.
pub async fn get(url: &str) -> Resp {
    request("GET", url, &[], Bytes::new()).await
}

/// POST JSON to `url`.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Resp {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
    request("POST", url, &[("content-type", "application/json")], bytes).await
}
