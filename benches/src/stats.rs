//! Percentiles over latency samples and medians over per-round rates.

/// Median and tail of a set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    /// 50th percentile.
    pub median_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
}

/// Nearest-rank percentile `p` (0..=100) of an ascending slice.
///
/// ```
/// let v = [1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10];
/// assert_eq!(shmbus_benches::stats::percentile(&v, 50.0), Some(5));
/// assert_eq!(shmbus_benches::stats::percentile(&v, 99.0), Some(10));
/// ```
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One-way latency from round-trip samples: every statistic is RTT / 2.
/// Sorts `rtts` in place. `None` when there are no samples.
pub fn one_way_from_rtts(rtts: &mut [u64]) -> Option<LatencySummary> {
    rtts.sort_unstable();
    Some(LatencySummary {
        count: rtts.len(),
        median_ns: percentile(rtts, 50.0)? as f64 / 2.0,
        p99_ns: percentile(rtts, 99.0)? as f64 / 2.0,
    })
}

/// Median of a list of values (mean of the two middle ones for even counts).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_halving() {
        let mut rtts: Vec<u64> = (1..=1000).rev().map(|x| x * 2).collect();
        let s = one_way_from_rtts(&mut rtts).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.median_ns, 500.0);
        assert_eq!(s.p99_ns, 990.0);
        assert!(one_way_from_rtts(&mut []).is_none());
    }

    #[test]
    fn median_even_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
