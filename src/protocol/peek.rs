//! Reads one top-level string field of a JSON object without parsing the rest of it.
//!
//! The relay needs a frame's `type` on every frame (metrics, state changes) but must not
//! parse and re-serialise data frames: they are forwarded byte for byte. The scanner stops
//! at the wanted key, so cost grows with the bytes before it, and `type` comes first in
//! every frame the cloud and the SDK write.

use std::borrow::Cow;

/// Why a frame could not be peeked: it is not a JSON object (or is cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object at byte {at}")]
pub struct Malformed {
    pub at: usize,
}

/// Returns the string value of top-level `key` in the JSON object `text`.
///
/// `Ok(None)`: the object has no such key, or its value is not a string. `Err`: the text is
/// not an object, or breaks before the key is found. Bytes after the key are not checked.
pub fn top_level_str<'a>(text: &'a str, key: &str) -> Result<Option<Cow<'a, str>>, Malformed> {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        return Ok(None);
    }
    loop {
        s.ws();
        let (k_start, k_end, k_escaped) = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if !k_escaped && &text[k_start..k_end] == key {
            if s.peek() != Some(b'"') {
                return Ok(None);
            }
            let (v_start, v_end, escaped) = s.string()?;
            let raw = &text[v_start..v_end];
            if !escaped {
                return Ok(Some(Cow::Borrowed(raw)));
            }
            // Rare: let serde_json decode the escapes of this one value.
            return serde_json::from_str::<String>(&text[v_start - 1..=v_end])
                .map(|v| Some(Cow::Owned(v)))
                .map_err(|_| Malformed { at: v_start });
        }
        s.value()?;
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => return Ok(None),
            _ => return Err(Malformed { at: s.i }),
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, want: u8) -> Result<(), Malformed> {
        if self.next() == Some(want) {
            Ok(())
        } else {
            Err(Malformed {
                at: self.i.saturating_sub(1),
            })
        }
    }

    /// Consumes a string; returns the content's byte range and whether it holds escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Malformed> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.next() {
                Some(b'"') => return Ok((start, self.i - 1, escaped)),
                Some(b'\\') => {
                    escaped = true;
                    self.next().ok_or(Malformed { at: self.i })?;
                }
                Some(_) => {}
                None => return Err(Malformed { at: self.i }),
            }
        }
    }

    /// Skips one value of any kind, nested ones included.
    fn value(&mut self) -> Result<(), Malformed> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        Some(b'"') => {
                            self.string()?;
                            continue;
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        Some(_) => {}
                        None => return Err(Malformed { at: self.i }),
                    }
                    self.i += 1;
                }
            }
            Some(_) => {
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                if self.i == start {
                    Err(Malformed { at: start })
                } else {
                    Ok(())
                }
            }
            None => Err(Malformed { at: self.i }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ty(text: &str) -> Result<Option<String>, Malformed> {
        top_level_str(text, "type").map(|o| o.map(Cow::into_owned))
    }

    #[test]
    fn table() {
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            (
                r#"{"type":"data_stream","data":{"type":"inner"}}"#,
                Ok(Some("data_stream")),
            ),
            (
                r#"{"data":{"type":"inner","x":[1,{"type":"deep"}]},"type":"outer"}"#,
                Ok(Some("outer")),
            ),
            (r#" { "a" : "}\"{" , "type" : "t" } "#, Ok(Some("t"))),
            (r#"{"type":"tab\tbed"}"#, Ok(Some("tab\tbed"))),
            (r#"{"a":1,"b":true,"c":null}"#, Ok(None)),
            (r#"{"type":42}"#, Ok(None)),
            ("{}", Ok(None)),
            ("[1,2]", Err(())),
            ("not json", Err(())),
            (r#"{"type":"unterminated"#, Err(())),
            (r#"{"a":[1,2"#, Err(())),
            ("", Err(())),
        ];
        for (text, want) in cases {
            let got = ty(text);
            match want {
                Ok(v) => assert_eq!(
                    got.as_ref().ok().cloned().flatten().as_deref(),
                    *v,
                    "{text}"
                ),
                Err(()) => assert!(got.is_err(), "{text} -> {got:?}"),
            }
        }
    }

    proptest! {
        /// On any JSON object serde_json accepts, the scanner agrees with it.
        #[test]
        fn agrees_with_serde(ty_val in "[ -~]{0,12}", other in proptest::collection::vec(("[a-z]{1,6}", "[ -~]{0,10}"), 0..5), nested in any::<bool>()) {
            let mut map = serde_json::Map::new();
            for (k, v) in &other {
                if k != "type" {
                    let value = if nested { serde_json::json!({"type": v, "l": [v, {"x": v}]}) } else { serde_json::json!(v) };
                    map.insert(k.clone(), value);
                }
            }
            map.insert("type".into(), serde_json::json!(ty_val));
            let text = serde_json::to_string(&serde_json::Value::Object(map)).unwrap_or_default();
            prop_assert_eq!(ty(&text), Ok(Some(ty_val.clone())));
        }

        /// Arbitrary input never panics.
        #[test]
        fn never_panics(text in ".{0,64}") {
            let _ = ty(&text);
        }
    }
}
