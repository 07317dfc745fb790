//! Attacks on the front end, byte for byte: request smuggling (CL.TE, TE.CL, obfuscated
//! Transfer-Encoding, bad Content-Length), bare LF and obs-fold, undrained request bodies,
//! `Upgrade` without 101, hop-by-hop and forwarding-header abuse, oversized heads and slowloris.
//!
//! The backend is a raw TCP server written here rather than hyper: it parses what it receives
//! itself, strictly (CRLF only, one framing per message), and records every request and every
//! unparsable byte per connection. So a test can assert what an app behind the front end would
//! have seen: no second, smuggled request, no request with ambiguous framing, no bytes that do
//! not parse as HTTP. The attacker is a raw `TcpStream` that reads raw responses.
//!
//! The expected behaviour follows RFC 9112 (§6.1, §6.3, §5.2, §11.2) and the checklist in
//! `shared/reference/front-end-proxy.md` §5: refuse (4xx, then close) what cannot be framed
//! unambiguously, or forward a clean re-framed message and close the client connection where
//! the RFC says so.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::{AcceptAnyCertificate, Scheme, WAIT, one_app, serve_frontend, tcp_backend};
use rustls::pki_types::ServerName;
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::{AppName, InstanceState, SiteConfig};
use stamp_routes::RouteTable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the front end to close a connection it may or must close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// After an exchange, time for anything the front end might still send on to reach the backend,
/// so "the backend saw nothing more" is checked only after it could have.
const SETTLE: Duration = Duration::from_millis(300);

const APP: &str = "app";
const HOST: &str = "app.localhost";

/// A request an attacker hides where the front end should see only body bytes.
fn smuggled() -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

// ---------------------------------------------------------------------------------------------
// The recording backend

/// One request as the backend parsed it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which backend connection it came on (numbered from 0 in accept order).
    conn: usize,
    method: String,
    target: String,
    /// Names lowercased, values trimmed, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// False when the connection closed before the body its framing announced was complete.
    complete: bool,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

#[derive(Debug, Clone)]
enum Event {
    Request(Seen),
    /// Bytes where a request or its body should be that a strict parser refuses: the front end
    /// sent something an app could misread.
    Malformed {
        conn: usize,
        why: String,
        bytes: String,
    },
}

/// A backend on 127.0.0.1:0. It answers each request after reading its body with 200 and
/// `backend saw <method> <target>`; `/early...` is answered as soon as the head is read, before
/// the body (which it then reads and records, as a correct server does); `/hop` answers with
/// hop-by-hop headers.
struct RecordingBackend {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    raw: Arc<Mutex<BTreeMap<usize, Vec<u8>>>>,
}

impl RecordingBackend {
    async fn start() -> RecordingBackend {
        let events = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(BTreeMap::new()));
        let recorder = Recorder {
            events: Arc::clone(&events),
            raw: Arc::clone(&raw),
        };
        let addr =
            tcp_backend(move |conn, stream| backend_connection(conn, stream, recorder.clone()))
                .await;
        RecordingBackend { addr, events, raw }
    }

    /// A position in the event log, to look only at what came after it.
    fn mark(&self) -> usize {
        lock(&self.events).len()
    }

    /// The events since `mark`, once anything still under way had time to arrive.
    async fn settled_since(&self, mark: usize) -> Vec<Event> {
        tokio::time::sleep(SETTLE).await;
        lock(&self.events)[mark..].to_vec()
    }

    /// Every request seen so far; panics on anything smuggled or malformed, with the raw bytes.
    async fn assert_clean(&self) -> Vec<Seen> {
        let events = self.settled_since(0).await;
        if let Err(problem) = no_smuggling(&events) {
            panic!(
                "{problem}\nraw bytes per backend connection:\n{}",
                self.raw_dump()
            );
        }
        requests(&events)
    }

    fn raw_dump(&self) -> String {
        lock(&self.raw)
            .iter()
            .map(|(conn, bytes)| format!("  #{conn}: {}", show(bytes)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn requests(events: &[Event]) -> Vec<Seen> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Request(seen) => Some(seen.clone()),
            Event::Malformed { .. } => None,
        })
        .collect()
}

/// Nothing the backend received was smuggled or unparsable.
fn no_smuggling(events: &[Event]) -> Result<(), String> {
    for event in events {
        match event {
            Event::Malformed { conn, why, bytes } => {
                return Err(format!(
                    "the backend received bytes it cannot parse on connection #{conn} ({why}): {bytes}"
                ));
            }
            Event::Request(seen) if seen.target.contains("smuggled") => {
                return Err(format!(
                    "a smuggled request reached the backend on connection #{}: {} {}",
                    seen.conn, seen.method, seen.target
                ));
            }
            Event::Request(_) => {}
        }
    }
    Ok(())
}

#[derive(Clone)]
struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    raw: Arc<Mutex<BTreeMap<usize, Vec<u8>>>>,
}

impl Recorder {
    fn request(&self, seen: Seen) {
        lock(&self.events).push(Event::Request(seen));
    }

    fn malformed(&self, conn: usize, why: impl Into<String>, bytes: &[u8]) {
        lock(&self.events).push(Event::Malformed {
            conn,
            why: why.into(),
            bytes: show(bytes),
        });
    }

