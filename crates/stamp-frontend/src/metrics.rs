//! Request metrics, counted on the request path without a lock: every counter is an atomic in
//! an `Arc` that the routing snapshot (or a response in flight) already holds, so a request
//! reaches its app's and its instance's counters through the snapshot it loaded, never through a
//! map or a mutex. Rendering (Prometheus text) and the per-app totals for the autoscaler read the
//! same atomics from the registry in `proxy`, off the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use stamp_model::{AppName, InstanceId};

use crate::budget::RetryBudget;
use crate::error::FrontendError;

/// Upper bounds of the latency buckets, in microseconds (1 ms to 10 s; the last bucket is +Inf).
const BUCKETS_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
/// The same bounds as Prometheus `le` labels, in seconds.
const BUCKET_LABELS: [&str; 14] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "+Inf",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const ERRORS: usize = FrontendError::ALL.len();

/// `0` for 1xx up to `4` for 5xx.
pub(crate) fn class_of(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Response counts by status class.
#[derive(Debug, Default)]
pub(crate) struct ByClass([AtomicU64; 5]);

impl ByClass {
    pub(crate) fn add(&self, class: usize) {
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, class: usize) -> u64 {
        self.0[class].load(Ordering::Relaxed)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Request latency: counts per bucket (not cumulative; rendering adds them up) and the sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; 14],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }
}

/// One app's counters. They live as long as the app is in the routing table (a counter reset in
/// Prometheus' eyes only when an app is deleted and created again).
#[derive(Debug)]
pub(crate) struct AppCounters {
    pub(crate) app: AppName,
    /// Every response for the app, whoever made it.
    pub(crate) requests: ByClass,
    /// Responses the front end made itself (errors, redirects): the `instance=""` series.
    pub(crate) own: ByClass,
    /// Latency of every response for the app, from the request's arrival to the end of the
    /// response body (to the `101` for upgrades).
    pub(crate) latency: Histogram,
    /// Body bytes from clients to instances, and back.
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) errors: [AtomicU64; ERRORS],
    pub(crate) budget: RetryBudget,
}

