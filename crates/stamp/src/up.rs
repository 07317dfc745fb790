//! `stamp up`: a whole stamp in one process — controller (API), front end, one worker agent,
//! SQLite store — on one machine. Everything is validated and every port bound before anything
//! starts; Ctrl-C or SIGTERM stops it gracefully.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use stamp_artifact::BlobStore;
use stamp_controller::autoscale::{AppCounters, WorkerUsage};
use stamp_controller::{CertSummary, Controller, ControllerConfig, FrontEnd, Node};
use stamp_frontend::{Frontend, FrontendConfig, Lingering};
use stamp_logs::LogBook;
use stamp_model::sku::Capacity;
use stamp_model::{
    Certificate, InstanceSpec, ObservedInstance, PoolStatus, PoolTarget, SystemClock, WallClock,
};
use stamp_routes::RouteTable;
use stamp_store::Store;
use stamp_worker::{WorkerAgent, WorkerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Global;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address of the REST API (and, later, the dashboard).
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// Address of the front end (HTTP); apps are served here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Address of the front end (HTTPS, SNI): the default certificate is a self-signed
    /// `*.<domain>` in <data dir>/tls (replace the files to use your own), plus the
    /// certificates uploaded per app.
    #[arg(long, default_value = "0.0.0.0:8443")]
    https: SocketAddr,
    /// Apps are reachable at <app>.<domain>.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// CPU cores this node offers to workers [default: the machine's cores].
    #[arg(long)]
    node_cpus: Option<f64>,
    /// Memory in MiB this node offers to workers [default: the machine's memory].
    #[arg(long)]
    node_memory_mib: Option<u32>,
    /// A proxy or load balancer in front of Stamp (CIDR, repeatable): only from these
    /// addresses is `X-Forwarded-For` trusted to name the client.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// How often autoscale settings are evaluated (Azure: every 30 to 60 s), e.g. 30s, 5s.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    autoscale_interval: std::time::Duration,
    /// Largest deploy upload accepted, in MiB.
    #[arg(long, default_value_t = 512)]
    max_upload_mib: u64,
    /// How many milliseconds of CPU count as one "CPU minute" of the Free and Shared daily
    /// quotas. For tests only: lets a quota run out in seconds.
    #[arg(long, default_value_t = 60_000, hide = true)]
    cpu_minute_ms: u64,
    /// Nice value of Stamp itself (front end, agent, controller), -20 to 19. App instances run
    /// at the value Stamp was started with, so by default the front end is ahead of the apps it
    /// serves and is not preempted by them on a shared core. Lowering it needs root or
    /// CAP_SYS_NICE; without, Stamp runs on at the priority it has.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
}

/// Files `stamp up` keeps in the data directory.
pub const API_URL_FILE: &str = "api-url";
pub const HTTP_URL_FILE: &str = "http-url";
pub const TOKEN_FILE: &str = "admin-token";
pub const HTTPS_URL_FILE: &str = "https-url";

/// The key that signs affinity cookies: kept so cookies stay valid across restarts.
fn affinity_key(data: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data.join("affinity-key");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(bytes) = hex::decode(text.trim())
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    write_file(&path, &hex::encode(key), 0o600)?;
    Ok(key)
}

/// The front end's default certificate: made on first start, kept so clients can trust it.
fn default_certificate(
    data: &Path,
    domain: &str,
    clock: &dyn WallClock,
) -> anyhow::Result<(String, String)> {
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("default.crt"), dir.join("default.key"));
    if !cert_path.exists() || !key_path.exists() {
        let (cert, key) = stamp_frontend::tls::self_signed(domain, clock.now())
            .context("make the default self-signed certificate")?;
        write_file(&key_path, &key, 0o600)?;
        write_file(&cert_path, &cert, 0o644)?;
    }
    let cert = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("read {}", cert_path.display()))?;
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("read {}", key_path.display()))?;
    Ok((cert, key))
}

struct AgentNode(WorkerAgent);

