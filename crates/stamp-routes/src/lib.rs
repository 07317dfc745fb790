//! Routing snapshots, PURE: which hostnames exist, which instances serve each of them, and how
//! one of them is picked for a request.
//!
//! The controller's view of the world (apps with their [`SiteConfig`] and observed instances)
//! goes in; an immutable [`RouteTable`] comes out, which the front end swaps in atomically and
//! reads on every request without a lock. The only mutable part is each app's round-robin
//! cursor, an atomic, so picking a backend never blocks. Load (requests in flight) and
//! randomness come in as arguments. No IO, no async runtime, no clock.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use stamp_model::site::DEFAULT_MAX_UNHEALTHY_PERCENT;
use stamp_model::{
    AppName, Balancing, InstanceId, InstanceState, ObservedInstance, SiteConfig, SlotName,
};

/// One instance in rotation: where the front end sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub instance: InstanceId,
    pub addr: SocketAddr,
}

/// One slot of an app as the table serves it: the slot's own front-end configuration, the lane
/// its instances run on (see `stamp_model::slots`) and, for a non-production slot, its share of
/// production's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRoute {
    pub app: AppName,
    pub slot: SlotName,
    pub lane: u32,
    pub site: SiteConfig,
    /// Azure's ramp-up rule of a non-production slot: `None`, no rule (no random routing, no
    /// opt-in); `Some(0)`, opt-in only; `Some(p)`, `p` % of production's new clients.
    pub routing: Option<u8>,
}

impl From<(AppName, SiteConfig)> for SiteRoute {
    /// A production slot on lane 0.
    fn from((app, site): (AppName, SiteConfig)) -> SiteRoute {
        SiteRoute {
            app,
            slot: SlotName::production(),
            lane: 0,
            site,
            routing: None,
        }
    }
}

/// A slot that takes part of production's traffic (Azure's `rampUpRules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp {
    pub slot: SlotName,
    /// Share of new clients, 0–100 (0: only clients who opt in).
    pub percent: u8,
    /// The slot's route in [`RouteTable::routes`].
    pub route: usize,
}

/// An app slot's configuration, its backends and its round-robin cursor.
#[derive(Debug)]
pub struct AppRoute {
    pub app: AppName,
    pub slot: SlotName,
    pub site: Arc<SiteConfig>,
    pub backends: Vec<Backend>,
    /// On production routes only: the slots that take a share of its clients, in slot order.
    pub ramp: Vec<Ramp>,
    /// Position in [`RouteTable::routes`], so the front end can keep per-app state in a plain
    /// vector next to the table instead of hashing the name on every request.
    index: usize,
    /// Counts picks; `cursor % len` is the next backend. Relaxed is enough: the cursor only
    /// spreads load, it orders nothing else.
    cursor: AtomicUsize,
}

