//! Latency statistics and the two output formats.
//!
//! A [`Report`] holds every successful request's latency (the runs are bounded, so keeping
//! them all is cheap and gives exact percentiles), the errors grouped by message, and the
//! wall-clock time of the run. It prints like etcd's `benchmark` (Summary, a response-time
//! histogram, the latency distribution, the error distribution) or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

/// The percentiles etcd's `benchmark` prints.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Number of linear buckets in the response-time histogram.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar, in characters.
const BAR_WIDTH: usize = 40;

/// The outcome of one benchmark phase.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was measured ("put", "range", "watch", ...).
    pub name: String,
    /// Latencies of the successful requests, in seconds, sorted ascending.
    lats: Vec<f64>,
    /// Failed requests, counted by error message.
    pub errors: BTreeMap<String, usize>,
    /// Wall-clock duration of the whole phase.
    pub elapsed: Duration,
}

/// The figures derived from a [`Report`]; times in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: usize,
    pub errors: usize,
    pub total: f64,
    pub slowest: f64,
    pub fastest: f64,
    pub average: f64,
    pub stddev: f64,
    pub rps: f64,
    /// `(percentile, latency)` for each of [`PERCENTILES`].
    pub percentiles: Vec<(f64, f64)>,
}

impl Report {
    pub fn new(
        name: &str,
        lats: Vec<Duration>,
        errors: BTreeMap<String, usize>,
        elapsed: Duration,
    ) -> Self {
        let mut lats: Vec<f64> = lats.iter().map(Duration::as_secs_f64).collect();
        lats.sort_by(f64::total_cmp);
        Report {
            name: name.to_string(),
            lats,
            errors,
            elapsed,
        }
    }

    pub fn summary(&self) -> Summary {
        let n = self.lats.len();
        let total = self.elapsed.as_secs_f64();
        let average = if n == 0 {
            0.0
        } else {
            self.lats.iter().sum::<f64>() / n as f64
        };
        let variance = if n == 0 {
            0.0
        } else {
            self.lats.iter().map(|x| (x - average).powi(2)).sum::<f64>() / n as f64
        };
        Summary {
            requests: n,
            errors: self.errors.values().sum(),
            total,
            slowest: self.lats.last().copied().unwrap_or(0.0),
            fastest: self.lats.first().copied().unwrap_or(0.0),
            average,
            stddev: variance.sqrt(),
            rps: if total > 0.0 { n as f64 / total } else { 0.0 },
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, percentile(&self.lats, p)))
                .collect(),
        }
    }

    /// The etcd-style text report. `precise` prints microsecond digits instead of 0.1 ms.
    pub fn to_text(&self, precise: bool) -> String {
        let s = self.summary();
        let d = if precise { 6 } else { 4 };
        let mut out = String::new();
        let _ = writeln!(out, "\n[{}]\nSummary:", self.name);
        let _ = writeln!(out, "  Total:\t{:.d$} secs.", s.total);
        let _ = writeln!(out, "  Slowest:\t{:.d$} secs.", s.slowest);
        let _ = writeln!(out, "  Fastest:\t{:.d$} secs.", s.fastest);
        let _ = writeln!(out, "  Average:\t{:.d$} secs.", s.average);
        let _ = writeln!(out, "  Stddev:\t{:.d$} secs.", s.stddev);
        let _ = writeln!(out, "  Requests/sec:\t{:.4}", s.rps);
        if s.requests > 0 {
            let _ = writeln!(out, "\nResponse time histogram:");
            let buckets = histogram(&self.lats, HISTOGRAM_BUCKETS);
            let max = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1);
            for (bound, count) in buckets {
                let bar = "∎".repeat(count * BAR_WIDTH / max);
                let _ = writeln!(out, "  {bound:.d$} [{count}]\t|{bar}");
            }
            let _ = writeln!(out, "\nLatency distribution:");
            for (p, v) in &s.percentiles {
                let _ = writeln!(out, "  {p}% in {v:.d$} secs.");
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (msg, count) in &self.errors {
                let _ = writeln!(out, "  [{count}]\t{msg}");
            }
        }
        out
    }

    /// The machine-readable report; latencies in milliseconds.
    pub fn to_json(&self) -> Value {
        let s = self.summary();
        let ms = |x: f64| x * 1e3;
        let pcts: serde_json::Map<String, Value> = s
            .percentiles
            .iter()
            .map(|(p, v)| (format!("p{p}"), json!(ms(*v))))
            .collect();
        json!({
            "name": self.name,
            "requests": s.requests,
            "errors": s.errors,
            "total_secs": s.total,
            "requests_per_sec": s.rps,
            "slowest_ms": ms(s.slowest),
            "fastest_ms": ms(s.fastest),
            "average_ms": ms(s.average),
            "stddev_ms": ms(s.stddev),
            "percentiles_ms": pcts,
            "error_distribution": self.errors,
        })
    }
}

/// Nearest-rank percentile of ascending `sorted`: the smallest value such that at least
/// `p` percent of the values are less than or equal to it. 0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `buckets` linear buckets from the fastest to the slowest of ascending `sorted`, as
/// `(upper bound, count)`, the way etcd's histogram is drawn.
fn histogram(sorted: &[f64], buckets: usize) -> Vec<(f64, usize)> {
    let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let width = (hi - lo) / buckets as f64;
    let mut out: Vec<(f64, usize)> = (0..=buckets).map(|i| (lo + width * i as f64, 0)).collect();
    let mut b = 0;
    for &x in sorted {
        while b < buckets && x > out[b].0 {
            b += 1;
        }
        out[b].1 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 10.0), 10.0);
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 99.9), 100.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let odd = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&odd, 50.0), 2.0);
        assert_eq!(percentile(&odd, 75.0), 3.0);
    }

    #[test]
    fn summary_figures() {
        // Unsorted input; 4 successes over 2 s, one error.
        let lats = vec![ms(4), ms(2), ms(8), ms(6)];
        let errors = BTreeMap::from([("Unavailable: no leader".to_string(), 1)]);
        let r = Report::new("put", lats, errors, Duration::from_secs(2));
        let s = r.summary();
        assert_eq!((s.requests, s.errors), (4, 1));
        assert!((s.fastest - 0.002).abs() < 1e-12);
        assert!((s.slowest - 0.008).abs() < 1e-12);
        assert!((s.average - 0.005).abs() < 1e-12);
        // Population stddev of {2,4,6,8} ms is sqrt(5) ms.
        assert!((s.stddev - 5f64.sqrt() / 1e3).abs() < 1e-12);
        assert!((s.rps - 2.0).abs() < 1e-12);
        assert_eq!(s.percentiles[2], (50.0, 0.004));
        assert_eq!(s.percentiles[7], (99.9, 0.008));

        let j = r.to_json();
        assert_eq!(j["requests"], 4);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["percentiles_ms"]["p50"], 4.0);
        assert_eq!(j["percentiles_ms"]["p99.9"], 8.0);
        let text = r.to_text(false);
        assert!(text.contains("Requests/sec:\t2.0000"), "{text}");
        assert!(text.contains("99.9% in 0.0080 secs."), "{text}");
        assert!(text.contains("[1]\tUnavailable: no leader"), "{text}");
    }

    #[test]
    fn histogram_counts_every_sample() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        let h = histogram(&v, 10);
        assert_eq!(h.len(), 11);
        assert_eq!(h.iter().map(|b| b.1).sum::<usize>(), v.len());
        assert_eq!(h[0], (0.0, 1));
        assert_eq!(h[10], (100.0, 10));
        assert_eq!(histogram(&[3.0, 3.0], 10)[0], (3.0, 2));
    }
}
