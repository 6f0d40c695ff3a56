//! The standard `process_*` metrics of the process (as Prometheus' client libraries
//! name them), read from `/proc/self` at each scrape; nothing off Linux.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(process) = read() else {
            return Ok(());
        };
        let counter = |encoder: &mut DescriptorEncoder<'_>, name, help, unit, value: f64| {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
        };
        counter(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            process.cpu_seconds,
        )?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                process.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                process.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                process.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                process.max_fds,
            ),
            ("process_threads", "Number of OS threads", process.threads),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/proc/self` says of the process; `None` where it says nothing.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    threads: Option<f64>,
}

/// Clock ticks per second of `/proc/<pid>/stat`: the kernel exports USER_HZ, fixed
/// at 100 on every architecture Linux runs containers on (Prometheus' Go client
/// assumes the same).
const USER_HZ: f64 = 100.0;

/// The process' numbers, or `None` off Linux (no `/proc/self/stat`).
fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let mut process = parse(&stat, &status, &boot, &limits)?;
    process.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as f64);
    Some(process)
}

/// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and
/// `/proc/self/limits` (proc(5)).
fn parse(stat: &str, status: &str, boot: &str, limits: &str) -> Option<Process> {
    // The command name in parentheses may hold spaces and parentheses: the fields
    // start after the last `)`. Field 3 (state) is at index 0.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) / USER_HZ;
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let value = rest.trim().strip_suffix("kB")?.trim();
            value.parse::<f64>().ok().map(|v| v * 1024.0)
        })
    };
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
    let max_fds = limits.lines().find_map(|line| {
        let rest = line.strip_prefix("Max open files")?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    });
    Some(Process {
        cpu_seconds,
        resident_bytes: kib("VmRSS"),
        virtual_bytes: field(23),
        start_time_seconds: boot_time.zip(field(22)).map(|(b, t)| b + t / USER_HZ),
        open_fds: None,
        max_fds,
        threads: field(20),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_procfs_unprefixed() {
        let text = super::super::Metrics::new().encode().unwrap();
        for family in [
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_start_time_seconds gauge",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(text.contains(family), "missing {family:?} in:\n{text}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap();
        assert!(rss.parse::<f64>().unwrap() > 0.0);
    }

    #[test]
    fn procfs_parsing_takes_the_fields_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "42 (tokio (rt) w) S 1 42 42 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615";
        let status = "Name:\tcertwright\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let p = parse(stat, status, boot, limits).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, Some(2048.0 * 1024.0));
        assert_eq!(p.virtual_bytes, Some(123_456_789.0));
        assert_eq!(p.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(p.threads, Some(7.0));
        assert_eq!(p.max_fds, Some(1_048_576.0));
        assert_eq!(parse("garbage", "", "", ""), None);
    }
}