impl AppRoute {
    pub fn new(app: AppName, site: Arc<SiteConfig>, backends: Vec<Backend>) -> AppRoute {
        AppRoute {
            app,
            slot: SlotName::production(),
            site,
            backends,
            ramp: Vec::new(),
            index: 0,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Where this route is in its table's [`RouteTable::routes`].
    pub fn index(&self) -> usize {
        self.index
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

    /// Power of two choices over requests in flight: the round-robin candidate and a second,
    /// different backend chosen with `random`; the second wins only when it has strictly fewer
    /// requests in flight (`load(index)`), so ties, and an idle app, go round robin. `random`
    /// is called only when there are more than two backends to choose from.
    pub fn pick_least(
        &self,
        random: impl FnOnce() -> u64,
        load: impl Fn(usize) -> usize,
    ) -> Option<(usize, &Backend)> {
        let (first, backend) = self.pick()?;
        let len = self.backends.len();
        let second = match len {
            1 => return Some((first, backend)),
            2 => 1 - first,
            _ => {
                // Any backend but `first`, uniformly: an offset in 1..len.
                let offset = 1 + (random() % (len as u64 - 1)) as usize;
                (first + offset) % len
            }
        };
        if load(second) < load(first) {
            Some((second, &self.backends[second]))
        } else {
            Some((first, backend))
        }
    }

    /// Picks with the app's [`SiteConfig::balancing`].
    pub fn pick_balanced(
        &self,
        random: impl FnOnce() -> u64,
        load: impl Fn(usize) -> usize,
    ) -> Option<(usize, &Backend)> {
        match self.site.balancing {
            Balancing::RoundRobin => self.pick(),
            Balancing::LeastRequests => self.pick_least(random, load),
        }
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

/// An immutable routing snapshot: hosts → apps → ready, healthy web instances.
#[derive(Debug)]
pub struct RouteTable {
    /// Lowercase, without leading or trailing dots.
    domain: String,
    routes: Vec<AppRoute>,
    /// `<app>.<domain>`, keyed by the app label so a lookup strips the domain and hashes once.
    by_label: HashMap<String, usize>,
    /// Custom domains, exact.
    by_domain: HashMap<String, usize>,
    /// Wildcard custom domains `*.example.com`, keyed by `example.com`.
    by_wildcard: HashMap<String, usize>,
}

impl RouteTable {
    /// A table that serves no app: every host is `NoSuchApp`.
    pub fn empty(domain: &str) -> RouteTable {
        RouteTable::build(domain, &[], &[])
    }

    /// Production slots only: [`RouteTable::build_slots`] with each app's production on lane 0.
    pub fn build(
        domain: &str,
        apps: &[(AppName, SiteConfig)],
        instances: &[ObservedInstance],
    ) -> RouteTable {
        let sites: Vec<SiteRoute> = apps.iter().cloned().map(SiteRoute::from).collect();
        RouteTable::build_slots(domain, &sites, instances)
    }

    /// Hosts are `<app>.<domain>` for every production slot in `sites` and `<app>-<slot>.<domain>`
    /// for every other slot (an app's own name wins over a slot host that spells the same
    /// label), plus each slot's custom domains
    /// ([`SiteConfig::domains`]): exact names, and wildcards `*.example.com` that match one more
    /// label (`www.example.com`, not `example.com` nor `a.b.example.com`). When two apps claim
    /// the same custom domain, the first in `apps` gets it (the controller should not let that
    /// happen); a later duplicate of an app name is ignored.
    ///
    /// A slot's backends are its app's observed instances on its lane that are
    /// [`InstanceState::Ready`], of process type `web`, at `127.0.0.1:<port>`, ordered by worker index
    /// then instance id, so the round-robin order is the same in every snapshot built from the
    /// same state; minus unhealthy ones as Azure's health check removes them (see
    /// [`unhealthy_to_exclude`]). Instances of apps not in `apps` are ignored (the app is being
    /// deleted, or the observation is stale).
    ///
    /// A production route's [`AppRoute::ramp`] lists its app's slots with a routing rule.
    pub fn build_slots(
        domain: &str,
        all: &[SiteRoute],
        instances: &[ObservedInstance],
    ) -> RouteTable {
        let mut index_of: HashMap<(&AppName, u32), usize> = HashMap::with_capacity(all.len());
        let mut slot_seen: HashSet<(&AppName, &SlotName)> = HashSet::with_capacity(all.len());
        let mut sites: Vec<&SiteRoute> = Vec::with_capacity(all.len());
        for site in all {
            if !index_of.contains_key(&(&site.app, site.lane))
                && slot_seen.insert((&site.app, &site.slot))
            {
                index_of.insert((&site.app, site.lane), sites.len());
                sites.push(site);
            }
        }
        let mut ready: Vec<Vec<&ObservedInstance>> = vec![Vec::new(); sites.len()];
        for instance in instances {
            let key = &instance.spec.key;
            if instance.state != InstanceState::Ready || !key.process_type.is_web() {
                continue;
            }
            if let Some(&index) = index_of.get(&(&key.app, key.lane)) {
                ready[index].push(instance);
            }
        }
        let production_of: HashMap<&AppName, usize> = sites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.slot.is_production())
            .map(|(i, s)| (&s.app, i))
            .collect();

        let mut table = RouteTable {
            domain: normalise_domain(domain),
            routes: Vec::with_capacity(sites.len()),
            by_label: HashMap::with_capacity(sites.len()),
            by_domain: HashMap::new(),
            by_wildcard: HashMap::new(),
        };
        let mut slot_labels = Vec::new();
        let mut ramps: Vec<(usize, Ramp)> = Vec::new();
        for (index, (entry, mut list)) in sites.iter().zip(ready).enumerate() {
            let (app, site) = (&entry.app, &entry.site);
            list.sort_by(|a, b| {
                (a.spec.key.worker.index, &a.id).cmp(&(b.spec.key.worker.index, &b.id))
            });
            let max_percent = site
                .health_check
                .as_ref()
                .map_or(DEFAULT_MAX_UNHEALTHY_PERCENT, |h| h.max_unhealthy_percent);
            let unhealthy = list.iter().filter(|i| !i.healthy).count();
            let mut exclude = unhealthy_to_exclude(list.len(), unhealthy, max_percent);
            let backends = list
                .into_iter()
                .filter(|i| {
                    if !i.healthy && exclude > 0 {
                        exclude -= 1;
                        return false;
                    }
                    true
                })
                .map(|i| Backend {
                    instance: i.id.clone(),
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), i.port),
                })
                .collect();
            for name in &site.domains {
                let name = normalise_domain(name);
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut table.by_wildcard, parent.to_string()),
                    None => (&mut table.by_domain, name),
                };
                map.entry(key).or_insert(index);
            }
            if !entry.slot.is_production() {
                slot_labels.push((stamp_model::slots::host_label(app, &entry.slot), index));
                if let (Some(percent), Some(&production)) = (entry.routing, production_of.get(app))
                {
                    ramps.push((
                        production,
                        Ramp {
                            slot: entry.slot.clone(),
                            percent: percent.min(100),
                            route: index,
                        },
                    ));
                }
                let mut route = AppRoute::new(app.clone(), Arc::new(site.clone()), backends);
                route.slot = entry.slot.clone();
                route.index = index;
                table.routes.push(route);
                continue;
            }
            table.by_label.insert(app.as_str().to_string(), index);
            let mut route = AppRoute::new(app.clone(), Arc::new(site.clone()), backends);
            route.index = index;
            table.routes.push(route);
        }
        for (label, index) in slot_labels {
            table.by_label.entry(label).or_insert(index);
        }
        for (production, ramp) in ramps {
            table.routes[production].ramp.push(ramp);
        }
        table
    }

