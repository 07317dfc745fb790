//! The SKU catalog: Azure App Service tiers and sizes with the numbers users know
//! (`shared/reference/azure-app-service-semantics.md` §2.1).
//!
//! A worker of a SKU is a slice of a node's capacity of the SKU's size. Free and Shared workers
//! are shared compute in Azure; here they reserve a quarter core and 1 GiB of the node, so a
//! node's capacity bounds them like any other worker.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tier {
    Free,
    Shared,
    Basic,
    Standard,
    PremiumV2,
    PremiumV3,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "Free",
            Tier::Shared => "Shared",
            Tier::Basic => "Basic",
            Tier::Standard => "Standard",
            Tier::PremiumV2 => "PremiumV2",
            Tier::PremiumV3 => "PremiumV3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Sku {
    /// Azure's name, e.g. `B1`, `P1v3`.
    pub name: &'static str,
    pub tier: Tier,
    /// The worker size: SKUs with the same hardware share a size, and so a warm worker pool
    /// (`shared`, `small`, `medium`, `large`, then one size per Premium SKU).
    pub size: &'static str,
    /// Thousandths of a core (Azure vCPUs).
    pub millicores: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Most workers a plan of this SKU may have.
    pub max_instances: u32,
    /// Deployment slots per app besides production.
    pub slots_per_app: u32,
    /// Outbound TCP connections per instance.
    pub outbound_connections: u32,
    /// Rule-based autoscale allowed.
    pub autoscale: bool,
    /// CPU-minutes a day each app may use (Free 60, Shared 240); None: no quota.
    pub cpu_minutes_per_day: Option<u32>,
}

#[expect(clippy::too_many_arguments, reason = "one row of the catalog table")]
const fn sku(
    name: &'static str,
    tier: Tier,
    size: &'static str,
    millicores: u32,
    memory_mib: u32,
    max_instances: u32,
    slots_per_app: u32,
    outbound_connections: u32,
) -> Sku {
    Sku {
        name,
        tier,
        size,
        millicores,
        memory_mib,
        max_instances,
        slots_per_app,
        outbound_connections,
        // Rule-based autoscale starts at Standard, as in Azure.
        autoscale: !matches!(tier, Tier::Free | Tier::Shared | Tier::Basic),
        cpu_minutes_per_day: match tier {
            Tier::Free => Some(60),
            Tier::Shared => Some(240),
            _ => None,
        },
    }
}

const SMALL: u32 = 1_920;
const MEDIUM: u32 = 3_968;
const LARGE: u32 = 8_064;
const GIB: u32 = 1024;