impl AppCounters {
    pub(crate) fn new(app: AppName) -> AppCounters {
        AppCounters {
            app,
            requests: ByClass::default(),
            own: ByClass::default(),
            latency: Histogram::default(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: Default::default(),
            budget: RetryBudget::default(),
        }
    }

    pub(crate) fn error(&self, error: FrontendError) {
        self.errors[error.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// One instance's counters (kept by its routing entry, see `proxy::Instance`).
#[derive(Debug, Default)]
pub(crate) struct InstanceCounters {
    pub(crate) requests: ByClass,
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
}

/// Errors for requests that named no app (no host, unknown host, misdirected).
#[derive(Debug, Default)]
pub(crate) struct GlobalErrors([AtomicU64; ERRORS]);

impl GlobalErrors {
    pub(crate) fn add(&self, error: FrontendError) {
        self.0[error.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Plain numbers for one app since the front end started (or the app appeared): what the
/// autoscaler reads. Counters only grow; `in_flight` is a gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetrics {
    pub app: AppName,
    /// Responses sent for the app, instance or front end.
    pub requests: u64,
    /// Of those, with a 5xx status.
    pub errors_5xx: u64,
    /// Requests to the app's instances whose response has not finished.
    pub in_flight: u64,
    /// Request body bytes sent on to instances.
    pub received_bytes: u64,
    /// Response body bytes from instances sent on to clients.
    pub sent_bytes: u64,
    /// Sum and count of response latencies (arrival to end of response).
    pub latency_sum: Duration,
    pub latency_count: u64,
}

/// What `render` needs of one live instance entry.
pub(crate) struct InstanceView<'a> {
    pub(crate) app: &'a AppName,
    pub(crate) instance: &'a InstanceId,
    pub(crate) in_flight: u64,
    pub(crate) counters: &'a InstanceCounters,
}

pub(crate) fn app_metrics(app: &AppCounters, in_flight: u64) -> AppMetrics {
    AppMetrics {
        app: app.app.clone(),
        requests: app.requests.total(),
        errors_5xx: app.requests.get(4),
        in_flight,
        received_bytes: app.received.load(Ordering::Relaxed),
        sent_bytes: app.sent.load(Ordering::Relaxed),
        latency_sum: app.latency.sum(),
        latency_count: app.latency.count(),
    }
}

/// Prometheus text format (version 0.0.4). `apps` and `instances` are sorted by the caller;
/// several entries of one (app, instance) pair (an instance that moved port while a response
/// from its old address still streams) are written as one.
pub(crate) fn render(
    out: &mut String,
    apps: &[&AppCounters],
    instances: &[InstanceView<'_>],
    global: &GlobalErrors,
) {
    // Writing to a String cannot fail.
    let mut w = |args: std::fmt::Arguments<'_>| {
        let _ = out.write_fmt(args);
    };

    w(format_args!(
        "# HELP stamp_http_requests_total Responses sent, by app, instance (empty when the front end answered itself) and status class.\n\
         # TYPE stamp_http_requests_total counter\n"
    ));
    for app in apps {
        for (class, name) in CLASSES.iter().enumerate() {
            w(format_args!(
                "stamp_http_requests_total{{app=\"{}\",instance=\"\",class=\"{name}\"}} {}\n",
                Label(app.app.as_str()),
                app.own.get(class)
            ));
        }
    }
    for_each_instance(instances, |view, merged| {
        for (class, name) in CLASSES.iter().enumerate() {
            let count: u64 = merged.iter().map(|c| c.counters.requests.get(class)).sum();
            w(format_args!(
                "stamp_http_requests_total{{app=\"{}\",instance=\"{}\",class=\"{name}\"}} {count}\n",
                Label(view.app.as_str()),
                Label(&view.instance.0),
            ));
        }
    });

    w(format_args!(
        "# HELP stamp_http_request_duration_seconds Time from a request's arrival to the end of its response.\n\
         # TYPE stamp_http_request_duration_seconds histogram\n"
    ));
    for app in apps {
        let app_label = Label(app.app.as_str());
        let mut cumulative = 0;
        for (bucket, le) in app.latency.buckets.iter().zip(BUCKET_LABELS) {
            cumulative += bucket.load(Ordering::Relaxed);
            w(format_args!(
                "stamp_http_request_duration_seconds_bucket{{app=\"{app_label}\",le=\"{le}\"}} {cumulative}\n"
            ));
        }
        w(format_args!(
            "stamp_http_request_duration_seconds_sum{{app=\"{app_label}\"}} {}\n\
             stamp_http_request_duration_seconds_count{{app=\"{app_label}\"}} {cumulative}\n",
            app.latency.sum().as_secs_f64()
        ));
    }

    w(format_args!(
        "# HELP stamp_http_in_flight Requests sent to an instance whose response has not finished.\n\
         # TYPE stamp_http_in_flight gauge\n"
    ));
    for_each_instance(instances, |view, merged| {
        let in_flight: u64 = merged.iter().map(|c| c.in_flight).sum();
        w(format_args!(
            "stamp_http_in_flight{{app=\"{}\",instance=\"{}\"}} {in_flight}\n",
            Label(view.app.as_str()),
            Label(&view.instance.0),
        ));
    });

    for (name, help, field) in [
        (
            "stamp_http_received_bytes_total",
            "Request body bytes sent on to an instance.",
            (|c: &InstanceCounters| &c.received) as fn(&InstanceCounters) -> &AtomicU64,
        ),
        (
            "stamp_http_sent_bytes_total",
            "Response body bytes from an instance sent on to the client.",
            |c: &InstanceCounters| &c.sent,
        ),
    ] {
        w(format_args!(
            "# HELP {name} {help}\n# TYPE {name} counter\n"
        ));
        for_each_instance(instances, |view, merged| {
            let bytes: u64 = merged
                .iter()
                .map(|c| field(c.counters).load(Ordering::Relaxed))
                .sum();
            w(format_args!(
                "{name}{{app=\"{}\",instance=\"{}\"}} {bytes}\n",
                Label(view.app.as_str()),
                Label(&view.instance.0),
            ));
        });
    }

    w(format_args!(
        "# HELP stamp_frontend_errors_total Responses the front end made itself, by app (empty when the request named none) and X-Stamp-Error code.\n\
         # TYPE stamp_frontend_errors_total counter\n"
    ));
    for error in FrontendError::ALL {
        w(format_args!(
            "stamp_frontend_errors_total{{app=\"\",code=\"{}\"}} {}\n",
            error.code(),
            global.0[error.index()].load(Ordering::Relaxed)
        ));
    }
    for app in apps {
        for error in FrontendError::ALL {
            w(format_args!(
                "stamp_frontend_errors_total{{app=\"{}\",code=\"{}\"}} {}\n",
                Label(app.app.as_str()),
                error.code(),
                app.errors[error.index()].load(Ordering::Relaxed)
            ));
        }
    }
}

/// Calls `f` once per (app, instance) pair of the sorted `instances`, with all its entries.
fn for_each_instance<'a>(
    instances: &'a [InstanceView<'a>],
    mut f: impl FnMut(&InstanceView<'a>, &[InstanceView<'a>]),
) {
    let mut rest = instances;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|v| v.app == first.app && v.instance == first.instance)
            .count();
        f(first, &rest[..same]);
        rest = &rest[same..];
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
struct Label<'a>(&'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for (status, class) in [(101, 0), (200, 1), (204, 1), (301, 2), (404, 3), (599, 4)] {
            let status = StatusCode::from_u16(status).expect("valid status");
            assert_eq!(class_of(status), class, "{status}");
        }
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        for ms in [0, 1, 2, 10, 10_000, 10_001, 60_000] {
            h.record(Duration::from_millis(ms));
        }
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(h.count(), 7);
        assert_eq!(
            h.sum(),
            Duration::from_millis(1 + 2 + 10 + 10_000 + 10_001 + 60_000)
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(Label("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