    /// The domain apps are served under (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Resolves a Host header (or URI authority). Case-insensitive; a port
    /// (`hello.localhost:8080`) and a trailing dot are ignored. `<app>.<domain>` first, then an
    /// exact custom domain, then a wildcard one. IPv6 literals, IP addresses, unknown hosts and
    /// anything malformed are `NoSuchApp`.
    pub fn lookup(&self, host: &str) -> Lookup<'_> {
        match self.find(host) {
            Some(index) => Lookup::App(&self.routes[index]),
            None => Lookup::NoSuchApp,
        }
    }

    fn find(&self, host: &str) -> Option<usize> {
        let name = lowercase(host_name(host)?);
        if let Some(label) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            && is_label(label)
            && let Some(&index) = self.by_label.get(label)
        {
            return Some(index);
        }
        if self.by_domain.is_empty() && self.by_wildcard.is_empty() {
            return None;
        }
        if let Some(&index) = self.by_domain.get(name.as_ref()) {
            return Some(index);
        }
        let (label, parent) = name.split_once('.')?;
        if !is_label(label) {
            return None;
        }
        self.by_wildcard.get(parent).copied()
    }

    /// Every app route, in the order of the `apps` given to [`RouteTable::build`];
    /// `routes()[r.index()]` is `r`.
    pub fn routes(&self) -> &[AppRoute] {
        &self.routes
    }

    /// Every backend in this snapshot (an address appears once per app that routes to it).
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.routes.iter().flat_map(|r| r.backends.iter())
    }
}

/// How many of an app's `total` backends Azure's health check takes out of rotation when
/// `unhealthy` of them fail: at most `max_percent` of them (rounded down), and none when all
/// fail, so a single instance is never removed and an app is never left with nothing to serve.
pub fn unhealthy_to_exclude(total: usize, unhealthy: usize, max_percent: u32) -> usize {
    if unhealthy >= total {
        return 0;
    }
    let cap = total.saturating_mul(max_percent.min(100) as usize) / 100;
    unhealthy.min(cap)
}

/// The name part of a Host header: without a port and a trailing dot, in the case it was sent.
/// `None` for IPv6 literals, an empty name, or a malformed port.
pub fn host_name(host: &str) -> Option<&str> {
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
    (!name.is_empty()).then_some(name)
}