impl Node for AgentNode {
    fn set_desired(&self, specs: Vec<InstanceSpec>) {
        self.0.set_desired(specs);
    }
    fn observed(&self) -> watch::Receiver<Vec<ObservedInstance>> {
        self.0.observed()
    }
    fn usage(&self) -> Vec<WorkerUsage> {
        self.0
            .usage()
            .borrow()
            .iter()
            .map(|u| WorkerUsage {
                plan: u.key.worker.plan.clone(),
                worker: u.key.worker.index,
                app: u.key.app.clone(),
                instance: u.id.0.clone(),
                cpu_cores: u.cpu_cores,
                memory_bytes: u.memory_bytes,
                outbound_connections: u.outbound_connections,
                at_ms: u.at_ms,
            })
            .collect()
    }
    fn set_pools(&self, targets: Vec<PoolTarget>) {
        self.0.set_pools(targets);
    }
    fn pools(&self) -> Vec<PoolStatus> {
        self.0.pools().borrow().clone()
    }
}

struct FrontendLink(Frontend);

impl FrontEnd for FrontendLink {
    fn set_routes(&self, table: RouteTable) {
        self.0.set_routes(table);
    }
    fn set_certificates(&self, certs: &[Certificate]) {
        self.0.set_certificates(certs);
    }
    fn render_metrics(&self, out: &mut String) {
        self.0.render_metrics(out);
    }
    fn request_counters(&self) -> Vec<AppCounters> {
        self.0
            .app_metrics()
            .into_iter()
            .map(|m| AppCounters {
                app: m.app.to_string(),
                requests: m.requests,
                errors_5xx: m.errors_5xx,
                in_flight: m.in_flight,
                received_bytes: m.received_bytes,
                sent_bytes: m.sent_bytes,
                latency_sum: m.latency_sum,
                latency_count: m.latency_count,
            })
            .collect()
    }
    fn inspect_certificate(&self, cert_pem: &str, key_pem: &str) -> Result<CertSummary, String> {
        let info = stamp_frontend::tls::inspect(cert_pem, key_pem).map_err(|e| e.to_string())?;
        Ok(CertSummary {
            thumbprint: info.thumbprint,
            hostnames: info.hostnames,
            not_after: info.not_after,
        })
    }
}

fn check_domain(domain: &str) -> anyhow::Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 200
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !ok {
        bail!(
            "--domain {domain:?} is not a lowercase DNS name (e.g. localhost or apps.example.com)"
        );
    }
    Ok(())
}

/// An autoscale interval (`30s`, `5m`, `1h`, `PT30S`): at least one second, at most an hour.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::autoscale::parse_duration(s.trim())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s:?}: use from 1s to 1h"));
    }
    Ok(d)
}

fn machine_capacity() -> Capacity {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    Capacity {
        millicores: cores * 1000,
        memory_mib: u32::try_from(mem_kib / 1024).unwrap_or(u32::MAX),
    }
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with the given mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// The admin token: created on first start, kept in the data directory (mode 0600). A new
/// token (the file was deleted) revokes the old one.
fn admin_token(data: &Path, store: &Store, clock: &dyn WallClock) -> anyhow::Result<()> {
    let path = data.join(TOKEN_FILE);
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let t = hex::encode(bytes);
            write_file(&path, &t, 0o600)?;
            t
        }
    };
    store.replace_tokens(
        "owner",
        &stamp_controller::api::token_hash(&token),
        clock.now(),
    )?;
    Ok(())
}

/// Settings (often secrets), the token, the store and every app's code live in the data
/// directory: everything in it is its owner's only (0700 directories, 0600 files), except that
/// the directory itself and the agent's `worker/` are 0711, so the apps' own users can reach
/// their instance directories (each 0700, theirs) without listing or reading anything else.
/// Files created later are private too: the process's umask is 077.
fn protect_data_dir(data: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let set = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restrict {} to its owner", path.display()))
    };
    set(data, 0o711)?;
    for entry in std::fs::read_dir(data).with_context(|| format!("list {}", data.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if entry.file_name() == "worker" || kind.is_symlink() {
            continue;
        }
        set(&entry.path(), if kind.is_dir() { 0o700 } else { 0o600 })?;
    }
    Ok(())
}

