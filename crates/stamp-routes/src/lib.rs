//! Routing snapshots, PURE: which hostnames exist and which instances serve each of them.
//!
//! The controller's view of the world (apps and observed instances) goes in; an immutable
//! [`RouteTable`] comes out, which the front end swaps in atomically and reads on every request
//! without a lock. The only mutable part is each app's round-robin cursor, an atomic, so picking
//! a backend never blocks. No IO, no async runtime, no clock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use stamp_model::{AppName, InstanceId, InstanceState, ObservedInstance};

/// One instance in rotation: where the front end sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub instance: InstanceId,
    pub addr: SocketAddr,
}

/// An app's backends and its round-robin cursor.
#[derive(Debug)]
pub struct AppRoute {
    pub app: AppName,
    pub backends: Vec<Backend>,
    /// Counts picks; `cursor % len` is the next backend. Relaxed is enough: the cursor only
    /// spreads load, it orders nothing else.
    cursor: AtomicUsize,
}

impl AppRoute {
    pub fn new(app: AppName, backends: Vec<Backend>) -> AppRoute {
        AppRoute {
            app,
            backends,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Round robin: successive calls return backends in order b0, b1, b2, b0, ...; `None` when
    /// the app has no backend. The index lets a retry continue with [`AppRoute::next_after`].
    pub fn pick(&self) -> Option<(usize, &Backend)> {
        let len = self.backends.len();
        if len == 0 {
            return None;
        }
        // fetch_add wraps on overflow; the order then skips once, which is harmless.
        let index = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        Some((index, &self.backends[index]))
    }

    /// The backend after `index`, wrapping around; `None` when the app has no backend. Does not
    /// move the cursor: a retry should not shift the rotation for everyone else.
    pub fn next_after(&self, index: usize) -> Option<(usize, &Backend)> {
        let len = self.backends.len();
        if len == 0 {
            return None;
        }
        let next = index.wrapping_add(1) % len;
        Some((next, &self.backends[next]))
    }
}

/// What a Host header resolves to.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// No app is served at that host (or the host is not ours, or not a valid name).
    NoSuchApp,
    /// An app; its backend list may be empty (no ready instance).
    App(&'a AppRoute),
}

/// An immutable routing snapshot: `<app>.<domain>` → the app's ready web instances.
#[derive(Debug)]
pub struct RouteTable {
    /// Lowercase, without leading or trailing dots.
    domain: String,
    /// Keyed by app name (the host's first label), so a lookup strips the domain and hashes once.
    apps: HashMap<String, Arc<AppRoute>>,
}

impl RouteTable {
    /// A table that serves no app: every host is `NoSuchApp`.
    pub fn empty(domain: &str) -> RouteTable {
        RouteTable {
            domain: normalise_domain(domain),
            apps: HashMap::new(),
        }
    }

    /// Hosts are `<app>.<domain>` for every app in `apps`. An app's backends are its observed
    /// instances that are [`InstanceState::Ready`], of process type `web`, in slot `production`,
    /// at `127.0.0.1:<port>`, ordered by worker index then instance id, so the round-robin order
    /// is the same in every snapshot built from the same state. Instances of apps not in `apps`
    /// are ignored (the app is being deleted, or the observation is stale).
    pub fn build(domain: &str, apps: &[AppName], instances: &[ObservedInstance]) -> RouteTable {
        let mut ready: HashMap<&AppName, Vec<&ObservedInstance>> =
            apps.iter().map(|app| (app, Vec::new())).collect();
        for instance in instances {
            let key = &instance.spec.key;
            if instance.state != InstanceState::Ready
                || !key.process_type.is_web()
                || !key.slot.is_production()
            {
                continue;
            }
            if let Some(list) = ready.get_mut(&key.app) {
                list.push(instance);
            }
        }
        let apps = ready
            .into_iter()
            .map(|(app, mut list)| {
                list.sort_by(|a, b| {
                    (a.spec.key.worker.index, &a.id).cmp(&(b.spec.key.worker.index, &b.id))
                });
                let backends = list
                    .into_iter()
                    .map(|i| Backend {
                        instance: i.id.clone(),
                        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), i.port),
                    })
                    .collect();
                (
                    app.as_str().to_string(),
                    Arc::new(AppRoute::new(app.clone(), backends)),
                )
            })
            .collect();
        RouteTable {
            domain: normalise_domain(domain),
            apps,
        }
    }

