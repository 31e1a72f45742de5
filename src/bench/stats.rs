//! Order statistics over samples, and the formatting helpers the tables share. Pure: no I/O,
//! no clock.

use serde::Serialize;

/// Percentiles of one sample set, in the unit of the samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

// === impl Summary ===

impl Summary {
    /// Summarises `samples` (any order). Empty input gives all zeros with `n == 0`.
    pub fn of(samples: &[f64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        Summary {
            n: sorted.len(),
            p50: rank(&sorted, 0.50),
            p95: rank(&sorted, 0.95),
            p99: rank(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
            mean,
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty samples: the smallest sample with at least
/// `q` of the samples at or below it (no interpolation, so every figure was observed).
fn rank(sorted: &[f64], q: f64) -> f64 {
    let idx = (q * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

/// The median of `values`, or 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    Summary::of(values).p50
}

/// `a / b`, or 0 when `b` is 0 (a figure that could not be measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Rounds to 3 decimals, so JSON output stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.n, s.p50, s.p95, s.p99, s.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_and_none() {
        let s = Summary::of(&[7.0]);
        assert_eq!((s.p50, s.p99, s.max), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
