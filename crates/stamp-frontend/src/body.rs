//! Bodies on both sides of the proxy, streamed frame by frame (never buffered), and the
//! [`Tracker`] a response carries until it has been sent or dropped: it holds the request's
//! in-flight count (so `Frontend::is_drained` knows when an instance can be stopped) and records
//! the request's metrics when it ends. Byte counts are summed in plain fields and added to the
//! shared atomics once, at the end.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::metrics::AppCounters;
use crate::proxy::Instance;

/// Who answered a request, for its metrics.
#[derive(Debug)]
pub(crate) enum Target {
    /// The front end itself (an error page, a redirect).
    App(Arc<AppCounters>),
    /// An instance. Its in-flight count includes this request until the tracker is dropped.
    Instance(Arc<Instance>),
}

/// One answered request: recorded in the metrics (and, for an instance, taken out of its
/// in-flight count) when dropped.
#[derive(Debug)]
pub(crate) struct Tracker {
    target: Target,
    start: Instant,
    class: usize,
    /// Fixed early for upgrades, whose connection lives on long after the `101`.
    latency: Option<Duration>,
    sent: u64,
    received: u64,
}

impl Tracker {
    /// `class` is the response's status class (see `metrics::class_of`). For
    /// [`Target::Instance`], the caller has already counted the request in flight.
    pub(crate) fn new(target: Target, start: Instant, class: usize) -> Tracker {
        Tracker {
            target,
            start,
            class,
            latency: None,
            sent: 0,
            received: 0,
        }
    }

    /// Ends the latency measurement now rather than when the tracker is dropped.
    pub(crate) fn stop_clock(&mut self) {
        self.latency = Some(self.start.elapsed());
    }

    pub(crate) fn add_bytes(&mut self, received: u64, sent: u64) {
        self.received += received;
        self.sent += sent;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let latency = self.latency.unwrap_or_else(|| self.start.elapsed());
        let app = match &self.target {
            Target::App(app) => {
                app.own.add(self.class);
                app
            }
            Target::Instance(instance) => {
                instance.in_flight.fetch_sub(1, Ordering::Relaxed);
                let counters = &instance.counters;
                counters.requests.add(self.class);
                if self.sent > 0 {
                    counters.sent.fetch_add(self.sent, Ordering::Relaxed);
                }
                if self.received > 0 {
                    counters
                        .received
                        .fetch_add(self.received, Ordering::Relaxed);
                }
                &instance.app
            }
        };
        app.requests.add(self.class);
        app.latency.record(latency);
        if self.sent > 0 {
            app.sent.fetch_add(self.sent, Ordering::Relaxed);
        }
        if self.received > 0 {
            app.received.fetch_add(self.received, Ordering::Relaxed);
        }
    }
}

/// What the front end sends a client: its own page or an instance's body.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    Page {
        body: Full<Bytes>,
        /// `None` for requests that named no app.
        tracker: Option<Tracker>,
    },
    Upstream {
        body: Incoming,
        /// Dropped at the end of the body, or with it.
        tracker: Option<Tracker>,
    },
}

impl ResponseBody {
    pub(crate) fn page(html: Bytes) -> ResponseBody {
        ResponseBody::Page {
            body: Full::new(html),
            tracker: None,
        }
    }

    pub(crate) fn upstream(body: Incoming, tracker: Tracker) -> ResponseBody {
        ResponseBody::Upstream {
            body,
            tracker: Some(tracker),
        }
    }

    /// Gives a page its tracker; an upstream body already has one.
    pub(crate) fn track(&mut self, new: Tracker) {
        if let ResponseBody::Page { tracker, .. } = self {
            *tracker = Some(new);
        }
    }

    #[cfg(test)]
    pub(crate) fn page_text(self) -> String {
        use http_body_util::BodyExt;
        let ResponseBody::Page { body, .. } = self else {
            panic!("not a page");
        };
        let bytes = futures_util::FutureExt::now_or_never(body.collect())
            .expect("a full body is ready")
            .unwrap_or_else(|never| match never {})
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Page { body, tracker } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if frame.is_none() {
                    tracker.take();
                }
                Poll::Ready(frame.map(|f| f.map_err(|never| match never {})))
            }
            ResponseBody::Upstream { body, tracker } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let (Some(data), Some(tracker)) = (frame.data_ref(), tracker.as_mut()) {
                            tracker.sent += data.len() as u64;
                        }
                    }
                    _ => {
                        tracker.take();
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Page { body, .. } => body.is_end_stream(),
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Page { body, .. } => body.size_hint(),
            ResponseBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// Why a request body could not be sent on.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Reading it from the client failed (the client went away, bad framing).
    Client(hyper::Error),
    /// It grew past `FrontendConfig::max_request_body` (a chunked body, whose size was not
    /// known in advance).
    TooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Client(_) => f.write_str("failed to read the request body from the client"),
            BodyError::TooLarge => {
                f.write_str("the request body is larger than the front end accepts")
            }
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Client(error) => Some(error),
            BodyError::TooLarge => None,
        }
    }
}

/// How long the rest of an HTTP/1 request body that was not read to its end is read, and
/// thrown away, after the answer: refused as too large, answered by the front end itself (no
/// such app, access denied, no ready instance), or left when the instance failed. A client that
/// is still sending when the answer is written would otherwise have its connection reset under
/// it (the server closed with unread bytes) and never read why; nginx's lingering close does
/// the same.
const LINGER: Duration = Duration::from_secs(10);

/// A request body that, dropped before its end, hands the rest of an HTTP/1 body to a task that
/// reads it for at most [`LINGER`]. HTTP/2 bodies are left alone: dropping one resets only its
/// stream. The front end wraps every client's body in one; `stamp up` wraps the API's too.
#[derive(Debug)]
pub struct Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    body: Option<B>,
    version: http::Version,
    /// It yielded its end (or an error): nothing left to read.
    done: bool,
}

/// A client's body, as the front end reads it.
pub(crate) type ClientBody = Lingering<Incoming>;

impl<B> Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    /// `version` is the request's: only HTTP/1 bodies linger.
    pub fn new(body: B, version: http::Version) -> Lingering<B> {
        Lingering {
            body: Some(body),
            version,
            done: false,
        }
    }
}

impl<B> Body for Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.done = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    fn drop(&mut self) {
        if self.version >= http::Version::HTTP_2 || self.is_end_stream() {
            return;
        }
        let (Some(mut body), Ok(runtime)) =
            (self.body.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

/// What the front end sends an instance: nothing (so the request can be sent again to another
/// instance) or the client's body, streamed once, counted, and cut at the size limit.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Empty,
    Streaming {
        body: ClientBody,
        limit: u64,
        received: u64,
        instance: Arc<Instance>,
    },
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let RequestBody::Streaming {
            received, instance, ..
        } = self
            && *received > 0
        {
            instance
                .counters
                .received
                .fetch_add(*received, Ordering::Relaxed);
            instance
                .app
                .received
                .fetch_add(*received, Ordering::Relaxed);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming {
                body,
                limit,
                received,
                ..
            } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    *received += data.len() as u64;
                    if *received > *limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Client)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming { body, .. } => body.size_hint(),
        }
    }
}

/// True when `error`, or an error it was caused by, is a request body cut at the size limit.
pub(crate) fn is_too_large(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if matches!(error.downcast_ref::<BodyError>(), Some(BodyError::TooLarge)) {
            return true;
        }
        current = error.source();
    }
    false
}