    /// The domain apps are served under (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Resolves a Host header (or URI authority). Case-insensitive; a port
    /// (`hello.localhost:8080`) and a trailing dot are ignored. IPv6 literals, IP addresses,
    /// hosts outside the domain and anything malformed are `NoSuchApp`.
    pub fn lookup(&self, host: &str) -> Lookup<'_> {
        let Some(label) = app_label(host, &self.domain) else {
            return Lookup::NoSuchApp;
        };
        match self.apps.get(label.as_ref()) {
            Some(route) => Lookup::App(route),
            None => Lookup::NoSuchApp,
        }
    }

    /// Every app route in this snapshot, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &AppRoute> {
        self.apps.values().map(|r| &**r)
    }

    /// Every backend in this snapshot (an address appears once per app that routes to it).
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.apps.values().flat_map(|r| r.backends.iter())
    }
}

fn normalise_domain(domain: &str) -> String {
    domain.trim_matches('.').to_ascii_lowercase()
}

/// The app label of `host` under `domain`, lowercased, or `None` when the host is not
/// `<label>.<domain>[.][:port]`. Allocates only when the host has uppercase letters.
fn app_label<'h>(host: &'h str, domain: &str) -> Option<Cow<'h, str>> {
    // IPv6 literals (`[::1]:80`) are never app hosts.
    if host.starts_with('[') {
        return None;
    }
    let name = match host.split_once(':') {
        None => host,
        Some((name, port)) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            name
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let (label, rest) = name.split_once('.')?;
    if !rest.eq_ignore_ascii_case(domain) || label.is_empty() {
        return None;
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    if label.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(label.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name).expect("valid app name")
    }

    fn instance(
        app_name: &str,
        id: &str,
        worker: u32,
        state: InstanceState,
        process_type: &str,
        slot: &str,
        port: u16,
    ) -> ObservedInstance {
        let spec = stamp_model::fixtures::spec_in(app_name, slot, process_type, worker, 1);
        stamp_model::fixtures::observed(id, spec, state, port)
    }

    /// Builds a table for apps `hello` and `world` and checks each app's backends
    /// (`instance@port`, in round-robin order).
    fn check_build(instances: &[ObservedInstance], expected: &[(&str, &[&str])]) {
        let table = RouteTable::build("localhost", &[app("hello"), app("world")], instances);
        for (name, want) in expected {
            let Lookup::App(route) = table.lookup(&format!("{name}.localhost")) else {
                panic!("{name} should be routed");
            };
            let got: Vec<String> = route
                .backends
                .iter()
                .map(|b| {
                    assert_eq!(b.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
                    format!("{}@{}", b.instance, b.addr.port())
                })
                .collect();
            assert_eq!(got, *want, "backends of {name}");
        }
    }

    #[test]
    fn build_keeps_ready_production_web_instances_in_worker_order() {
        use InstanceState::*;
        check_build(&[], &[("hello", &[]), ("world", &[])]);
        check_build(
            &[
                instance("hello", "h-2", 2, Ready, "web", "production", 3002),
                instance("hello", "h-0b", 0, Ready, "web", "production", 3001),
                instance("hello", "h-0a", 0, Ready, "web", "production", 3000),
                instance("hello", "h-1", 1, Ready, "web", "production", 3003),
            ],
            &[
                ("hello", &["h-0a@3000", "h-0b@3001", "h-1@3003", "h-2@3002"]),
                ("world", &[]),
            ],
        );
        check_build(
            &[
                instance("hello", "starting", 0, Starting, "web", "production", 1),
                instance("hello", "crashed", 0, Crashed, "web", "production", 2),
                instance("hello", "draining", 0, Draining, "web", "production", 3),
                instance("hello", "stopping", 0, Stopping, "web", "production", 4),
                instance("hello", "worker", 0, Ready, "worker", "production", 5),
                instance("hello", "staging", 0, Ready, "web", "staging", 6),
                instance("hello", "ok", 1, Ready, "web", "production", 7),
                instance("world", "w", 0, Ready, "web", "production", 8),
                instance("deleted", "d", 0, Ready, "web", "production", 9),
            ],
            &[("hello", &["ok@7"]), ("world", &["w@8"])],
        );
    }

    #[test]
    fn build_ignores_instances_of_unknown_apps() {
        let table = RouteTable::build(
            "localhost",
            &[app("hello")],
            &[instance(
                "gone",
                "g",
                0,
                InstanceState::Ready,
                "web",
                "production",
                9,
            )],
        );
        assert!(matches!(table.lookup("gone.localhost"), Lookup::NoSuchApp));
        assert_eq!(table.backends().count(), 0);
    }

    /// Looks `host` up in a table with app `hello` under `domain`; `expected` is whether it routes.
    fn check_lookup(domain: &str, host: &str, expected: bool) {
        let table = RouteTable::build(domain, &[app("hello")], &[]);
        let got = matches!(table.lookup(host), Lookup::App(r) if r.app.as_str() == "hello");
        assert_eq!(got, expected, "lookup({host:?}) under {domain:?}");
    }

    #[test]
    fn lookup_normalises_the_host() {
        for (domain, host, expected) in [
            ("localhost", "hello.localhost", true),
            ("localhost", "HELLO.localhost", true),
            ("localhost", "Hello.LocalHost", true),
            ("localhost", "hello.localhost:8080", true),
            ("localhost", "HELLO.localhost:8080", true),
            ("localhost", "hello.localhost.", true),
            ("localhost", "hello.localhost.:80", true),
            ("Apps.Example.COM.", "hello.apps.example.com", true),
            ("apps.example.com", "hello.APPS.example.com", true),
            ("localhost", "other.localhost", false),
            ("localhost", "localhost", false),
            ("localhost", "hello", false),
            ("localhost", "hello.localhost:", false),
            ("localhost", "hello.localhost:80:80", false),
            ("localhost", "hello.localhost:http", false),
            ("localhost", "x.hello.localhost", false),
            ("localhost", "hello.example.com", false),
            ("localhost", ".localhost", false),
            ("localhost", "hello..localhost", false),
            ("localhost", "[::1]:8080", false),
            ("localhost", "[::1]", false),
            ("localhost", "127.0.0.1:8080", false),
            ("localhost", "", false),
            ("localhost", "hel lo.localhost", false),
            ("localhost", "hello.localhost/x", false),
        ] {
            check_lookup(domain, host, expected);
        }
    }

    fn three() -> AppRoute {
        AppRoute::new(
            app("hello"),
            (0..3)
                .map(|i| Backend {
                    instance: InstanceId(format!("b{i}")),
                    addr: SocketAddr::from(([127, 0, 0, 1], 4000 + i)),
                })
                .collect(),
        )
    }

    #[test]
    fn pick_is_round_robin() {
        let route = three();
        let picks: Vec<String> = (0..9)
            .map(|_| {
                let (index, backend) = route.pick().expect("has backends");
                assert_eq!(backend, &route.backends[index]);
                backend.instance.to_string()
            })
            .collect();
        assert_eq!(
            picks,
            ["b0", "b1", "b2", "b0", "b1", "b2", "b0", "b1", "b2"]
        );
        assert!(AppRoute::new(app("empty"), vec![]).pick().is_none());
    }

    #[test]
    fn next_after_wraps_and_leaves_the_cursor_alone() {
        let route = three();
        for (index, expected) in [(0, 1), (1, 2), (2, 0)] {
            let (next, backend) = route.next_after(index).expect("has backends");
            assert_eq!(next, expected);
            assert_eq!(backend.instance.0, format!("b{expected}"));
        }
        assert_eq!(route.pick().map(|(i, _)| i), Some(0));
        assert!(AppRoute::new(app("empty"), vec![]).next_after(0).is_none());
    }

    #[test]
    fn backends_lists_every_address() {
        use InstanceState::Ready;
        let table = RouteTable::build(
            "localhost",
            &[app("hello"), app("world")],
            &[
                instance("hello", "a", 0, Ready, "web", "production", 1),
                instance("hello", "b", 1, Ready, "web", "production", 2),
                instance("world", "c", 0, Ready, "web", "production", 3),
            ],
        );
        let mut ports: Vec<u16> = table.backends().map(|b| b.addr.port()).collect();
        ports.sort_unstable();
        assert_eq!(ports, [1, 2, 3]);
        assert_eq!(table.domain(), "localhost");
        assert_eq!(RouteTable::empty("LocalHost.").domain(), "localhost");
    }
}
