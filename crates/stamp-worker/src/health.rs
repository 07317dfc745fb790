//! The health check of one ready instance, as Azure does it: every interval, `GET <path>` on the
//! instance's port with the app's default hostname; 200–299 within the timeout passes, anything
//! else fails (redirects are not followed). The consecutive failures are counted by the pure
//! [`stamp_model::health::HealthState`]; this module does the IO and words the events.
//!
//! The client is a few lines of HTTP/1.1 on a raw `TcpStream`: the verdict needs only the status
//! line, so a full HTTP client would be weight without use.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use stamp_model::health::{HealthState, Probe, Transition};
use stamp_model::{HealthCheck, Millis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::supervisor::secs;

/// Azure waits at most a minute for an answer; a shorter interval shortens the wait too, so
/// probes never overlap.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// A floor under the interval: zero would make tokio panic, and tiny ones would only spin.
/// Validation keeps real intervals at 1 s or more.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// A status line longer than this is not HTTP.
const MAX_STATUS_LINE: usize = 1024;
/// After the status line the rest of the response is read and dropped, up to this much, so the
/// connection closes cleanly instead of being reset under an app still writing (which apps log
/// as broken-pipe errors). A bigger body is cut off.
const MAX_DRAIN: u64 = 64 * 1024;

/// Why a probe failed; shown in the "unhealthy" event.
#[derive(Debug)]
pub(crate) enum Failure {
    Status(u16),
    Refused,
    Connect(io::Error),
    Io(io::Error),
    Closed,
    Invalid(String),
    TimedOut(Millis),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(s) if (300..400).contains(s) => {
                write!(f, "HTTP {s}, a redirect, which health checks do not follow")
            }
            Failure::Status(s) => write!(f, "HTTP {s}"),
            Failure::Refused => write!(f, "connection refused"),
            Failure::Connect(e) => write!(f, "could not connect: {e}"),
            Failure::Io(e) => write!(f, "connection failed: {e}"),
            Failure::Closed => write!(f, "connection closed without a response"),
            Failure::Invalid(line) => write!(f, "not an HTTP response: {line}"),
            Failure::TimedOut(t) => write!(f, "timed out after {}", secs(*t)),
        }
    }
}

/// A change of an instance's health, to publish and log.
pub(crate) struct Change {
    pub healthy: bool,
    pub event: String,
}

/// Probes one instance process on a timer and counts its failures. Made when the process becomes
/// ready, dropped when it stops being so: a restarted process starts healthy and uncounted.
pub(crate) struct HealthProbe {
    id: String,
    path: String,
    addr: SocketAddr,
    request: Vec<u8>,
    timeout: Duration,
    ticks: Interval,
    state: HealthState,
}

impl HealthProbe {
    /// First probe one interval from now. `host` is the app's default hostname.
    pub fn new(id: &str, check: &HealthCheck, host: &str, port: u16) -> HealthProbe {
        let interval = check.interval.as_duration().max(MIN_INTERVAL);
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        // A slow probe (up to one interval) pushes the next one back rather than bunching them.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        HealthProbe {
            id: id.to_string(),
            path: check.path.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            request: request(&check.path, host),
            timeout: interval.min(MAX_TIMEOUT),
            ticks,
            state: HealthState::new(check.unhealthy_after),
        }
    }

    /// Probes on every tick until the verdict changes, and returns the change. Dropping the future
    /// (the process exited, a stop came) abandons at most one probe.
    pub async fn next_change(&mut self) -> Change {
        loop {
            self.ticks.tick().await;
            let result = probe(self.addr, &self.request, self.timeout).await;
            let outcome = match &result {
                Ok(_) => Probe::Passed,
                Err(failure) => {
                    tracing::debug!("{} failed its health check: {failure}", self.id);
                    Probe::Failed
                }
            };
            let Some(transition) = self.state.record(outcome) else {
                continue;
            };
            let (id, path) = (&self.id, &self.path);
            let event = match (transition, result) {
                (Transition::Unhealthy { failures }, Err(last)) => format!(
                    "{id} unhealthy: {failures} consecutive health check failures on {path} (last: {last})"
                ),
                (Transition::Healthy, Ok(status)) => {
                    format!("{id} healthy again ({path} answered {status})")
                }
                // The state machine changes to unhealthy only on a failure and back only on a
                // success; say what happened should it ever do otherwise.
                (transition, _) => format!("{id} health: {transition:?}"),
            };
            return Change {
                healthy: self.state.healthy(),
                event,
            };
        }
    }
}

/// Resolves with the next change of `probe`'s verdict; never without a health check.
pub(crate) async fn next_change(probe: &mut Option<HealthProbe>) -> Change {
    match probe {
        Some(probe) => probe.next_change().await,
        None => std::future::pending().await,
    }
}