    /// Reads more bytes into `buf`; 0 when the peer closed (or reset) the connection.
    async fn read_more(&self, conn: usize, stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                lock(&self.raw)
                    .entry(conn)
                    .or_default()
                    .extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }
}

/// A head longer than this is recorded as malformed (the front end should never send one).
const BACKEND_MAX_HEAD: usize = 1024 * 1024;

async fn backend_connection(conn: usize, mut stream: TcpStream, recorder: Recorder) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > BACKEND_MAX_HEAD {
                recorder.malformed(conn, "a request head longer than 1 MiB", &buf);
                return;
            }
            if recorder.read_more(conn, &mut stream, &mut buf).await == 0 {
                if !buf.is_empty() {
                    recorder.malformed(conn, "the connection closed inside a request head", &buf);
                }
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..head_end).collect();
        let refuse = async |stream: &mut TcpStream| {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        };
        let mut seen = match parse_request_head(conn, &head) {
            Ok(seen) => seen,
            Err(why) => {
                recorder.malformed(conn, why, &head);
                refuse(&mut stream).await;
                return;
            }
        };
        let framing = match request_framing(&seen) {
            Ok(framing) => framing,
            Err(why) => {
                recorder.malformed(conn, why, &head);
                refuse(&mut stream).await;
                return;
            }
        };
        let early = seen.target.starts_with("/early");
        if early && stream.write_all(&backend_answer(&seen)).await.is_err() {
            return;
        }
        let end = match framing {
            Framing::None => BodyEnd::Complete,
            Framing::Length(n) => loop {
                if buf.len() >= n {
                    seen.body = buf.drain(..n).collect();
                    break BodyEnd::Complete;
                }
                if recorder.read_more(conn, &mut stream, &mut buf).await == 0 {
                    seen.body = std::mem::take(&mut buf);
                    break BodyEnd::Closed;
                }
            },
            Framing::Chunked => loop {
                match decode_chunked(&buf) {
                    Ok(Some((body, used))) => {
                        seen.body = body;
                        buf.drain(..used);
                        break BodyEnd::Complete;
                    }
                    Ok(None) => {
                        if recorder.read_more(conn, &mut stream, &mut buf).await == 0 {
                            break BodyEnd::Closed;
                        }
                    }
                    Err(why) => break BodyEnd::Malformed(why),
                }
            },
        };
        match end {
            BodyEnd::Complete => {
                let answer = backend_answer(&seen);
                recorder.request(seen);
                if !early && stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
            BodyEnd::Closed => {
                seen.complete = false;
                recorder.request(seen);
                return;
            }
            BodyEnd::Malformed(why) => {
                recorder.malformed(conn, format!("chunked body: {why}"), &buf);
                recorder.request(seen);
                refuse(&mut stream).await;
                return;
            }
        }
    }
}

enum BodyEnd {
    Complete,
    Closed,
    Malformed(String),
}

fn backend_answer(seen: &Seen) -> Vec<u8> {
    let body = format!("backend saw {} {}\n", seen.method, seen.target);
    let extra = if seen.target == "/hop" {
        "connection: x-hop-resp\r\nx-hop-resp: 1\r\nkeep-alive: timeout=5\r\n\
         proxy-authenticate: Basic\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
         x-end-to-end: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A strict RFC 9112 request head: CRLF line ends only, no obs-fold, no whitespace before a
/// colon, no control characters in values.
fn parse_request_head(conn: usize, head: &[u8]) -> Result<Seen, String> {
    let head = head
        .strip_suffix(b"\r\n\r\n")
        .ok_or("the head does not end with CRLF CRLF")?;
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(at) = find(rest, b"\r\n") {
        lines.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    lines.push(rest);
    for line in &lines {
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return Err(format!("a bare CR or LF in {}", show(line)));
        }
    }
    let request_line =
        std::str::from_utf8(lines[0]).map_err(|_| "a request line that is not UTF-8")?;
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("request line {request_line:?}"));
    };
    if method.is_empty()
        || !method.bytes().all(is_tchar)
        || target.is_empty()
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
    {
        return Err(format!("request line {request_line:?}"));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("a header line without a colon: {}", show(line)))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(format!("header name {}", show(name)));
        }
        let value = value.trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!(
                "a control character in header value {}",
                show(value)
            ));
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Seen {
        conn,
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
        complete: true,
    })
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// The body framing of a request as an app would read it; an error when two readers could
/// disagree (RFC 9112 §6.3).
fn request_framing(seen: &Seen) -> Result<Framing, String> {
    let te = seen.all("transfer-encoding");
    let cl = seen.all("content-length");
    match (te.as_slice(), cl.as_slice()) {
        ([], []) => Ok(Framing::None),
        ([te], []) if te.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        ([], [cl]) if !cl.is_empty() && cl.len() < 16 && cl.bytes().all(|b| b.is_ascii_digit()) => {
            cl.parse()
                .map(Framing::Length)
                .map_err(|_| format!("Content-Length {cl:?}"))
        }
        _ => Err(format!(
            "ambiguous framing: Transfer-Encoding {te:?}, Content-Length {cl:?}"
        )),
    }
}