/// Every SKU Stamp offers, in the order `stamp plan skus` lists them.
pub const CATALOG: &[Sku] = &[
    sku("F1", Tier::Free, "shared", 250, GIB, 1, 0, 600),
    sku("D1", Tier::Shared, "shared", 250, GIB, 1, 0, 600),
    sku("B1", Tier::Basic, "small", 1000, 1792, 3, 0, SMALL),
    sku("B2", Tier::Basic, "medium", 2000, 3584, 3, 0, MEDIUM),
    sku("B3", Tier::Basic, "large", 4000, 7 * GIB, 3, 0, LARGE),
    sku("S1", Tier::Standard, "small", 1000, 1792, 10, 5, SMALL),
    sku("S2", Tier::Standard, "medium", 2000, 3584, 10, 5, MEDIUM),
    sku("S3", Tier::Standard, "large", 4000, 7 * GIB, 10, 5, LARGE),
    sku("P1v2", Tier::PremiumV2, "p1v2", 1000, 3584, 30, 20, SMALL),
    sku(
        "P2v2",
        Tier::PremiumV2,
        "p2v2",
        2000,
        7 * GIB,
        30,
        20,
        MEDIUM,
    ),
    sku(
        "P3v2",
        Tier::PremiumV2,
        "p3v2",
        4000,
        14 * GIB,
        30,
        20,
        LARGE,
    ),
    sku(
        "P0v3",
        Tier::PremiumV3,
        "p0v3",
        1000,
        4 * GIB,
        30,
        20,
        SMALL,
    ),
    sku(
        "P1v3",
        Tier::PremiumV3,
        "p1v3",
        2000,
        8 * GIB,
        30,
        20,
        SMALL,
    ),
    sku(
        "P1mv3",
        Tier::PremiumV3,
        "p1mv3",
        2000,
        16 * GIB,
        30,
        20,
        MEDIUM,
    ),
    sku(
        "P2v3",
        Tier::PremiumV3,
        "p2v3",
        4000,
        16 * GIB,
        30,
        20,
        MEDIUM,
    ),
    sku(
        "P2mv3",
        Tier::PremiumV3,
        "p2mv3",
        4000,
        32 * GIB,
        30,
        20,
        LARGE,
    ),
    sku(
        "P3v3",
        Tier::PremiumV3,
        "p3v3",
        8000,
        32 * GIB,
        30,
        20,
        LARGE,
    ),
    sku(
        "P3mv3",
        Tier::PremiumV3,
        "p3mv3",
        8000,
        64 * GIB,
        30,
        20,
        LARGE,
    ),
    sku(
        "P4mv3",
        Tier::PremiumV3,
        "p4mv3",
        16000,
        128 * GIB,
        30,
        20,
        LARGE,
    ),
    sku(
        "P5mv3",
        Tier::PremiumV3,
        "p5mv3",
        32000,
        256 * GIB,
        30,
        20,
        LARGE,
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("unknown SKU {0:?}; choose one of: {list}", list = names().join(", "))]
    Unknown(String),
}

fn names() -> Vec<&'static str> {
    CATALOG.iter().map(|s| s.name).collect()
}

impl Sku {
    /// Per-app scaling (`perSiteScaling`) is allowed from Standard up, as in Azure.
    pub fn per_app_scaling(&self) -> bool {
        !matches!(self.tier, Tier::Free | Tier::Shared | Tier::Basic)
    }

    /// Looks a SKU up by name, ignoring case (`b1` is `B1`).
    pub fn find(name: &str) -> Result<Sku, SkuError> {
        CATALOG
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| SkuError::Unknown(name.to_string()))
    }
}

/// Every worker size, in catalog order, with the first SKU of that size (which has its
/// hardware: cores, memory, outbound connections).
pub fn sizes() -> Vec<Sku> {
    let mut out: Vec<Sku> = Vec::new();
    for sku in CATALOG {
        if !out.iter().any(|s| s.size == sku.size) {
            out.push(*sku);
        }
    }
    out
}

/// The SKU that stands for `size` (see [`sizes`]), ignoring case.
pub fn find_size(size: &str) -> Result<Sku, SizeError> {
    sizes()
        .into_iter()
        .find(|s| s.size.eq_ignore_ascii_case(size))
        .ok_or_else(|| SizeError(size.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown worker size {0:?}; choose one of: {list}", list = sizes().iter().map(|s| s.size).collect::<Vec<_>>().join(", "))]
pub struct SizeError(pub String);

/// What a node offers to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub millicores: u32,
    pub memory_mib: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    #[error("a plan needs at least 1 worker; got {0}")]
    BelowOne(u32),
    #[error(
        "{sku} ({tier}) allows at most {max} workers per plan; got {asked}. Choose a higher tier for more"
    , tier = tier.as_str())]
    AboveTierMax {
        sku: &'static str,
        tier: Tier,
        max: u32,
        asked: u32,
    },
    #[error(
        "not enough node capacity for {asked} {sku} workers: they need {need_mc} millicores and {need_mib} MiB, but only {free_mc} millicores and {free_mib} MiB are free (the node has {total_mc} millicores and {total_mib} MiB; other plans use the rest). Scale other plans in, pick a smaller SKU, or start the node with more capacity (--node-cpus, --node-memory)"
    )]
    NoCapacity {
        sku: &'static str,
        asked: u32,
        need_mc: u64,
        need_mib: u64,
        free_mc: u64,
        free_mib: u64,
        total_mc: u32,
        total_mib: u32,
    },
}

