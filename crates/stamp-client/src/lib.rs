//! A typed client for Stamp's REST API (`/api/v1`). Knows URLs and the error body; nothing else.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stamp_api_types::{self as wire, API_PREFIX, ErrorBody};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No connection could be made. The cause is the error's source (printed by `{:#}`).
    #[error("cannot reach the Stamp API at {url}; is `stamp up` running?")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A connection was made, but the exchange failed on the way: reset, closed, timed out, or
    /// a request body that could not be read.
    #[error("the request to the Stamp API at {url} failed")]
    Failed {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from the Stamp API: {0}")]
    Protocol(String),
    /// A name that cannot be one URL path segment (empty, `.` or `..`).
    #[error("{0:?} is not a valid name")]
    BadName(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// `base` is the API's origin, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| {
                let url = self.base.clone();
                if source.is_connect() {
                    ClientError::Unreachable { url, source }
                } else {
                    ClientError::Failed { url, source }
                }
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Protocol(format!("HTTP {status}: {text}")),
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.http.get(self.url(path))).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn status(&self) -> Result<wire::Status> {
        self.get("/status").await
    }

    pub async fn skus(&self) -> Result<Vec<wire::SkuView>> {
        self.get("/skus").await
    }

    pub async fn plans(&self) -> Result<Vec<wire::PlanView>> {
        self.get("/plans").await
    }

    pub async fn plan(&self, name: &str) -> Result<wire::PlanView> {
        self.get(&format!("/plans/{}", seg(name)?)).await
    }

    pub async fn create_plan(&self, req: &wire::CreatePlan) -> Result<wire::PlanView> {
        self.post("/plans", req).await
    }

    pub async fn scale_plan(&self, name: &str, workers: u32) -> Result<wire::PlanView> {
        self.post(
            &format!("/plans/{}/scale", seg(name)?),
            &wire::ScalePlan { workers },
        )
        .await
    }

    pub async fn update_plan(&self, name: &str, req: &wire::UpdatePlan) -> Result<wire::PlanView> {
        self.json(
            self.http
                .patch(self.url(&format!("/plans/{}", seg(name)?)))
                .json(req),
        )
        .await
    }

    pub async fn formation(&self, app: &str) -> Result<wire::FormationView> {
        self.get(&format!("/apps/{}/formation", seg(app)?)).await
    }

    /// Sets absolute instance counts per process type (Heroku's `ps:scale web=2 worker=1`).
    pub async fn scale_formation(
        &self,
        app: &str,
        counts: BTreeMap<String, i64>,
    ) -> Result<wire::FormationView> {
        self.json(
            self.http
                .put(self.url(&format!("/apps/{}/formation", seg(app)?)))
                .json(&wire::UpdateFormation { counts }),
        )
        .await
    }

    pub async fn pools(&self) -> Result<Vec<wire::PoolView>> {
        self.get("/pools").await
    }

    pub async fn set_pool(&self, size: &str, warm: i64) -> Result<wire::PoolView> {
        self.json(
            self.http
                .put(self.url(&format!("/pools/{}", seg(size)?)))
                .json(&wire::SetPool { warm }),
        )
        .await
    }

    pub async fn delete_plan(&self, name: &str) -> Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/plans/{}", seg(name)?))),
        )
        .await?;
        Ok(())
    }

    /// Sets a plan's autoscale setting from Azure's JSON, sent as it is.
    pub async fn set_autoscale(&self, plan: &str, json: String) -> Result<wire::AutoscaleView> {
        self.json(
            self.http
                .put(self.url(&format!("/plans/{}/autoscale", seg(plan)?)))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json),
        )
        .await
    }

    pub async fn autoscale(&self, plan: &str) -> Result<wire::AutoscaleView> {
        self.get(&format!("/plans/{}/autoscale", seg(plan)?)).await
    }

    pub async fn set_autoscale_enabled(
        &self,
        plan: &str,
        enabled: bool,
    ) -> Result<wire::AutoscaleView> {
        let verb = if enabled { "enable" } else { "disable" };
        self.post(
            &format!("/plans/{}/autoscale/{}", seg(plan)?, seg(verb)?),
            &(),
        )
        .await
    }

    pub async fn delete_autoscale(&self, plan: &str) -> Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/plans/{}/autoscale", seg(plan)?))),
        )
        .await?;
        Ok(())
    }

    pub async fn autoscale_history(
        &self,
        plan: &str,
        limit: usize,
        scaled_only: bool,
    ) -> Result<Vec<wire::AutoscaleRunView>> {
        self.json(
            self.http
                .get(self.url(&format!("/plans/{}/autoscale/history", seg(plan)?)))
                .query(&[
                    ("limit", limit.to_string()),
                    ("scaled", scaled_only.to_string()),
                ]),
        )
        .await
    }

    /// Records a custom metric sample for the plan's autoscale rules.
    pub async fn post_metric(&self, plan: &str, sample: &wire::MetricSample) -> Result<()> {
        self.send(
            self.http
                .post(self.url(&format!("/plans/{}/metrics", seg(plan)?)))
                .json(sample),
        )
        .await?;
        Ok(())
    }

    pub async fn apps(&self) -> Result<Vec<wire::AppView>> {
        self.get("/apps").await
    }

    pub async fn app(&self, name: &str) -> Result<wire::AppView> {
        self.get(&format!("/apps/{}", seg(name)?)).await
    }

    pub async fn create_app(&self, req: &wire::CreateApp) -> Result<wire::AppView> {
        self.post("/apps", req).await
    }

    pub async fn update_app(
        &self,
        name: &str,
        slot: Option<&str>,
        req: &wire::UpdateApp,
    ) -> Result<wire::AppView> {
        self.json(
            self.http
                .patch(self.url(&format!("/apps/{}", seg(name)?)))
                .query(&slot_query(slot))
                .json(req),
        )
        .await
    }

    pub async fn domains(&self, app: &str, slot: Option<&str>) -> Result<Vec<String>> {
        self.get_in(&format!("/apps/{}/domains", seg(app)?), slot)
            .await
    }

    pub async fn add_domain(
        &self,
        app: &str,
        slot: Option<&str>,
        domain: &str,
    ) -> Result<Vec<String>> {
        self.json(
            self.http
                .put(self.url(&format!("/apps/{}/domains/{}", seg(app)?, seg(domain)?)))
                .query(&slot_query(slot)),
        )
        .await
    }

    pub async fn remove_domain(
        &self,
        app: &str,
        slot: Option<&str>,
        domain: &str,
    ) -> Result<Vec<String>> {
        self.json(
            self.http
                .delete(self.url(&format!("/apps/{}/domains/{}", seg(app)?, seg(domain)?)))
                .query(&slot_query(slot)),
        )
        .await
    }

    pub async fn certificates(&self, app: &str) -> Result<Vec<wire::CertificateView>> {
        self.get(&format!("/apps/{}/certificates", seg(app)?)).await
    }

    pub async fn upload_certificate(
        &self,
        app: &str,
        req: &wire::UploadCertificate,
    ) -> Result<wire::CertificateView> {
        self.post(&format!("/apps/{}/certificates", seg(app)?), req)
            .await
    }

    pub async fn remove_certificate(&self, app: &str, thumbprint: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!(
            "/apps/{}/certificates/{}",
            seg(app)?,
            seg(thumbprint)?
        ))))
        .await?;
        Ok(())
    }

    pub async fn access_rules(
        &self,
        app: &str,
        slot: Option<&str>,
    ) -> Result<Vec<wire::AccessRuleView>> {
        self.get_in(&format!("/apps/{}/access-rules", seg(app)?), slot)
            .await
    }

    pub async fn add_access_rule(
        &self,
        app: &str,
        slot: Option<&str>,
        rule: &wire::AccessRuleView,
    ) -> Result<Vec<wire::AccessRuleView>> {
        self.json(
            self.http
                .post(self.url(&format!("/apps/{}/access-rules", seg(app)?)))
                .query(&slot_query(slot))
                .json(rule),
        )
        .await
    }

    pub async fn remove_access_rule(
        &self,
        app: &str,
        slot: Option<&str>,
        name: &str,
    ) -> Result<Vec<wire::AccessRuleView>> {
        self.json(
            self.http
                .delete(self.url(&format!("/apps/{}/access-rules/{}", seg(app)?, seg(name)?)))
                .query(&slot_query(slot)),
        )
        .await
    }

    pub async fn delete_app(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/apps/{}", seg(name)?))))
            .await?;
        Ok(())
    }

    pub async fn restart_app(&self, name: &str, slot: Option<&str>) -> Result<wire::AppView> {
        self.json(
            self.http
                .post(self.url(&format!("/apps/{}/restart", seg(name)?)))
                .query(&slot_query(slot))
                .json(&()),
        )
        .await
    }

    /// Uploads an archive (zip or tar.gz) as the app's next release. `body` streams the bytes so
    /// the caller can show progress; `len` is sent as Content-Length.
    pub async fn deploy<S>(
        &self,
        app: &str,
        slot: Option<&str>,
        len: u64,
        body: S,
    ) -> Result<wire::ReleaseView>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let req = self
            .http
            .post(self.url(&format!("/apps/{}/deploy", seg(app)?)))
            .query(&slot_query(slot))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        self.json(req).await
    }

    pub async fn releases(&self, app: &str, slot: Option<&str>) -> Result<Vec<wire::ReleaseView>> {
        self.get_in(&format!("/apps/{}/releases", seg(app)?), slot)
            .await
    }

    /// The app's instances: of every slot, or of `slot` only.
    pub async fn instances(
        &self,
        app: &str,
        slot: Option<&str>,
    ) -> Result<Vec<wire::InstanceView>> {
        self.get_in(&format!("/apps/{}/instances", seg(app)?), slot)
            .await
    }

    pub async fn settings(&self, app: &str, slot: Option<&str>) -> Result<wire::SettingsView> {
        self.get_in(&format!("/apps/{}/settings", seg(app)?), slot)
            .await
    }

    pub async fn update_settings(
        &self,
        app: &str,
        slot: Option<&str>,
        req: &wire::UpdateSettings,
    ) -> Result<wire::SettingsView> {
        self.json(
            self.http
                .patch(self.url(&format!("/apps/{}/settings", seg(app)?)))
                .query(&slot_query(slot))
                .json(req),
        )
        .await
    }

    pub async fn slots(&self, app: &str) -> Result<Vec<wire::SlotView>> {
        self.get(&format!("/apps/{}/slots", seg(app)?)).await
    }

    pub async fn create_slot(&self, app: &str, req: &wire::CreateSlot) -> Result<wire::SlotView> {
        self.post(&format!("/apps/{}/slots", seg(app)?), req).await
    }

    pub async fn update_slot(
        &self,
        app: &str,
        slot: &str,
        req: &wire::UpdateSlot,
    ) -> Result<wire::SlotView> {
        self.json(
            self.http
                .patch(self.url(&format!("/apps/{}/slots/{}", seg(app)?, seg(slot)?)))
                .json(req),
        )
        .await
    }

    pub async fn delete_slot(&self, app: &str, slot: &str) -> Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/apps/{}/slots/{}", seg(app)?, seg(slot)?))),
        )
        .await?;
        Ok(())
    }

    pub async fn set_routing(
        &self,
        app: &str,
        req: &wire::SetRouting,
    ) -> Result<Vec<wire::SlotView>> {
        self.json(
            self.http
                .put(self.url(&format!("/apps/{}/routing", seg(app)?)))
                .json(req),
        )
        .await
    }

    pub async fn swap(&self, app: &str, req: &wire::SwapRequest) -> Result<wire::SwapView> {
        self.post(&format!("/apps/{}/swap", seg(app)?), req).await
    }

    pub async fn swap_status(&self, app: &str) -> Result<wire::SwapView> {
        self.get(&format!("/apps/{}/swap", seg(app)?)).await
    }

    pub async fn rollback(
        &self,
        app: &str,
        slot: Option<&str>,
        version: u32,
    ) -> Result<wire::ReleaseView> {
        self.json(
            self.http
                .post(self.url(&format!("/apps/{}/rollback", seg(app)?)))
                .query(&slot_query(slot))
                .json(&wire::Rollback { version }),
        )
        .await
    }

    async fn get_in<T: DeserializeOwned>(&self, path: &str, slot: Option<&str>) -> Result<T> {
        self.json(self.http.get(self.url(path)).query(&slot_query(slot)))
            .await
    }

    /// The app's log (of one slot's view of it, with `slot`): the last `lines` lines, then,
    /// with `tail`, new lines as they come.
    pub async fn logs(
        &self,
        app: &str,
        slot: Option<&str>,
        lines: usize,
        tail: bool,
    ) -> Result<impl Stream<Item = Result<wire::LogLineView>> + use<>> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/apps/{}/logs", seg(app)?)))
                    .query(&[("lines", lines.to_string()), ("tail", tail.to_string())])
                    .query(&slot_query(slot)),
            )
            .await?;
        let chunks = resp.bytes_stream();
        Ok(ndjson(chunks))
    }
}