/// Decodes one complete chunked body at the start of `buf`: the body and the bytes used, `None`
/// when more bytes are needed, an error on anything but strict hex sizes and CRLFs.
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_len) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + line_len];
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_part.is_empty()
            || size_part.len() > 15
            || !size_part.iter().all(u8::is_ascii_hexdigit)
            || line.contains(&b'\r')
            || line.contains(&b'\n')
        {
            return Err(format!("chunk size line {}", show(line)));
        }
        let size = usize::from_str_radix(&String::from_utf8_lossy(size_part), 16)
            .map_err(|_| format!("chunk size {}", show(size_part)))?;
        at += line_len + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(line_len) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += line_len + 2;
                if line_len == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_string());
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Bytes for a message: escaped, and cut if long.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 400;
    let shown = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        format!("\"{shown}\" ... ({} bytes)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

// ---------------------------------------------------------------------------------------------
// The front end

/// Routes `app.localhost` to the backend only; any other host is the front end's 404.
fn routes(backend: SocketAddr) -> RouteTable {
    one_app("localhost", APP, backend)
}

struct Setup {
    backend: RecordingBackend,
    frontend: SocketAddr,
}

async fn setup() -> Setup {
    setup_with(FrontendConfig::default()).await
}

async fn setup_with(config: FrontendConfig) -> Setup {
    let backend = RecordingBackend::start().await;
    let frontend = Frontend::new(config);
    frontend.set_routes(routes(backend.addr));
    // Serves until the test's runtime ends.
    let (addr, _serving) = serve_frontend(&frontend, Scheme::Http, std::future::pending()).await;
    Setup {
        backend,
        frontend: addr,
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker

/// A response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn summarise(replies: &[Reply]) -> String {
    if replies.is_empty() {
        return "no response".to_string();
    }
    replies
        .iter()
        .map(|r| format!("{} {:?}", r.status, r.text().trim_end()))
        .collect::<Vec<_>>()
        .join(", then ")
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// One raw client connection to the front end, plain or TLS.
struct RawClient {
    reader: Reader,
    writer: Option<Writer>,
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let (reader, writer) = tcp_connect(addr).await.into_split();
        RawClient::over(Box::new(reader), Box::new(writer))
    }

    fn over(reader: Reader, writer: Writer) -> RawClient {
        RawClient {
            reader,
            writer: Some(writer),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes`; an error (the front end already closed) is ignored: what it answered is
    /// what the test checks.
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = tokio::time::timeout(WAIT, writer.write_all(bytes.as_ref())).await;
        }
    }

    /// Writes `bytes` from a task of its own, for payloads larger than the socket buffers that
    /// the front end may stop reading.
    fn send_in_background(&mut self, bytes: Vec<u8>) {
        if let Some(mut writer) = self.writer.take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WAIT, writer.write_all(&bytes)).await;
            });
        }
    }

    async fn read_more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.reader.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` when the front end closed (or reset) the connection first.
    async fn reply(&mut self) -> Option<Reply> {
        tokio::time::timeout(WAIT, self.next_reply())
            .await
            .expect("timed out waiting for a response from the front end")
    }

    async fn next_reply(&mut self) -> Option<Reply> {
        loop {
            match parse_response(&self.buf, self.eof) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Some(reply);
                }
                Ok(None) if self.eof => return None,
                Ok(None) => {
                    self.read_more().await;
                }
                Err(why) => panic!(
                    "the front end sent an unparsable response ({why}): {}",
                    show(&self.buf)
                ),
            }
        }
    }

    /// Every response until the front end closes the connection, and whether it did within
    /// [`CLOSE_WAIT`] of the last one.
    async fn replies_until_closed(&mut self) -> (Vec<Reply>, bool) {
        let mut replies = Vec::new();
        loop {
            match tokio::time::timeout(CLOSE_WAIT, self.next_reply()).await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => return (replies, true),
                Err(_) => return (replies, false),
            }
        }
    }

    /// Waits until the front end closes the connection; true if it did within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.read_more().await {} })
            .await
            .is_ok()
    }
}

async fn tcp_connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("timed out connecting to the front end")
        .expect("connect to the front end")
}

/// One complete response at the start of `buf` and the bytes it used; `None` if more bytes are
/// needed. With `eof`, a response without framing ends at the end of `buf`.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize)>, String> {
    let Some(head_len) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let body_start = head_len + 4;
    let rest = &buf[body_start..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        match decode_chunked(rest)? {
            Some(decoded) => decoded,
            None => return Ok(None),
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("content-length {length:?}"))?;
        if rest.len() < length {
            return Ok(None);
        }
        (rest[..length].to_vec(), length)
    } else if eof {
        (rest.to_vec(), rest.len())
    } else {
        return Ok(None);
    };
    Ok(Some((
        Reply {
            status,
            headers,
            body,
        },
        body_start + used,
    )))
}

// ---------------------------------------------------------------------------------------------
// Table-driven framing attacks

/// What the front end may do with an attack.
enum Expect {
    /// Refuse it: a 4xx (or 501), nothing reaches the backend, the connection closes.
    Refused,
    /// Refuse it, or forward exactly one request whose body is `body`, answer once and then
    /// close if `then_close` (RFC 9112 §6.1: after a request with both Transfer-Encoding and
    /// Content-Length the connection must close).
    RefusedOrForwarded { body: Vec<u8>, then_close: bool },
}

struct Attack {
    name: &'static str,
    payload: Vec<u8>,
    expect: Expect,
}

