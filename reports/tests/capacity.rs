//! Capacity arithmetic, checked against numbers worked out by hand.

use std::path::Path;

use reports::capacity::{
    measured_costs, plan, Binding, CapacityError, Costs, Demand, HostLimits,
    CONNECTIONS_PER_SOURCE_ADDRESS,
};
use reports::reference::capacity_rules;

fn costs(rps_per_core: f64, bytes_per_connection: f64) -> Costs {
    Costs {
        label: "test".into(),
        rps_per_core,
        bytes_per_connection,
    }
}

#[test]
fn seed_rules_favourable_end_fits_one_seed_host() {
    let rules = capacity_rules().unwrap();
    let c = Costs::seed_optimistic(&rules);
    assert_eq!(c.rps_per_core, 20_000.0);
    assert_eq!(c.bytes_per_connection, 2_000.0);
    let p = plan(&Demand::SEED_10M, &c, &HostLimits::default()).unwrap();
    assert_eq!(p.cores_busy, 4.0); // 80k / 20k
    assert_eq!(p.cores, 6); // 4 / 0.7 = 5.7
    assert_eq!(p.memory_bytes, 20e9); // 10M x 2 kB
    assert_eq!(p.hosts, 1); // 4 of 11.2 usable cores, 20 of 24 usable GB
    assert_eq!(p.connections_per_host, 10_000_000);
    assert_eq!(p.source_addresses, 500); // 10M / 20k
    assert_eq!(p.source_addresses_single_destination, 500);
}

#[test]
fn seed_rules_cautious_end_needs_two_hosts_for_memory() {
    let rules = capacity_rules().unwrap();
    let p = plan(
        &Demand::SEED_10M,
        &Costs::seed_conservative(&rules),
        &HostLimits::default(),
    )
    .unwrap();
    assert_eq!(p.cores_busy, 8.0);
    assert_eq!(p.cores, 12); // 8 / 0.7 = 11.4
    assert_eq!(p.memory_bytes, 40e9);
    assert_eq!(p.hosts_by_memory, 2); // 40 GB over 24 usable per host
    assert_eq!(p.hosts_by_cpu, 1);
    assert_eq!((p.hosts, p.binding), (2, Binding::Memory));
    assert_eq!(p.connections_per_host, 5_000_000);
    assert_eq!(p.source_addresses, 250);
}

#[test]
fn a_connection_cap_per_host_sets_the_host_count() {
    let host = HostLimits {
        max_connections: Some(1_000_000),
        ..HostLimits::default()
    };
    let p = plan(&Demand::SEED_10M, &costs(20_000.0, 2_000.0), &host).unwrap();
    assert_eq!((p.hosts, p.binding), (10, Binding::Connections));
    assert_eq!(
        p.source_addresses,
        1_000_000 / CONNECTIONS_PER_SOURCE_ADDRESS
    );
    let ports = HostLimits {
        listen_ports: 4,
        ..host
    };
    let p = plan(&Demand::SEED_10M, &costs(20_000.0, 2_000.0), &ports).unwrap();
    assert_eq!(p.source_addresses, 13); // 1M / (20k x 4) = 12.5
}

#[test]
fn cpu_bound_demand_and_exact_fits_do_not_round_up() {
    // 224k req/s at 20k per core = 11.2 cores = exactly 16 x 0.7: one host, not two.
    let d = Demand {
        connections: 1000,
        rps: 224_000.0,
    };
    let p = plan(&d, &costs(20_000.0, 2_000.0), &HostLimits::default()).unwrap();
    assert_eq!((p.hosts, p.binding), (1, Binding::Cpu));
    assert_eq!(p.cores, 16);
    let d = Demand {
        connections: 1000,
        rps: 1_000_000.0,
    };
    let p = plan(&d, &costs(20_000.0, 2_000.0), &HostLimits::default()).unwrap();
    assert_eq!(p.hosts_by_cpu, 5); // 50 cores / 11.2
    assert_eq!((p.hosts, p.binding), (5, Binding::Cpu));
    assert_eq!(p.source_addresses, 1);
}

#[test]
fn non_positive_inputs_are_refused_by_name() {
    let d = Demand {
        connections: 10,
        rps: 0.0,
    };
    assert_eq!(
        plan(&d, &costs(1.0, 1.0), &HostLimits::default()),
        Err(CapacityError::Invalid {
            what: "demand.rps",
            value: 0.0
        })
    );
    let err = plan(
        &Demand::SEED_10M,
        &costs(f64::NAN, 1.0),
        &HostLimits::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("costs.rps_per_core"), "{err}");
}

#[test]
fn measured_costs_come_from_the_busiest_and_the_largest_steps() {
    let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let data = reports::load_dir(fixture).unwrap();
    let m = measured_costs(&data.run, "speedmimi").unwrap();
    assert_eq!(m.rps_step.step, 0); // 21,400 req/s, the most
    assert!((m.costs.rps_per_core - 21_400.0 / 0.4815).abs() < 1e-6);
    assert_eq!(m.memory_step.step, 3); // 50,000 open
                                       // (292 MB kernel sockets grown + 21.5 MB RSS) / 50,000 connections
    assert!((m.costs.bytes_per_connection - 6_270.0).abs() < 1e-9);
    assert!((m.gb_per_million_connections() - 6.27).abs() < 1e-9);
    assert!(measured_costs(&data.run, "haproxy").is_none());
}

#[test]
fn kernel_slab_growth_raises_the_memory_per_connection() {
    let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let data = reports::load_dir(fixture).unwrap();
    // The fixture records no slab: sockets + RSS peak only, labelled so.
    let without = measured_costs(&data.run, "speedmimi").unwrap();
    let mem = without.memory_step.memory();
    assert_eq!(mem.slab_bytes, None);
    assert!(!mem.rss_grown);
    assert!(without.costs.label.contains("slab not measured"));
    assert!(without.costs.label.contains("proxy RSS peak"));

    // The same run with 3.2 KB of slab grown per connection on the 50,000-connection step.
    let mut run = data.run.clone();
    run.steps[3].kernel.slab_unreclaim_grown_bytes = Some(160_000_000);
    let with = measured_costs(&run, "speedmimi").unwrap();
    // (292 MB sockets + 21.5 MB RSS peak + 160 MB slab) / 50,000
    assert!((with.costs.bytes_per_connection - 9_470.0).abs() < 1e-9);
    assert!(with.costs.bytes_per_connection > without.costs.bytes_per_connection);
    assert!(with
        .costs
        .label
        .contains("proxy RSS peak + kernel socket buffers + kernel slab grown"));

    // With the step's starting RSS known, only the RSS grown counts (20 MB baseline).
    run.steps[3].proxy.rss_start_bytes = Some(20_000_000);
    let grown = measured_costs(&run, "speedmimi").unwrap();
    // (292 MB sockets + 1.5 MB RSS grown + 160 MB slab) / 50,000
    assert!((grown.costs.bytes_per_connection - 9_070.0).abs() < 1e-9);
    assert!((grown.gb_per_million_connections() - 9.07).abs() < 1e-9);
    assert!(grown.costs.label.contains("proxy RSS grown + kernel"));
}