/// A name as one URL path segment: anything but unreserved characters percent-encoded, so a
/// name like `../plans/p` reaches the API as a (rejected) name instead of another route. URL
/// parsers resolve `.` and `..` even percent-encoded, so those (and the empty name) are refused.
fn seg(name: &str) -> Result<std::borrow::Cow<'_, str>> {
    if matches!(name, "" | "." | "..") {
        return Err(ClientError::BadName(name.to_string()));
    }
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if name.bytes().all(unreserved) {
        return Ok(std::borrow::Cow::Borrowed(name));
    }
    let mut out = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if unreserved(b) && b != b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// `?slot=` when a slot is named (the API defaults to production).
fn slot_query(slot: Option<&str>) -> Vec<(&'static str, &str)> {
    slot.map(|s| vec![("slot", s)]).unwrap_or_default()
}

/// Splits a byte stream into newline-delimited JSON values.
fn ndjson<S>(chunks: S) -> impl Stream<Item = Result<wire::LogLineView>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    futures_util::stream::unfold(
        (chunks, Vec::<u8>::new()),
        |(mut chunks, mut buf)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let item = serde_json::from_slice(&line[..line.len() - 1])
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                    return Some((item, (chunks, buf)));
                }
                match chunks.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => {
                        return Some((Err(ClientError::Protocol(e.to_string())), (chunks, buf)));
                    }
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::{Client, ClientError, seg};

    #[test]
    fn names_stay_one_path_segment() {
        let seg = |s| seg(s).map(|s| s.into_owned()).ok();
        assert_eq!(seg("hello").as_deref(), Some("hello"));
        assert_eq!(seg("www.example.com").as_deref(), Some("www.example.com"));
        assert_eq!(seg("../plans/p").as_deref(), Some("%2E%2E%2Fplans%2Fp"));
        assert_eq!(seg("*.example.com").as_deref(), Some("%2A%2Eexample%2Ecom"));
        assert_eq!(seg("a?b#c").as_deref(), Some("a%3Fb%23c"));
        assert_eq!(seg(".."), None);
        assert_eq!(seg("."), None);
        assert_eq!(seg(""), None);
    }

    /// The whole chain, as the CLI prints it (`{:#}` of anyhow).
    fn chain(e: &ClientError) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[tokio::test]
    async fn no_listener_is_unreachable_and_a_dropped_connection_is_not() {
        // A port that was just free: nothing listens on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let e = Client::new(&format!("http://{closed}"), "t")
            .status()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        let text = chain(&e);
        assert!(text.contains("is `stamp up` running?"), "{text}");
        // The cause is told once, by the source, not again in the message.
        assert_eq!(text.matches("error sending request").count(), 1, "{text}");

        // A server that takes the connection and closes it without an answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            drop(conn);
        });
        let e = Client::new(&format!("http://{addr}"), "t")
            .status()
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(matches!(e, ClientError::Failed { .. }), "{e:?}");
        let text = chain(&e);
        assert!(
            text.starts_with(&format!(
                "the request to the Stamp API at http://{addr} failed"
            )),
            "{text}"
        );
        assert!(!text.contains("is `stamp up` running"), "{text}");
    }
}