impl Attack {
    fn refused(name: &'static str, payload: impl Into<Vec<u8>>) -> Attack {
        Attack {
            name,
            payload: payload.into(),
            expect: Expect::Refused,
        }
    }

    fn refused_or_forwarded(
        name: &'static str,
        payload: impl Into<Vec<u8>>,
        body: impl Into<Vec<u8>>,
        then_close: bool,
    ) -> Attack {
        Attack {
            name,
            payload: payload.into(),
            expect: Expect::RefusedOrForwarded {
                body: body.into(),
                then_close,
            },
        }
    }
}

fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) || status == 501
}

/// Runs every attack on a fresh connection and collects what went wrong, so one failing case
/// does not hide the others.
async fn run_attacks(setup: &Setup, attacks: &[Attack]) -> Vec<String> {
    let mut failures = Vec::new();
    for attack in attacks {
        match run_attack(setup, attack).await {
            // Shown with `--nocapture`: which of the allowed outcomes each attack got.
            Ok(seen) if seen.is_empty() => eprintln!("[{}] refused", attack.name),
            Ok(_) => eprintln!("[{}] forwarded as one clean request", attack.name),
            Err(failure) => failures.push(failure),
        }
    }
    failures
}

async fn run_attack(setup: &Setup, attack: &Attack) -> Result<Vec<Seen>, String> {
    let mark = setup.backend.mark();
    let mut client = RawClient::connect(setup.frontend).await;
    client.send(&attack.payload).await;
    let (replies, closed) = client.replies_until_closed().await;
    let events = setup.backend.settled_since(mark).await;
    let context = format!(
        "[{}] sent {}\n    front end answered: {}; then closed the connection: {closed}\n    backend saw: {events:?}",
        attack.name,
        show(&attack.payload),
        summarise(&replies),
    );
    let fail = |what: &str| Err(format!("{what}\n    {context}"));
    if let Err(problem) = no_smuggling(&events) {
        return fail(&problem);
    }
    let seen = requests(&events);
    let Some(first) = replies.first() else {
        return fail("the front end closed the connection without answering (expected a 4xx)");
    };
    if is_refusal(first.status) {
        if !seen.is_empty() {
            return fail("the front end refused the request, yet the backend saw a request");
        }
        if replies.len() > 1 || !closed {
            return fail(
                "after refusing a request it cannot frame, the front end must close the connection",
            );
        }
        return Ok(seen);
    }
    match &attack.expect {
        Expect::Refused => fail("expected a 4xx refusal"),
        Expect::RefusedOrForwarded { body, then_close } => {
            if first.status != 200 || seen.len() != 1 {
                return fail("expected a 4xx, or exactly one request forwarded and answered");
            }
            if seen[0].body != *body {
                return fail(&format!(
                    "the backend got body {}, expected {}",
                    show(&seen[0].body),
                    show(body)
                ));
            }
            if replies.len() != 1 {
                return fail("expected one response for one request");
            }
            if *then_close && !closed {
                return fail(
                    "the request had both Transfer-Encoding and Content-Length: the front end must close the connection after answering (RFC 9112 §6.1)",
                );
            }
            Ok(seen)
        }
    }
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A POST with `framing` header lines (each ending in CRLF) and `body`.
fn post(framing: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: {HOST}\r\n{framing}\r\n{body}")
}

// ---------------------------------------------------------------------------------------------
// Tests: framing

#[tokio::test]
async fn cl_te_smuggling_is_refused_or_neutralised() {
    let setup = setup().await;
    // Read by Content-Length, the body is everything; read as chunked, it is empty and a second
    // request follows. The front end must go by Transfer-Encoding, drop Content-Length, and
    // close after answering; or refuse.
    let body = format!("0\r\n\r\n{}", smuggled());
    let cl = format!("Content-Length: {}\r\n", body.len());
    let te = "Transfer-Encoding: chunked\r\n";
    let attacks = [
        Attack::refused_or_forwarded("CL then TE", post(&format!("{cl}{te}"), &body), "", true),
        Attack::refused_or_forwarded("TE then CL", post(&format!("{te}{cl}"), &body), "", true),
        Attack::refused_or_forwarded(
            "CL.TE with a stray byte after the last chunk",
            post(&format!("Content-Length: 6\r\n{te}"), "0\r\n\r\nG"),
            "",
            true,
        ),
    ];
    assert_no_failures(&run_attacks(&setup, &attacks).await);
    setup.backend.assert_clean().await;
}

#[tokio::test]
async fn te_cl_smuggling_is_refused_or_neutralised() {
    let setup = setup().await;
    // Read as chunked, the body is one chunk holding a request; read by Content-Length it is
    // the chunk-size line only, and the chunk's bytes become a second request.
    let hidden = smuggled();
    let body = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    let size_line = format!("{:x}\r\n", hidden.len()).len();
    let cl = format!("Content-Length: {size_line}\r\n");
    let te = "Transfer-Encoding: chunked\r\n";
    let attacks = [
        Attack::refused_or_forwarded(
            "TE then short CL",
            post(&format!("{te}{cl}"), &body),
            hidden.clone(),
            true,
        ),
        Attack::refused_or_forwarded(
            "short CL then TE",
            post(&format!("{cl}{te}"), &body),
            hidden.clone(),
            true,
        ),
    ];
    assert_no_failures(&run_attacks(&setup, &attacks).await);
    setup.backend.assert_clean().await;
}

#[tokio::test]
async fn duplicate_conflicting_and_invalid_content_length_are_refused() {
    let setup = setup().await;
    // If the front end took any of these as 5, "hello" would be the body and the rest a second
    // request.
    let body = format!("hello{}", smuggled());
    let refused = [
        (
            "two different values",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("a list of different values", "Content-Length: 5, 6\r\n"),
        ("a plus sign", "Content-Length: +5\r\n"),
        ("a minus sign", "Content-Length: -5\r\n"),
        ("hex", "Content-Length: 0x5\r\n"),
        ("an underscore", "Content-Length: 5_\r\n"),
        ("a space inside", "Content-Length: 5 5\r\n"),
        ("a decimal point", "Content-Length: 5.0\r\n"),
        ("empty", "Content-Length: \r\n"),
        ("overflow", "Content-Length: 99999999999999999999999999\r\n"),
        ("a vertical tab", "Content-Length: 5\x0b\r\n"),
        ("a space before the colon", "Content-Length : 5\r\n"),
    ];
    let mut attacks: Vec<Attack> = refused
        .iter()
        .map(|(name, framing)| Attack::refused(name, post(framing, &body)))
        .collect();
    // Equal duplicates may be folded into one (RFC 9110 §8.6): refused or forwarded as 5 bytes.
    for (name, framing) in [
        (
            "two equal values",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
        ("a list of equal values", "Content-Length: 5, 5\r\n"),
    ] {
        attacks.push(Attack::refused_or_forwarded(
            name,
            post(&format!("{framing}Connection: close\r\n"), "hello"),
            "hello",
            false,
        ));
    }
    assert_no_failures(&run_attacks(&setup, &attacks).await);
    setup.backend.assert_clean().await;
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let setup = setup().await;
    // Each variant comes with a Content-Length covering the whole body. Read by Content-Length
    // the body is everything; read as chunked it is empty and a second request follows.
    let body = format!("0\r\n\r\n{}", smuggled());
    let cl = format!("Content-Length: {}\r\n", body.len());
    // Not chunked as the final coding, or not a valid field line: a request the front end cannot
    // frame (RFC 9112 §6.3 rule 4, §5.1), refused with 400.
    let refused = [
        ("xchunked", "Transfer-Encoding: xchunked\r\n"),
        (
            "chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("chunkedx", "Transfer-Encoding: chunkedx\r\n"),
        ("quoted", "Transfer-Encoding: \"chunked\"\r\n"),
        ("space before the colon", "Transfer-Encoding : chunked\r\n"),
        ("tab before the colon", "Transfer-Encoding\t: chunked\r\n"),
        (
            "a vertical tab before the value",
            "Transfer-Encoding: \x0bchunked\r\n",
        ),
        (
            "a NUL after the value",
            "Transfer-Encoding: chunked\x00\r\n",
        ),
        (
            "a second line making identity final",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        (
            "a leading space on the header line (a fold of the previous one)",
            " Transfer-Encoding: chunked\r\n",
        ),
    ];
    let mut attacks: Vec<Attack> = refused
        .iter()
        .map(|(name, te)| Attack::refused(name, post(&format!("{cl}{te}"), &body)))
        .collect();
    attacks.push(Attack::refused(
        "chunked on HTTP/1.0",
        format!("POST / HTTP/1.0\r\nHost: {HOST}\r\n{cl}Transfer-Encoding: chunked\r\n\r\n{body}"),
    ));
    // Valid spellings of chunked (OWS around the value, case): chunked wins over
    // Content-Length, the body is empty, and the connection closes; or refused.
    for (name, te) in [
        ("a tab before the value", "Transfer-Encoding:\tchunked\r\n"),
        (
            "spaces around the value",
            "Transfer-Encoding:   chunked  \r\n",
        ),
        ("a tab after the value", "Transfer-Encoding: chunked\t\r\n"),
        ("upper case", "TRANSFER-ENCODING: CHUNKED\r\n"),
    ] {
        attacks.push(Attack::refused_or_forwarded(
            name,
            post(&format!("{cl}{te}"), &body),
            "",
            true,
        ));
    }
    assert_no_failures(&run_attacks(&setup, &attacks).await);
    setup.backend.assert_clean().await;
}

#[tokio::test]
async fn transfer_encoding_lookalike_header_names_never_reach_the_backend() {
    let setup = setup().await;
    // Some servers and frameworks treat `_` as `-` in header names (CGI-style variables), so
    // `Transfer_Encoding` would become Transfer-Encoding behind a front end that framed the
    // request by Content-Length. Refuse, or forward without the lookalike (as nginx and Envoy's
    // edge settings do with underscores).
    let body = format!("0\r\n\r\n{}", smuggled());
    let cl = format!("Content-Length: {}\r\n", body.len());
    let attacks = [
        Attack::refused_or_forwarded(
            "Transfer_Encoding",
            post(
                &format!("{cl}Transfer_Encoding: chunked\r\nConnection: close\r\n"),
                &body,
            ),
            body.clone(),
            false,
        ),
        Attack::refused_or_forwarded(
            "Content_Length beside chunked",
            post(
                "Transfer-Encoding: chunked\r\nContent_Length: 3\r\nConnection: close\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            "abc",
            false,
        ),
    ];
    let mut failures = Vec::new();
    for attack in &attacks {
        match run_attack(&setup, attack).await {
            Ok(seen) => {
                for request in &seen {
                    for (name, value) in &request.headers {
                        let normalised = name.replace('_', "-");
                        if name.contains('_')
                            && matches!(normalised.as_str(), "transfer-encoding" | "content-length")
                        {
                            failures.push(format!(
                                "[{}] the backend saw the lookalike header {name}: {value}; an app that maps `_` to `-` would frame the body differently from the front end",
                                attack.name
                            ));
                        }
                    }
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    assert_no_failures(&failures);
    setup.backend.assert_clean().await;
}

#[tokio::test]
async fn bare_lf_and_obs_fold_are_refused_or_normalised() {
    let setup = setup().await;
    let body = format!("0\r\n\r\n{}", smuggled());
    let attacks = [
        // The backend's parser accepts CRLF only: if the front end forwards these at all, it must
        // have rewritten them into a clean message.
        Attack::refused_or_forwarded(
            "bare LF line ends throughout",
            format!("GET /lf HTTP/1.1\nHost: {HOST}\nConnection: close\n\n"),
            "",
            false,
        ),
        Attack::refused_or_forwarded(
            "a bare LF hiding Content-Length inside another header",
            format!(
                "POST /lf HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: a\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            ),
            "hello",
            false,
        ),
        Attack::refused_or_forwarded(
            "an obs-fold continuation line",
            format!(
                "GET /fold HTTP/1.1\r\nHost: {HOST}\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n"
            ),
            "",
            false,
        ),
        // Folded, the value is chunked (RFC 9112 §5.2: replace the fold with SP, or refuse); with
        // Content-Length beside it that means an empty body and a close.
        Attack::refused_or_forwarded(
            "Transfer-Encoding folded onto a continuation line",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding:\r\n chunked\r\n",
                    body.len()
                ),
                &body,
            ),
            "",
            true,
        ),
        Attack::refused(
            "a bare CR inside a header value",
            format!("GET /cr HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\rContent-Length: 5\r\n\r\nhello"),
        ),
        Attack::refused(
            "a NUL inside a header value",
            format!("GET /nul HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\x00b\r\n\r\n"),
        ),
    ];
    assert_no_failures(&run_attacks(&setup, &attacks).await);
    setup.backend.assert_clean().await;
}

// ---------------------------------------------------------------------------------------------
// Tests: connection reuse

#[tokio::test]
async fn undrained_request_body_is_not_parsed_as_the_next_request() {
    let setup = setup().await;
    // The body of the first request looks like a request. The backend answers `/early` before
    // reading it; the front end must still treat those bytes as body (or close), never as the
    // client's next request, and must not hand the backend connection to another request while
    // the body is unfinished on it.
    let hidden = smuggled();
    let mut client = RawClient::connect(setup.frontend).await;
    client
        .send(format!(
            "POST /early HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
            hidden.len()
        ))
        .await;
    let early = client
        .reply()
        .await
        .expect("the front end relays the backend's early answer before the body is sent");
    assert_eq!(early.status, 200, "{}", early.text());
    assert!(early.text().contains("POST /early"), "{}", early.text());

    // The body only now, then a genuine second request on the same connection.
    client
        .send(format!(
            "{hidden}GET /second HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        ))
        .await;
    let (rest, _) = client.replies_until_closed().await;
    match rest.as_slice() {
        // Closing after an early answer is allowed.
        [] => {}
        [second] => {
            assert_eq!(second.status, 200, "{}", second.text());
            assert!(
                second.text().contains("GET /second"),
                "the response after the early one must answer /second: {}",
                second.text()
            );
        }
        more => panic!(
            "one request was sent after /early, got: {}",
            summarise(more)
        ),
    }

    // Fresh connections: whichever pooled backend connection they get must be clean.
    for i in 0..3 {
        let mut client = RawClient::connect(setup.frontend).await;
        client
            .send(format!(
                "GET /third-{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        let reply = client.reply().await.expect("an answer to /third");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            reply.text().contains(&format!("GET /third-{i}")),
            "{}",
            reply.text()
        );
    }

    let seen = setup.backend.assert_clean().await;
    let early = seen
        .iter()
        .find(|r| r.target == "/early")
        .expect("the backend saw /early");
    assert!(
        !early.complete || early.body == hidden.as_bytes(),
        "the backend's /early body must be exactly what the client sent: {}",
        show(&early.body)
    );
}

#[tokio::test]
async fn upgrade_without_101_keeps_the_connection_http() {
    let setup = setup().await;
    let upgrade = format!(
        "GET /upgrade HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // For another host: parsed as HTTP it is the front end's own 404; tunnelled, it would reach
    // the backend of the first request.
    let after = "GET /after HTTP/1.1\r\nHost: nosuch.localhost\r\nConnection: close\r\n\r\n";

    // The client waits for the answer, then sends the next request.
    let mut client = RawClient::connect(setup.frontend).await;
    client.send(&upgrade).await;
    let first = client
        .reply()
        .await
        .expect("an answer to the upgrade request");
    assert_eq!(
        first.status,
        200,
        "the backend answered 200, not 101: {}",
        first.text()
    );
    client.send(after).await;
    let second = client
        .reply()
        .await
        .expect("the next request on the connection is answered");
    assert_eq!(
        (second.status, second.header("x-stamp-error")),
        (404, Some("no-such-app")),
        "the request after an Upgrade that got no 101 must be parsed and routed as HTTP: {}",
        second.text()
    );

    // The client sends both at once, as an attacker would.
    let mut client = RawClient::connect(setup.frontend).await;
    client.send(format!("{upgrade}{after}")).await;
    let (replies, _) = client.replies_until_closed().await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404], "{}", summarise(&replies));

    let seen = setup.backend.assert_clean().await;
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/upgrade", "/upgrade"], "{seen:#?}");
}

// ---------------------------------------------------------------------------------------------
// Tests: headers

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let setup = setup().await;
    let mut client = RawClient::connect(setup.frontend).await;
    // `Connection` also lists headers the front end sets itself and Host: naming them must not
    // delete what the front end adds (Davison, "Abusing HTTP hop-by-hop request headers").
    client
        .send(format!(
            "GET /hop HTTP/1.1\r\nHost: {HOST}\r\n\
             Connection: keep-alive, X-Secret-Hop, X-Forwarded-For, X-Forwarded-Proto, X-Request-Id, Host\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n\
             Upgrade: websocket\r\nProxy-Authorization: Basic eA==\r\n\
             X-Secret-Hop: secret\r\nX-End-To-End: kept\r\n\r\n"
        ))
        .await;
    let reply = client.reply().await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.text());

    let seen = setup.backend.assert_clean().await;
    let [request] = seen.as_slice() else {
        panic!("expected one request at the backend: {seen:#?}");
    };
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-secret-hop",
    ] {
        assert_eq!(
            request.header(name),
            None,
            "the backend must not see {name}: {request:#?}"
        );
    }
    assert_eq!(request.header("x-end-to-end"), Some("kept"), "{request:#?}");
    assert_eq!(request.all("host"), [HOST], "{request:#?}");
    assert!(
        request
            .header("x-forwarded-for")
            .is_some_and(|xff| xff.contains("127.0.0.1")),
        "X-Forwarded-For is the front end's, whatever Connection names: {request:#?}"
    );
    assert_eq!(request.all("x-forwarded-proto"), ["http"], "{request:#?}");
    assert!(request.header("x-request-id").is_some(), "{request:#?}");

    // And from the backend's response.
    for name in [
        "x-hop-resp",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            reply.header(name),
            None,
            "the client must not see {name}: {reply:#?}"
        );
    }
    assert!(
        !reply
            .header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("x-hop-resp")),
        "the backend's Connection header is not forwarded: {reply:#?}"
    );
    assert_eq!(reply.header("x-end-to-end"), Some("1"), "{reply:#?}");
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let setup = setup().await;
    let mut client = RawClient::connect(setup.frontend).await;
    client
        .send(format!(
            "GET /xff HTTP/1.1\r\nHost: {HOST}\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\
             X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 443\r\n\
             Connection: close\r\n\r\n"
        ))
        .await;
    let reply = client.reply().await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.text());

    let seen = setup.backend.assert_clean().await;
    let [request] = seen.as_slice() else {
        panic!("expected one request at the backend: {seen:#?}");
    };
    // The client is 127.0.0.1, which nothing told the front end to trust: what it claims about
    // an earlier hop is dropped, not passed on for an app to believe.
    let mut problems = Vec::new();
    if request.all("x-forwarded-for") != ["127.0.0.1"] {
        problems.push(format!(
            "X-Forwarded-For must be the peer address only, got {:?}",
            request.all("x-forwarded-for")
        ));
    }
    if request.all("x-forwarded-proto") != ["http"] {
        problems.push(format!(
            "X-Forwarded-Proto must be the front end's (http), got {:?}",
            request.all("x-forwarded-proto")
        ));
    }
    if request.all("x-forwarded-host") != [HOST] {
        problems.push(format!(
            "X-Forwarded-Host must be the front end's ({HOST}), got {:?}",
            request.all("x-forwarded-host")
        ));
    }
    if request.all("x-forwarded-port").contains(&"443") {
        problems.push("X-Forwarded-Port 443 from the client was passed on".to_string());
    }
    for (name, value) in &request.headers {
        if ["6.6.6.6", "7.7.7.7", "8.8.8.8", "evil.example"]
            .iter()
            .any(|spoofed| value.contains(spoofed))
        {
            problems.push(format!(
                "the backend saw the client's claim `{name}: {value}`; an app could take it for the client's address or host"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nbackend saw: {request:#?}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let setup = setup_with(FrontendConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().expect("a network")],
        ..FrontendConfig::default()
    })
    .await;
    let mut client = RawClient::connect(setup.frontend).await;
    client
        .send(format!(
            "GET /xff HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
        ))
        .await;
    let reply = client.reply().await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = setup.backend.assert_clean().await;
    let [request] = seen.as_slice() else {
        panic!("expected one request at the backend: {seen:#?}");
    };
    // A proxy in front that we trust vouches for its client; the front end appends its peer.
    assert_eq!(
        request.all("x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{request:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: resource limits

#[tokio::test]
async fn oversized_heads_are_refused_with_431() {
    let setup = setup().await;
    let huge = "a".repeat(512 * 1024);
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (name, payload, allowed) in [
        (
            "one 512 KiB header",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {huge}\r\n\r\n"),
            &[431][..],
        ),
        (
            "1000 headers",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n"),
            &[431][..],
        ),
        (
            "a 512 KiB request target",
            format!("GET /{huge} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            &[414, 431][..],
        ),
    ] {
        let mut client = RawClient::connect(setup.frontend).await;
        client.send_in_background(payload.into_bytes());
        let reply = client.reply().await;
        let status = reply.as_ref().map(|r| r.status);
        assert!(
            status.is_some_and(|s| allowed.contains(&s)),
            "[{name}] expected {allowed:?}, got {status:?}"
        );
    }
    let seen = setup.backend.assert_clean().await;
    assert!(
        seen.is_empty(),
        "nothing oversized reaches the backend: {seen:#?}"
    );
}

#[tokio::test]
async fn slowloris_is_cut_off_after_the_header_read_timeout() {
    let setup = setup_with(FrontendConfig {
        header_read_timeout: Duration::from_secs(1),
        ..FrontendConfig::default()
    })
    .await;
    let mut client = RawClient::connect(setup.frontend).await;
    let mut writer = client.writer.take().expect("a writer");
    // One byte every 200 ms: the head would take 50 bytes x 200 ms = 10 s, ten times the
    // timeout, and is never finished.
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ")
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat(b'a'))
        .take(50)
        .collect::<Vec<u8>>();
    let dribble = tokio::spawn(async move {
        for byte in head {
            if writer.write_all(&[byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    });
    let closed = client.closed_within(Duration::from_secs(9)).await;
    dribble.abort();
    assert!(
        closed,
        "the front end must close a connection whose head is not complete within the header read timeout"
    );
    let seen = setup.backend.assert_clean().await;
    assert!(seen.is_empty(), "{seen:#?}");
}

// ---------------------------------------------------------------------------------------------
// Tests: TLS

/// A TLS connection to `addr` that sends `sni` in its ClientHello, speaking HTTP/1.1.
async fn tls_connect(addr: SocketAddr, sni: &str) -> RawClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_string()).expect("a DNS name");
    let tcp = tcp_connect(addr).await;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("timed out in the TLS handshake")
    .expect("TLS handshake");
    let (reader, writer) = tokio::io::split(tls);
    RawClient::over(Box::new(reader), Box::new(writer))
}

#[tokio::test]
async fn host_that_disagrees_with_sni_is_misdirected() {
    // Two tenants behind one certificate (the default `*.localhost`): a client that opened TLS
    // for `app.localhost` must not reach `other.localhost` by changing the Host header (domain
    // fronting; a certificate pinned to one tenant would otherwise vouch for another).
    let app_backend = RecordingBackend::start().await;
    let other_backend = RecordingBackend::start().await;
    let frontend = Frontend::new(FrontendConfig::default());
    let instances = [
        stamp_model::fixtures::observed(
            "app-web-0",
            stamp_model::fixtures::spec(APP, 0, 1),
            InstanceState::Ready,
            app_backend.addr.port(),
        ),
        stamp_model::fixtures::observed(
            "other-web-0",
            stamp_model::fixtures::spec("other", 0, 1),
            InstanceState::Ready,
            other_backend.addr.port(),
        ),
    ];
    let apps = [
        (
            AppName::parse(APP).expect("app name"),
            SiteConfig::default(),
        ),
        (
            AppName::parse("other").expect("app name"),
            SiteConfig::default(),
        ),
    ];
    frontend.set_routes(RouteTable::build("localhost", &apps, &instances));
    let (cert_pem, key_pem) = stamp_frontend::tls::self_signed(
        "localhost",
        stamp_model::Millis::from_secs(1_800_000_000),
    )
    .expect("a self-signed certificate");
    frontend
        .set_default_certificate(&cert_pem, &key_pem)
        .expect("the default certificate");
    let (addr, _serving) = serve_frontend(&frontend, Scheme::Https, std::future::pending()).await;

    // Matching names reach the app.
    let mut client = tls_connect(addr, HOST).await;
    client
        .send(format!("GET /match HTTP/1.1\r\nHost: {HOST}\r\n\r\n"))
        .await;
    let reply = client.reply().await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Another tenant's Host on the same connection, then on a fresh one; and an absolute-form
    // target naming the other tenant.
    client
        .send("GET /mismatch HTTP/1.1\r\nHost: other.localhost\r\n\r\n")
        .await;
    let reused = client.reply().await.expect("an answer");
    let mut fresh = tls_connect(addr, HOST).await;
    fresh
        .send("GET /mismatch HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let fresh = fresh.reply().await.expect("an answer");
    let mut absolute = tls_connect(addr, HOST).await;
    absolute
        .send("GET https://other.localhost/mismatch HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let absolute = absolute.reply().await.expect("an answer");
    for (case, reply) in [
        ("on the same connection", &reused),
        ("on a fresh connection", &fresh),
        ("in absolute form", &absolute),
    ] {
        assert_eq!(
            reply.status,
            421,
            "Host other.localhost after SNI {HOST} {case} must be 421 Misdirected Request: {}",
            reply.text()
        );
    }

    let other_seen = other_backend.assert_clean().await;
    assert!(
        other_seen.is_empty(),
        "the other tenant must not see requests from a connection opened for {HOST}: {other_seen:#?}"
    );
    let app_seen = app_backend.assert_clean().await;
    let targets: Vec<&str> = app_seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/match"], "{app_seen:#?}");
}
