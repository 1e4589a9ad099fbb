//! Capacity planning: from per-unit costs (requests/s per core, bytes per connection),
//! measured in a run or taken from the seed's rules, to the cores, RAM, hosts and
//! client source addresses a demand such as 10M connections at 80k requests/s needs.

use crate::model::{BenchRun, Step};
use crate::reference::CapacityRules;

/// Connections one client source address may hold to one destination ip:port.
/// The 4-tuple allows ~28k with the default ip_local_port_range (32768-60999), but
/// above ~20k the kernel's ephemeral port search slows to a crawl (measured on
/// these machines), so plans use 20,000.
pub const CONNECTIONS_PER_SOURCE_ADDRESS: u64 = 20_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CapacityError {
    #[error("capacity plan: {what} must be a positive finite number, got {value}")]
    Invalid { what: &'static str, value: f64 },
}

/// What must be served at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub connections: u64,
    pub rps: f64,
}

impl Demand {
    /// The seed's headline: 10M concurrent connections at 80k requests/s.
    pub const SEED_10M: Demand = Demand {
        connections: 10_000_000,
        rps: 80_000.0,
    };
}

/// One host's budget and how much of it a plan may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostLimits {
    pub cores: u32,
    pub memory_bytes: u64,
    /// Share of the cores a plan may keep busy (headroom for bursts and the OS).
    pub cpu_utilization: f64,
    /// Share of RAM a plan may fill (the rest: OS, page cache, bursts of buffers).
    pub memory_usable: f64,
    /// Most connections one host may hold, if something other than CPU and RAM caps it.
    pub max_connections: Option<u64>,
    /// Listening ports per host: each is a separate destination for the 4-tuple.
    pub listen_ports: u32,
}

impl Default for HostLimits {
    /// The seed's machine (16 cores, 32 GB), 70% CPU and 75% RAM usable, one port.
    fn default() -> Self {
        HostLimits {
            cores: 16,
            memory_bytes: 32_000_000_000,
            cpu_utilization: 0.7,
            memory_usable: 0.75,
            max_connections: None,
            listen_ports: 1,
        }
    }
}

/// Per-unit costs a plan multiplies out.
#[derive(Debug, Clone, PartialEq)]
pub struct Costs {
    /// Where the figures come from, for tables ("measured: speedmimi", "seed rules, low").
    pub label: String,
    pub rps_per_core: f64,
    /// Memory per concurrent connection. Measured: proxy RSS grown + kernel socket
    /// buffers + kernel slab grown (`model::MemoryCost`), the label says which parts.
    pub bytes_per_connection: f64,
}

impl Costs {
    /// The seed's rules at their favourable end (20k requests/s per core, 2 GB per 1M).
    pub fn seed_optimistic(rules: &CapacityRules) -> Costs {
        Costs {
            label: "seed rules, favourable end".into(),
            rps_per_core: rules.rps_per_core.high,
            bytes_per_connection: rules.memory_per_million_connections.low * 1e9 / 1e6,
        }
    }

    /// The seed's rules at their cautious end (10k requests/s per core, 4 GB per 1M).
    pub fn seed_conservative(rules: &CapacityRules) -> Costs {
        Costs {
            label: "seed rules, cautious end".into(),
            rps_per_core: rules.rps_per_core.low,
            bytes_per_connection: rules.memory_per_million_connections.high * 1e9 / 1e6,
        }
    }
}

/// Which constraint sets the host count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Cpu,
    Memory,
    Connections,
}

impl Binding {
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Cpu => "CPU",
            Binding::Memory => "memory",
            Binding::Connections => "connections per host",
        }
    }
}

/// The result of multiplying a demand by costs under host limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub demand: Demand,
    pub costs: Costs,
    pub host: HostLimits,
    /// Cores kept busy by the load, before headroom.
    pub cores_busy: f64,
    /// Cores to provision: cores_busy / cpu_utilization, rounded up.
    pub cores: u64,
    /// Memory the connections hold, bytes, before headroom.
    pub memory_bytes: f64,
    /// Memory to provision: memory_bytes / memory_usable, bytes.
    pub memory_provisioned_bytes: f64,
    pub hosts_by_cpu: u64,
    pub hosts_by_memory: u64,
    pub hosts_by_connections: u64,
    pub hosts: u64,
    pub binding: Binding,
    pub connections_per_host: u64,
    /// Client source addresses, reusable on every host: each host ip:port is its own
    /// destination, so one address may hold CONNECTIONS_PER_SOURCE_ADDRESS to each.
    pub source_addresses: u64,
    /// Client source addresses if every connection went to one ip:port (a single VIP).
    pub source_addresses_single_destination: u64,
}