fn normalise_domain(domain: &str) -> String {
    domain.trim_matches('.').to_ascii_lowercase()
}

/// Allocates only when the name has uppercase letters.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use stamp_model::HealthCheck;
    use stamp_model::site::DEFAULT_HEALTH_INTERVAL;

    fn app(name: &str) -> AppName {
        AppName::parse(name).expect("valid app name")
    }

    fn plain(names: &[&str]) -> Vec<(AppName, SiteConfig)> {
        names
            .iter()
            .map(|n| (app(n), SiteConfig::default()))
            .collect()
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

    fn ids(route: &AppRoute) -> Vec<String> {
        route
            .backends
            .iter()
            .map(|b| b.instance.0.clone())
            .collect()
    }

    /// Builds a table for apps `hello` and `world` and checks each app's backends
    /// (`instance@port`, in round-robin order).
    fn check_build(instances: &[ObservedInstance], expected: &[(&str, &[&str])]) {
        let table = RouteTable::build("localhost", &plain(&["hello", "world"]), instances);
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
            &plain(&["hello"]),
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

    #[test]
    fn routes_carry_their_site_and_index() {
        let site = SiteConfig {
            https_only: true,
            ..SiteConfig::default()
        };
        let table = RouteTable::build(
            "localhost",
            &[
                (app("a"), SiteConfig::default()),
                (app("b"), site.clone()),
                (app("a"), site),
            ],
            &[],
        );
        assert_eq!(table.routes().len(), 2, "the duplicate is ignored");
        for (position, route) in table.routes().iter().enumerate() {
            assert_eq!(route.index(), position);
        }
        let Lookup::App(b) = table.lookup("b.localhost") else {
            panic!("b is routed");
        };
        assert!(b.site.https_only);
        assert_eq!(b.index(), 1);
        let Lookup::App(a) = table.lookup("a.localhost") else {
            panic!("a is routed");
        };
        assert!(!a.site.https_only, "the first entry of a name wins");
    }

    /// `(total, unhealthy, max percent) -> excluded`.
    fn check_exclude(total: usize, unhealthy: usize, percent: u32, expected: usize) {
        assert_eq!(
            unhealthy_to_exclude(total, unhealthy, percent),
            expected,
            "{total} instances, {unhealthy} unhealthy, {percent} %"
        );
    }

    #[test]
    fn unhealthy_exclusion_follows_azure() {
        for (total, unhealthy, percent, expected) in [
            // Azure's example.
            (4, 3, 50, 2),
            (4, 4, 50, 0),
            (4, 1, 50, 1),
            (4, 2, 50, 2),
            (1, 1, 100, 0),
            (1, 0, 50, 0),
            (2, 1, 50, 1),
            (2, 1, 49, 0),
            (3, 1, 50, 1),
            (3, 2, 50, 1),
            (3, 1, 10, 0),
            (10, 9, 100, 9),
            (10, 10, 100, 0),
            (10, 3, 20, 2),
            (0, 0, 50, 0),
        ] {
            check_exclude(total, unhealthy, percent, expected);
        }
    }

    fn observed_health(id: &str, worker: u32, healthy: bool) -> ObservedInstance {
        let mut i = instance(
            "hello",
            id,
            worker,
            InstanceState::Ready,
            "web",
            "production",
            4000 + worker as u16,
        );
        i.healthy = healthy;
        i
    }

    #[test]
    fn build_removes_the_first_unhealthy_backends_up_to_the_cap() {
        let check = |health: &[bool], percent: Option<u32>, expected: &[&str]| {
            let site = SiteConfig {
                health_check: percent.map(|p| HealthCheck {
                    path: "/healthz".into(),
                    interval: DEFAULT_HEALTH_INTERVAL,
                    unhealthy_after: 2,
                    max_unhealthy_percent: p,
                }),
                ..SiteConfig::default()
            };
            let instances: Vec<_> = health
                .iter()
                .enumerate()
                .map(|(i, &h)| observed_health(&format!("i{i}"), i as u32, h))
                .collect();
            let table = RouteTable::build("localhost", &[(app("hello"), site)], &instances);
            assert_eq!(ids(&table.routes()[0]), expected, "{health:?} {percent:?}");
        };
        check(&[false, false, true, false], Some(50), &["i2", "i3"]);
        check(&[true, false, false, false], Some(50), &["i0", "i3"]);
        check(
            &[false, false, false, false],
            Some(50),
            &["i0", "i1", "i2", "i3"],
        );
        check(&[false], Some(100), &["i0"]);
        check(&[true, false], Some(100), &["i0"]);
        check(&[true, false, false], Some(10), &["i0", "i1", "i2"]);
        // Without a configured check, Azure's default share applies.
        check(&[false, true], None, &["i1"]);
    }

    /// Looks `host` up in a table with app `hello` under `domain`; `expected` is whether it routes.
    fn check_lookup(domain: &str, host: &str, expected: bool) {
        let table = RouteTable::build(domain, &plain(&["hello"]), &[]);
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
            ("localhost", "xhello.localhost", false),
        ] {
            check_lookup(domain, host, expected);
        }
    }

    #[test]
    fn custom_domains_exact_and_wildcard() {
        let site = |domains: &[&str]| SiteConfig {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..SiteConfig::default()
        };
        let table = RouteTable::build(
            "localhost",
            &[
                (
                    app("shop"),
                    site(&["shop.example.com", "*.shop.example.com"]),
                ),
                (app("blog"), site(&["*.example.com", "example.org"])),
                (app("thief"), site(&["shop.example.com", "blog.localhost"])),
            ],
            &[],
        );
        for (host, expected) in [
            ("shop.example.com", Some("shop")),
            ("SHOP.example.com:443", Some("shop")),
            ("shop.example.com.", Some("shop")),
            ("www.shop.example.com", Some("shop")),
            ("a.b.shop.example.com", None),
            // Exact beats wildcard.
            ("www.example.com", Some("blog")),
            ("example.com", None),
            ("a.b.example.com", None),
            ("example.org", Some("blog")),
            ("www.example.org", None),
            ("blog.localhost", Some("blog")),
            ("thief.localhost", Some("thief")),
            ("-.x.example.com", None),
            ("_x.example.com", None),
            ("[::1]", None),
        ] {
            let got = match table.lookup(host) {
                Lookup::App(route) => Some(route.app.as_str()),
                Lookup::NoSuchApp => None,
            };
            assert_eq!(got, expected, "{host}");
        }
    }

    #[test]
    fn host_name_strips_port_and_dot() {
        for (host, expected) in [
            ("a.b", Some("a.b")),
            ("A.b:80", Some("A.b")),
            ("a.b.:80", Some("a.b")),
            ("a.b:", None),
            ("a.b:x", None),
            ("[::1]:80", None),
            ("", None),
            (":80", None),
        ] {
            assert_eq!(host_name(host), expected, "{host:?}");
        }
    }

    fn three(balancing: Balancing) -> AppRoute {
        AppRoute::new(
            app("hello"),
            Arc::new(SiteConfig {
                balancing,
                ..SiteConfig::default()
            }),
            (0..3)
                .map(|i| Backend {
                    instance: InstanceId(format!("b{i}")),
                    addr: SocketAddr::from(([127, 0, 0, 1], 4000 + i)),
                })
                .collect(),
        )
    }

    fn empty() -> AppRoute {
        AppRoute::new(app("empty"), Arc::new(SiteConfig::default()), vec![])
    }

    #[test]
    fn pick_is_round_robin() {
        let route = three(Balancing::RoundRobin);
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
        assert!(empty().pick().is_none());
    }

    #[test]
    fn pick_least_prefers_the_less_loaded_of_two_and_ties_go_round_robin() {
        let route = three(Balancing::LeastRequests);
        // Idle: exactly round robin, whatever the random candidate.
        let picks: Vec<usize> = (0..6)
            .map(|i| route.pick_least(|| i, |_| 0).expect("has backends").0)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        // b1 is busy: when it is the round-robin candidate, the other candidate wins.
        let load = |i: usize| if i == 1 { 5 } else { 0 };
        for random in 0..4 {
            let route = three(Balancing::LeastRequests);
            let picks: Vec<usize> = (0..30)
                .map(|_| route.pick_least(|| random, load).expect("has backends").0)
                .collect();
            assert!(!picks.contains(&1), "random {random}: {picks:?}");
        }

        // The second candidate is never the first: with random offsets 0 and 1 from b0, the
        // candidates are b1 and b2.
        let seen: Vec<usize> = [0u64, 1]
            .iter()
            .map(|&r| {
                let route = three(Balancing::LeastRequests);
                route
                    .pick_least(|| r, |i| usize::from(i == 0))
                    .expect("some")
                    .0
            })
            .collect();
        assert_eq!(seen, [1, 2]);

        // Two backends: no randomness needed, the other one is the second candidate.
        let two = AppRoute::new(
            app("two"),
            Arc::new(SiteConfig::default()),
            three(Balancing::LeastRequests).backends[..2].to_vec(),
        );
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                two.pick_least(|| panic!("not needed"), |i| usize::from(i == 0))
                    .expect("some")
                    .0
            })
            .collect();
        assert_eq!(picks, [1, 1, 1, 1]);
        assert!(empty().pick_least(|| 0, |_| 0).is_none());
    }

    #[test]
    fn pick_balanced_follows_the_site() {
        let load = |i: usize| if i == 0 { 9 } else { 0 };
        let rr = three(Balancing::RoundRobin);
        assert_eq!(rr.pick_balanced(|| 0, load).map(|p| p.0), Some(0));
        let least = three(Balancing::LeastRequests);
        assert_eq!(least.pick_balanced(|| 0, load).map(|p| p.0), Some(1));
    }

    #[test]
    fn next_after_wraps_and_leaves_the_cursor_alone() {
        let route = three(Balancing::RoundRobin);
        for (index, expected) in [(0, 1), (1, 2), (2, 0)] {
            let (next, backend) = route.next_after(index).expect("has backends");
            assert_eq!(next, expected);
            assert_eq!(backend.instance.0, format!("b{expected}"));
        }
        assert_eq!(route.pick().map(|(i, _)| i), Some(0));
        assert!(empty().next_after(0).is_none());
    }

    #[test]
    fn backends_lists_every_address() {
        use InstanceState::Ready;
        let table = RouteTable::build(
            "localhost",
            &plain(&["hello", "world"]),
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

    #[test]
    fn slots_have_their_own_hosts_lanes_and_ramp() {
        use InstanceState::Ready;
        let slot = |app_name: &str, name: &str, lane: u32, routing: Option<u8>| SiteRoute {
            app: app(app_name),
            slot: SlotName::parse(name).expect("valid slot"),
            lane,
            site: SiteConfig::default(),
            routing,
        };
        let mut staging = slot("hello", "staging", 0, Some(30));
        staging.site.domains = vec!["staging.example.com".into()];
        let sites = [
            // After a swap production serves from lane 1 and staging from lane 0.
            slot("hello", "production", 1, None),
            staging,
            slot("hello", "qa", 2, None),
            // An app whose name spells hello's `staging` slot host keeps its own host.
            slot("hello-qa", "production", 0, None),
        ];
        let instances = [
            instance("hello", "lane0", 0, Ready, "web", "production", 1),
            instance("hello", "lane1", 0, Ready, "web", "staging", 2),
        ];
        let table = RouteTable::build_slots("localhost", &sites, &instances);
        let route = |host: &str| match table.lookup(host) {
            Lookup::App(r) => (r.app.to_string(), r.slot.to_string(), ids(r)),
            Lookup::NoSuchApp => panic!("{host} should be routed"),
        };
        assert_eq!(
            route("hello.localhost"),
            (
                "hello".into(),
                "production".into(),
                vec!["lane1".to_string()]
            )
        );
        assert_eq!(
            route("hello-staging.localhost"),
            ("hello".into(), "staging".into(), vec!["lane0".to_string()])
        );
        assert_eq!(route("hello-qa.localhost").0, "hello-qa");
        assert_eq!(
            route("staging.example.com").1,
            "staging",
            "a slot's custom domain"
        );
        let Lookup::App(production) = table.lookup("hello.localhost") else {
            unreachable!()
        };
        assert_eq!(production.ramp.len(), 1, "qa has no routing rule");
        let ramp = &production.ramp[0];
        assert_eq!((ramp.slot.as_str(), ramp.percent), ("staging", 30));
        assert_eq!(table.routes()[ramp.route].slot.as_str(), "staging");
    }
}