/// The probe's request. The path was validated at the API (visible ASCII, no spaces), so it
/// cannot break the request line.
fn request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Stamp-HealthCheck\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `request` to `addr` and returns the status if it is 200–299 and arrived within
/// `timeout`.
pub(crate) async fn probe(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<u16, Failure> {
    let deadline = Instant::now() + timeout;
    let (status, mut stream) = match tokio::time::timeout_at(deadline, status(addr, request)).await
    {
        Ok(answer) => answer?,
        Err(_) => return Err(Failure::TimedOut(Millis::from(timeout))),
    };
    // The verdict is in; whatever the rest does within the time left, it stands.
    let (mut rest, mut sink) = ((&mut stream).take(MAX_DRAIN), tokio::io::sink());
    let _ = tokio::time::timeout_at(deadline, tokio::io::copy(&mut rest, &mut sink)).await;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(Failure::Status(status))
    }
}

/// Connects, sends the request and reads up to the end of the status line.
async fn status(addr: SocketAddr, request: &[u8]) -> Result<(u16, TcpStream), Failure> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Failure::Refused
        } else {
            Failure::Connect(e)
        }
    })?;
    stream.write_all(request).await.map_err(Failure::Io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    loop {
        let n = stream.read(&mut buf).await.map_err(Failure::Io)?;
        if n == 0 {
            return Err(if head.is_empty() {
                Failure::Closed
            } else {
                invalid(&head)
            });
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            let code = parse_status_line(&head[..end]).ok_or_else(|| invalid(&head[..end]))?;
            return Ok((code, stream));
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(invalid(&head));
        }
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let (version, rest) = line.split_once(' ')?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = rest.split(' ').next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

fn invalid(head: &[u8]) -> Failure {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let text: String = String::from_utf8_lossy(line).chars().take(60).collect();
    Failure::Invalid(format!("{:?}", text.trim_end()))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// Serves one connection: reads the request head, answers `response`, closes. Returns the
    /// address and the request it received.
    async fn server(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before the end of its request");
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (addr, task)
    }

    async fn check(response: &'static [u8]) -> Result<u16, String> {
        let (addr, _server) = server(response).await;
        probe(addr, &request("/healthz", "hello.stamp.test"), LONG)
            .await
            .map_err(|f| f.to_string())
    }

    #[tokio::test]
    async fn sends_azures_request_to_the_default_hostname() {
        let (addr, server) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let got = probe(addr, &request("/healthz?x=1", "hello.stamp.test"), LONG).await;
        assert_eq!(got.unwrap(), 200);
        assert_eq!(
            server.await.unwrap(),
            "GET /healthz?x=1 HTTP/1.1\r\nHost: hello.stamp.test\r\n\
             User-Agent: Stamp-HealthCheck\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn only_2xx_passes() {
        assert_eq!(check(b"HTTP/1.1 204 No Content\r\n\r\n").await, Ok(204));
        assert_eq!(check(b"HTTP/1.0 299 Whatever\r\n\r\n").await, Ok(299));
        // Some servers send no reason phrase.
        assert_eq!(check(b"HTTP/1.1 200\r\n\r\n").await, Ok(200));
        assert_eq!(
            check(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await,
            Err("HTTP 500".into())
        );
        assert_eq!(
            check(b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n").await,
            Err("HTTP 302, a redirect, which health checks do not follow".into())
        );
        assert_eq!(
            check(b"HTTP/1.1 100 Continue\r\n\r\n").await,
            Err("HTTP 100".into())
        );
    }

    #[tokio::test]
    async fn garbage_and_silence_fail() {
        assert_eq!(
            check(b"SSH-2.0-OpenSSH_9.6\r\n").await,
            Err(r#"not an HTTP response: "SSH-2.0-OpenSSH_9.6""#.into())
        );
        assert_eq!(
            check(b"HTTP/1.1 2000 OK\r\n\r\n").await,
            Err(r#"not an HTTP response: "HTTP/1.1 2000 OK""#.into())
        );
        assert_eq!(
            check(b"").await,
            Err("connection closed without a response".into())
        );
        assert_eq!(
            check(b"HTTP/1.1 200 O").await,
            Err(r#"not an HTTP response: "HTTP/1.1 200 O""#.into())
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let got = probe(port, &request("/", "h"), LONG).await;
        assert!(matches!(got, Err(Failure::Refused)), "{got:?}");
        assert_eq!(got.unwrap_err().to_string(), "connection refused");
    }

    #[tokio::test]
    async fn a_silent_app_times_out() {
        // Accepts (the kernel's backlog does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = probe(addr, &request("/", "h"), Duration::from_millis(300)).await;
        assert_eq!(got.unwrap_err().to_string(), "timed out after 0.3 s");
    }

    #[tokio::test]
    async fn a_passing_status_stands_even_if_the_body_never_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nstill writing")
                .await
                .unwrap();
            // Holds the connection open past the probe's deadline.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let got = probe(addr, &request("/", "h"), Duration::from_millis(300)).await;
        assert_eq!(got.unwrap(), 200);
        server.abort();
    }
}
