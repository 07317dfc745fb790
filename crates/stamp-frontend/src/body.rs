//! Bodies on both sides of the proxy, streamed frame by frame (never buffered), and the
//! in-flight count that a response body holds until it has been sent or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// One request in flight to a backend: counted from the pick until the response body ends or is
/// dropped, so `Frontend::is_drained` knows when an instance can be stopped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn start(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the front end sends a client: its own page or an instance's body.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    Page(Full<Bytes>),
    Upstream {
        body: Incoming,
        /// Dropped at the end of the body, or with it.
        in_flight: Option<InFlight>,
    },
}

impl ResponseBody {
    pub(crate) fn page(html: Bytes) -> ResponseBody {
        ResponseBody::Page(Full::new(html))
    }

    pub(crate) fn upstream(body: Incoming, in_flight: InFlight) -> ResponseBody {
        ResponseBody::Upstream {
            body,
            in_flight: Some(in_flight),
        }
    }

    #[cfg(test)]
    pub(crate) fn page_text(self) -> String {
        use http_body_util::BodyExt;
        let ResponseBody::Page(full) = self else {
            panic!("not a page");
        };
        let bytes = futures_util::FutureExt::now_or_never(full.collect())
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
            ResponseBody::Page(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ResponseBody::Upstream { body, in_flight } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    in_flight.take();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Page(full) => full.is_end_stream(),
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Page(full) => full.size_hint(),
            ResponseBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// What the front end sends an instance: nothing (so the request can be sent again to another
/// instance) or the client's body, streamed once.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Empty,
    Streaming(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.size_hint(),
        }
    }
}