/// Checks that a plan of `sku` may have `workers` workers on a node with `capacity`, of which
/// other plans already use `used` (the plan's own current workers excluded).
pub fn check_scale(
    sku: Sku,
    workers: u32,
    capacity: Capacity,
    used: Capacity,
) -> Result<(), ScaleError> {
    if workers < 1 {
        return Err(ScaleError::BelowOne(workers));
    }
    if workers > sku.max_instances {
        return Err(ScaleError::AboveTierMax {
            sku: sku.name,
            tier: sku.tier,
            max: sku.max_instances,
            asked: workers,
        });
    }
    let need_mc = u64::from(sku.millicores) * u64::from(workers);
    let need_mib = u64::from(sku.memory_mib) * u64::from(workers);
    let free_mc = u64::from(capacity.millicores).saturating_sub(u64::from(used.millicores));
    let free_mib = u64::from(capacity.memory_mib).saturating_sub(u64::from(used.memory_mib));
    if need_mc > free_mc || need_mib > free_mib {
        return Err(ScaleError::NoCapacity {
            sku: sku.name,
            asked: workers,
            need_mc,
            need_mib,
            free_mc,
            free_mib,
            total_mc: capacity.millicores,
            total_mib: capacity.memory_mib,
        });
    }
    Ok(())
}

/// Capacity used by `workers` workers of `sku`.
pub fn usage(sku: Sku, workers: u32) -> Capacity {
    Capacity {
        millicores: sku.millicores.saturating_mul(workers),
        memory_mib: sku.memory_mib.saturating_mul(workers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Capacity = Capacity {
        millicores: 8000,
        memory_mib: 16 * GIB,
    };
    const NONE: Capacity = Capacity {
        millicores: 0,
        memory_mib: 0,
    };

    #[test]
    fn catalog_has_the_azure_numbers() {
        let b1 = Sku::find("b1").unwrap();
        assert_eq!(
            (
                b1.millicores,
                b1.memory_mib,
                b1.max_instances,
                b1.slots_per_app
            ),
            (1000, 1792, 3, 0)
        );
        let s2 = Sku::find("S2").unwrap();
        assert_eq!(
            (s2.max_instances, s2.slots_per_app, s2.outbound_connections),
            (10, 5, 3968)
        );
        let p3 = Sku::find("P3v3").unwrap();
        assert_eq!(
            (p3.millicores, p3.memory_mib, p3.max_instances),
            (8000, 32 * GIB, 30)
        );
        assert_eq!(Sku::find("F1").unwrap().outbound_connections, 600);
        for name in [
            "F1", "B1", "B2", "B3", "S1", "S2", "S3", "P0v3", "P1v3", "P2v3", "P3v3",
        ] {
            assert!(Sku::find(name).is_ok(), "{name}");
        }
        let err = Sku::find("X9").unwrap_err().to_string();
        assert!(
            err.contains("unknown SKU \"X9\"") && err.contains("B1"),
            "{err}"
        );
    }

    #[track_caller]
    fn check(sku: &str, workers: u32, used: Capacity, expect: Result<(), &str>) {
        let got = check_scale(Sku::find(sku).unwrap(), workers, NODE, used);
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, expect) => panic!("got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn scale_limits() {
        check("B1", 1, NONE, Ok(()));
        check("B1", 3, NONE, Ok(()));
        check("B1", 0, NONE, Err("at least 1 worker"));
        check("B1", 4, NONE, Err("at most 3 workers"));
        check("F1", 2, NONE, Err("at most 1 workers"));
        check("S1", 8, NONE, Ok(()));
        check("S1", 9, NONE, Err("not enough node capacity"));
        check(
            "S1",
            4,
            usage(Sku::find("B2").unwrap(), 3),
            Err("only 2000 millicores"),
        );
        check("P2v3", 1, NONE, Ok(()));
        check("P3v3", 1, NONE, Err("not enough node capacity"));
        check("P1mv3", 1, NONE, Ok(()));
        check("P1mv3", 2, NONE, Err("not enough node capacity"));
    }
}