fn positive(what: &'static str, value: f64) -> Result<f64, CapacityError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(CapacityError::Invalid { what, value })
    }
}

fn ceil_u64(x: f64) -> u64 {
    // Guard the last ulp: 4.000000000001 hosts is 4 hosts, not 5.
    let rounded = x.round();
    if (x - rounded).abs() < 1e-9 {
        rounded as u64
    } else {
        x.ceil() as u64
    }
}

/// Multiplies `demand` by `costs` under `host` limits.
pub fn plan(demand: &Demand, costs: &Costs, host: &HostLimits) -> Result<Plan, CapacityError> {
    positive("demand.connections", demand.connections as f64)?;
    positive("demand.rps", demand.rps)?;
    positive("costs.rps_per_core", costs.rps_per_core)?;
    positive("costs.bytes_per_connection", costs.bytes_per_connection)?;
    positive("host.cores", f64::from(host.cores))?;
    positive("host.memory_bytes", host.memory_bytes as f64)?;
    positive("host.listen_ports", f64::from(host.listen_ports))?;
    let cpu_utilization = positive("host.cpu_utilization", host.cpu_utilization)?.min(1.0);
    let memory_usable = positive("host.memory_usable", host.memory_usable)?.min(1.0);
    if let Some(max) = host.max_connections {
        positive("host.max_connections", max as f64)?;
    }

    let cores_busy = demand.rps / costs.rps_per_core;
    let cores = ceil_u64(cores_busy / cpu_utilization);
    let memory_bytes = demand.connections as f64 * costs.bytes_per_connection;
    let memory_provisioned_bytes = memory_bytes / memory_usable;

    let hosts_by_cpu = ceil_u64(cores_busy / (f64::from(host.cores) * cpu_utilization));
    let hosts_by_memory = ceil_u64(memory_bytes / (host.memory_bytes as f64 * memory_usable));
    let hosts_by_connections = host
        .max_connections
        .map_or(1, |max| demand.connections.div_ceil(max));

    let mut hosts = 1;
    let mut binding = Binding::Cpu;
    for (n, why) in [
        (hosts_by_cpu, Binding::Cpu),
        (hosts_by_memory, Binding::Memory),
        (hosts_by_connections, Binding::Connections),
    ] {
        if n > hosts {
            hosts = n;
            binding = why;
        }
    }
    let connections_per_host = demand.connections.div_ceil(hosts);
    let per_address_per_host = CONNECTIONS_PER_SOURCE_ADDRESS * u64::from(host.listen_ports);

    Ok(Plan {
        demand: *demand,
        costs: costs.clone(),
        host: *host,
        cores_busy,
        cores,
        memory_bytes,
        memory_provisioned_bytes,
        hosts_by_cpu,
        hosts_by_memory,
        hosts_by_connections,
        hosts,
        binding,
        connections_per_host,
        source_addresses: connections_per_host.div_ceil(per_address_per_host),
        source_addresses_single_destination: demand
            .connections
            .div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS),
    })
}

/// Costs measured in a run for one target, and the steps they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub costs: Costs,
    /// The step with the most requests/s (CPU busiest, fixed costs best amortised).
    pub rps_step: Step,
    /// The step with the most connections open (fixed memory best amortised).
    pub memory_step: Step,
}

impl Measured {
    /// Bytes per 1M connections, the seed rule's unit (GB = 1e9 bytes).
    pub fn gb_per_million_connections(&self) -> f64 {
        self.costs.bytes_per_connection * 1e6 / 1e9
    }
}

/// Requests/s per busy core and bytes per connection for `target`, or None when the
/// run has no step of it with both requests and measurable proxy CPU.
pub fn measured_costs(run: &BenchRun, target: &str) -> Option<Measured> {
    let rps_step = run
        .steps_of(target)
        .filter(|s| s.rps_per_busy_core().is_some())
        .max_by(|a, b| a.rps.total_cmp(&b.rps))?;
    let memory_step = run
        .steps_of(target)
        .filter(|s| s.peak_open > 0 && s.memory_bytes() > 0)
        .max_by_key(|s| s.peak_open)?;
    Some(Measured {
        costs: Costs {
            label: format!(
                "measured: {target} (memory: {})",
                memory_step.memory().counted()
            ),
            rps_per_core: rps_step.rps_per_busy_core()?,
            bytes_per_connection: memory_step.memory_bytes() as f64 / memory_step.peak_open as f64,
        },
        rps_step: rps_step.clone(),
        memory_step: memory_step.clone(),
    })
}

/// Where a measured figure sits against a rule's low..high range.
pub fn against_rule(value: f64, low: f64, high: f64) -> &'static str {
    if value < low {
        "below the range"
    } else if value > high {
        "above the range"
    } else {
        "within the range"
    }
}
