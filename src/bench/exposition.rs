//! Reading Prometheus text exposition scraped from Tether's admin listener: samples,
//! labels, and histogram quantiles between two scrapes.

use std::collections::BTreeMap;

/// Splits one exposition line into name, label text and value.
pub(crate) fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let name_end = line.find(['{', ' '])?;
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(r) => {
            let close = r.find('}')?;
            (&r[..close], &r[close + 1..])
        }
        None => ("", rest),
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The value of label `key` in `a="x",b="y"` (label values here hold no commas or quotes).
pub(crate) fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The smallest bucket bound (ms) holding at least `q` of the observations made between two
/// scrapes; `None` without observations.
pub(crate) fn bucket_quantile(first: &[(f64, f64)], last: &[(f64, f64)], q: f64) -> Option<f64> {
    let base: BTreeMap<u64, f64> = first.iter().map(|(le, c)| (le.to_bits(), *c)).collect();
    let deltas: Vec<(f64, f64)> = last
        .iter()
        .map(|(le, c)| (*le, c - base.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le * 1e3)
}
