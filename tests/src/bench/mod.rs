//! The benchmark and chaos harness behind `courier-bench`: Courier as real
//! processes (`procs`), the machine's ceiling measured in the same run with the
//! same client libraries (`probes`), and the two runs (`throughput`, `chaos`).

pub mod chaos;
pub mod console_pages;
pub mod orders;
pub mod probes;
pub mod procs;
pub mod reads;
pub mod throughput;

/// `p` (0–1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