/// Puts Stamp at `nice` and its app instances at the value it was started with (see
/// `stamp_worker::priority`).
fn set_priority(nice: i32) {
    use stamp_worker::priority;
    let started = match priority::own_nice() {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(%error, "cannot read Stamp's priority; leaving it as it is");
            return;
        }
    };
    if started == nice {
        return;
    }
    match priority::set_own_nice(nice, started) {
        // Ahead of the apps: they are put back at the starting value, which a child may always
        // do (a higher nice value needs no privilege).
        Ok(()) if nice < started => {
            priority::set_app_nice(started);
            tracing::info!(
                nice,
                apps = started,
                "Stamp runs at nice {nice}, app instances at {started}"
            );
        }
        // Behind its starting value: the apps stay with Stamp, as a child could not go back up.
        Ok(()) => tracing::info!(nice, "Stamp and its app instances run at nice {nice}"),
        Err(error) => {
            tracing::warn!(%error, nice, "cannot change Stamp's priority (needs root or CAP_SYS_NICE); the front end runs at the apps' priority");
        }
    }
}

pub async fn run(global: &Global, args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // rustls warns once per handshake that names an IP address as SNI: any client could
            // flood the log with that.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rustls=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // Validate everything before binding a port.
    check_domain(&args.domain)?;
    let mut capacity = machine_capacity();
    if let Some(cpus) = args.node_cpus {
        if !(cpus > 0.0 && cpus <= 4096.0) {
            bail!("--node-cpus must be a number of cores above 0, e.g. 4 or 1.5; got {cpus}");
        }
        capacity.millicores = (cpus * 1000.0).round() as u32;
    }
    if let Some(mib) = args.node_memory_mib {
        if mib < 256 {
            bail!("--node-memory-mib must be at least 256; got {mib}");
        }
        capacity.memory_mib = mib;
    }
    if args.max_upload_mib == 0 {
        bail!("--max-upload-mib must be at least 1");
    }
    if !(-20..=19).contains(&args.nice) {
        bail!(
            "--nice must be from -20 (highest priority) to 19; got {}",
            args.nice
        );
    }
    set_priority(args.nice);

    let data = global.data_dir();
    for sub in ["", "artifacts", "logs", "worker", "tmp"] {
        std::fs::create_dir_all(data.join(sub))
            .with_context(|| format!("create data directory {}", data.join(sub).display()))?;
    }
    protect_data_dir(&data)?;
    let clock: Arc<dyn WallClock> = Arc::new(SystemClock);
    let store = Store::open(&data.join("stamp.db")).context("open the store")?;
    admin_token(&data, &store, clock.as_ref())?;
    let blobs = BlobStore::open(&data.join("artifacts")).context("open the artifact store")?;
    blobs
        .clean_tmp()
        .context("remove unfinished uploads of a previous run")?;
    let logs = LogBook::open(&data.join("logs"), clock.clone()).context("open the logs")?;

    let api_listener = TcpListener::bind(args.api)
        .await
        .with_context(|| format!("listen on {} for the API (--api)", args.api))?;
    let http_listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listen on {} for apps (--http)", args.http))?;
    let https_listener = TcpListener::bind(args.https)
        .await
        .with_context(|| format!("listen on {} for apps over HTTPS (--https)", args.https))?;
    let api_addr = api_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let https_addr = https_listener.local_addr()?;

    let frontend = Frontend::new(FrontendConfig {
        domain: args.domain.clone(),
        https_port: Some(https_addr.port()),
        affinity_key: Some(affinity_key(&data)?),
        trusted_proxies: args.trusted_proxies.clone(),
        ..FrontendConfig::default()
    });
    let (cert, key) = default_certificate(&data, &args.domain, clock.as_ref())?;
    frontend
        .set_default_certificate(&cert, &key)
        .with_context(|| {
            format!(
                "load the default certificate from {} (replace or delete the files in it)",
                data.join("tls").display()
            )
        })?;
    let drained = {
        let f = frontend.clone();
        Arc::new(move |addr| f.is_drained(addr))
    };
    let agent = WorkerAgent::start(WorkerConfig {
        dir: data.join("worker"),
        artifacts: blobs.clone(),
        logs: logs.clone(),
        domain: args.domain.clone(),
        drained,
        clock: clock.clone(),
        sample_interval: WorkerConfig::DEFAULT_SAMPLE_INTERVAL,
    })
    .await
    .context("start the worker agent")?;

    let controller = Controller::new(
        ControllerConfig {
            domain: args.domain.clone(),
            http_port: http_addr.port(),
            capacity,
            max_upload_bytes: args.max_upload_mib * 1024 * 1024,
            tmp_dir: data.join("tmp"),
            cpu_minute_ms: args.cpu_minute_ms.max(1),
        },
        store,
        blobs,
        logs,
        clock,
        Arc::new(AgentNode(agent.clone())),
        Arc::new(FrontendLink(frontend.clone())),
    );
    controller.sync().context("load desired state")?;
    // A swap interrupted by a stop ends now: completed or reverted, never half-swapped.
    controller.resume_swaps();
    let routes_task = tokio::spawn({
        let c = controller.clone();
        async move { c.run_routes().await }
    });
    let metrics_task = tokio::spawn({
        let c = controller.clone();
        async move { c.run_metrics().await }
    });
    let autoscale_task = tokio::spawn({
        let (c, every) = (controller.clone(), args.autoscale_interval);
        async move { c.run_autoscale(every).await }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let frontend_task = tokio::spawn({
        let f = frontend.clone();
        let stop = stopped(stop_rx.clone());
        async move { f.serve(http_listener, stop).await }
    });
    let https_task = tokio::spawn({
        let f = frontend.clone();
        let stop = stopped(stop_rx.clone());
        async move { f.serve_tls(https_listener, stop).await }
    });
    let api_task = tokio::spawn({
        let app = stamp_controller::api::router(controller.clone())
            .layer(axum::middleware::map_request(lingering));
        let stop = stopped(stop_rx.clone());
        async move {
            axum::serve(api_listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    });

    let api_url = format!("http://{api_addr}");
    let loopback = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        } else {
            a
        }
    };
    let shown_http = loopback(http_addr);
    write_file(
        &data.join(HTTPS_URL_FILE),
        &format!("https://{}", loopback(https_addr)),
        0o644,
    )?;
    write_file(&data.join(API_URL_FILE), &api_url, 0o644)?;
    write_file(
        &data.join(HTTP_URL_FILE),
        &format!("http://{shown_http}"),
        0o644,
    )?;
    let port = match http_addr.port() {
        80 => String::new(),
        p => format!(":{p}"),
    };
    println!("Stamp {} is up.", env!("CARGO_PKG_VERSION"));
    println!("  data directory  {}", data.display());
    println!(
        "  API             {api_url}  (admin token in {})",
        data.join(TOKEN_FILE).display()
    );
    println!(
        "  apps            http://<app>.{}{port}  (front end on {http_addr}, HTTPS on {https_addr})",
        args.domain
    );
    println!(
        "  node            {:.1} cores, {} MiB for workers",
        f64::from(capacity.millicores) / 1000.0,
        capacity.memory_mib
    );
    println!("Press Ctrl-C to stop.");

    wait_for_signal().await?;
    println!("Stopping: draining the front end, then stopping instances ...");
    controller.begin_shutdown();
    let _ = stop_tx.send(true);
    // The front end finishes in-flight requests (bounded by its shutdown grace) before the
    // instances serving them get SIGTERM.
    for task in [frontend_task, https_task] {
        match task.await {
            Ok(Err(e)) => tracing::warn!("front end stopped with an error: {e:#}"),
            Err(e) => tracing::warn!("front end task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    agent.shutdown().await;
    match tokio::time::timeout(API_SHUTDOWN_GRACE, api_task).await {
        Ok(Ok(Err(e))) => tracing::warn!("API server stopped with an error: {e:#}"),
        Err(_) => {
            tracing::warn!("API connections still open after {API_SHUTDOWN_GRACE:?}; closing")
        }
        _ => {}
    }
    routes_task.abort();
    metrics_task.abort();
    autoscale_task.abort();
    println!("Stopped.");
    Ok(())
}

/// How long open API requests may take to finish when the stamp stops.
const API_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The API's request bodies linger as the front end's do: an answer given before the body
/// was read (a deploy to an unknown app, a wrong token, an upload over the limit) reaches a
/// client that is still sending instead of a reset connection.
async fn lingering(request: axum::extract::Request) -> axum::extract::Request {
    let version = request.version();
    request.map(|body| axum::body::Body::new(Lingering::new(body, version)))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
