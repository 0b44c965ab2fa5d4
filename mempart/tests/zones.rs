//! Zoned sysram partitions: which partitions may be zoned, how a zone is picked, held and
//! freed, and how a zoned partition's limits stay within its zone.

mod common;

use common::{errno, ok};

use mempart::topology::Topology;
use mempart::{
    ClassSpec, Credential, Engine, Errno, Limits, NewPartition, SetOutcome, ZoneSpec, UNLIMITED,
};

const MIB: u64 = 1 << 20;
const HOST: Credential = Credential::Host;

fn zone(node: u32, capacity: u64) -> ZoneSpec {
    ZoneSpec {
        node,
        capacity,
        block: 2 * MIB,
    }
}

/// sysram 256 MiB, a typed class, and zones of 128 MiB (node 1) and 512 MiB (node 2).
fn engine() -> Engine {
    let mut e = ok(Engine::new(&[
        ClassSpec::new("sysram", 256 * MIB),
        ClassSpec::new("fast", 128 * MIB),
    ]));
    ok(e.add_zone(zone(2, 512 * MIB)));
    ok(e.add_zone(zone(1, 128 * MIB)));
    e
}

fn zoned(min: u64, max: u64) -> NewPartition {
    NewPartition {
        limits: Limits { min, max },
        zone: true,
        ..NewPartition::default()
    }
}

/// The errno and reason of a result that must fail.
fn refused<T: std::fmt::Debug>(r: mempart::Result<T>) -> (Errno, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => (e.errno, e.reason),
    }
}

fn node_of(e: &Engine, path: &str) -> Option<u32> {
    ok(e.metrics(&HOST, path)).zone.map(|z| z.spec.node)
}

#[test]
fn a_zoned_partition_takes_the_smallest_free_zone_that_holds_its_max() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/db", zoned(16 * MIB, 64 * MIB)));
    assert_eq!(node_of(&e, "/partition/mem/sysram/db"), Some(1));
    ok(e.create(&HOST, "/partition/mem/sysram/web", zoned(0, 64 * MIB)));
    assert_eq!(
        node_of(&e, "/partition/mem/sysram/web"),
        Some(2),
        "node 1 is taken: the larger one is next"
    );
    let third = e.create(&HOST, "/partition/mem/sysram/etl", zoned(0, 64 * MIB));
    let refusal = refused(third);
    assert_eq!(refusal.0, Errno::Enomem);
    assert!(
        refusal.1.contains("0 of 2 declared zones are free"),
        "{}",
        refusal.1
    );
    assert!(
        e.resolve_partition("/partition/mem/sysram/etl").is_err(),
        "a refused create leaves nothing"
    );
    ok(e.create(&HOST, "/partition/mem/sysram/open", NewPartition::default()));
    assert_eq!(node_of(&e, "/partition/mem/sysram/open"), None);
}

#[test]
fn only_top_level_sysram_partitions_with_a_finite_max_within_the_zone_can_be_zoned() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/apps", NewPartition::default()));
    let cases = [
        (
            "/partition/mem/sysram/apps/db",
            zoned(0, 64 * MIB),
            "directly under",
        ),
        (
            "/partition/mem/fast/db",
            zoned(0, 64 * MIB),
            "directly under",
        ),
        (
            "/partition/mem/sysram/db",
            zoned(0, UNLIMITED),
            "finite max",
        ),
        ("/partition/mem/sysram/db", zoned(0, MIB), "below one block"),
    ];
    for (path, spec, why) in cases {
        let (errno, reason) = refused(e.create(&HOST, path, spec));
        assert_eq!(errno, Errno::Einval, "{path}: {reason}");
        assert!(reason.contains(why), "{path}: {reason}");
    }
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/sysram/db", zoned(0, 1024 * MIB))),
        Errno::Enomem,
        "no zone is that large"
    );
    assert!(e.zone_bindings().iter().all(|b| b.partition.is_none()));
}

#[test]
fn a_zoned_partition_min_is_charged_to_sysram_and_its_max_stays_within_its_zone() {
    let mut e = engine();
    let path = "/partition/mem/sysram/db";
    ok(e.create(&HOST, path, zoned(32 * MIB, 64 * MIB)));
    let class = ok(e.class_metrics(&HOST, "/partition/mem/sysram"));
    assert_eq!(
        class.free,
        224 * MIB,
        "the min is reserved by the rule of subdivision"
    );
    assert_eq!(
        errno(e.set_limits(&HOST, path, None, Some(UNLIMITED), false)),
        Errno::Einval
    );
    assert_eq!(
        errno(e.set_limits(&HOST, path, None, Some(256 * MIB), false)),
        Errno::Einval,
        "node 1 holds 128 MiB"
    );
    assert_eq!(
        ok(e.set_limits(&HOST, path, None, Some(128 * MIB), false)),
        SetOutcome::Applied
    );
    let binding = e
        .zone_bindings()
        .into_iter()
        .find(|b| b.spec.node == 1)
        .unwrap_or_else(|| panic!("no node 1"));
    assert_eq!(binding.partition, Some(ok(e.resolve_partition(path))));
    assert_eq!((binding.min, binding.plugged_target), (32 * MIB, 128 * MIB));
}

#[test]
fn a_lower_max_lowers_the_zone_once_use_fits_and_a_destroy_frees_the_zone() {
    let mut e = engine();
    let path = "/partition/mem/sysram/db";
    ok(e.create(&HOST, path, zoned(0, 64 * MIB)));
    ok(e.report_usage(&HOST, path, 24 * MIB));
    let outcome = ok(e.set_limits(&HOST, path, None, Some(9 * MIB), true));
    assert_eq!(outcome, SetOutcome::ReclaimPending { excess: 15 * MIB });
    let target = |e: &Engine| {
        e.zone_bindings()
            .into_iter()
            .find(|b| b.spec.node == 1)
            .map(|b| (b.partition.is_some(), b.plugged_target))
    };
    assert_eq!(
        target(&e),
        Some((true, 64 * MIB)),
        "the zone keeps the max in force while use is above the pending one"
    );
    ok(e.report_usage(&HOST, path, 4 * MIB));
    assert_eq!(
        target(&e),
        Some((true, 8 * MIB)),
        "once use fits, whole blocks within the new max"
    );
    ok(e.set_limits(&HOST, path, None, Some(64 * MIB), false));
    assert_eq!(target(&e), Some((true, 64 * MIB)), "a raise plugs more");
    ok(e.report_usage(&HOST, path, 24 * MIB));
    ok(e.set_limits(&HOST, path, None, Some(9 * MIB), true));
    ok(e.withdraw_reclaim(&HOST, path));
    assert_eq!(target(&e), Some((true, 64 * MIB)), "a withdrawn reclaim");
    ok(e.report_usage(&HOST, path, 0));
    ok(e.destroy(&HOST, path));
    assert_eq!(target(&e), Some((false, 0)));
    ok(e.create(&HOST, "/partition/mem/sysram/again", zoned(0, 64 * MIB)));
    assert_eq!(node_of(&e, "/partition/mem/sysram/again"), Some(1));
}

#[test]
fn zone_declarations_are_checked() {
    let mut e = engine();
    assert_eq!(errno(e.add_zone(zone(1, 64 * MIB))), Errno::Eexist);
    let odd = ZoneSpec {
        node: 3,
        capacity: 3 * MIB,
        block: 2 * MIB,
    };
    assert_eq!(errno(e.add_zone(odd)), Errno::Einval);
    let zero = ZoneSpec {
        node: 3,
        capacity: 0,
        block: 2 * MIB,
    };
    assert_eq!(errno(e.add_zone(zero)), Errno::Einval);
    for node in 3..=mempart::MAX_ZONES as u32 {
        ok(e.add_zone(zone(node, 128 * MIB)));
    }
    assert_eq!(
        errno(e.add_zone(zone(1000, 128 * MIB))),
        Errno::Enomem,
        "at most MAX_ZONES"
    );
}

#[test]
fn a_topology_zones_its_entries_and_names_those_it_cannot() {
    let text = r#"
[[partition]]
path = "/partition/mem/sysram/db"
min = "16M"
max = "64M"
zone = true

[[partition]]
path = "/partition/mem/sysram/db/inner"
max = "32M"

[[partition]]
path = "/partition/mem/sysram/web"
zone = true
"#;
    let topology = Topology::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        topology.zoned(),
        vec![
            ("/partition/mem/sysram/db", 64 * MIB),
            ("/partition/mem/sysram/web", UNLIMITED)
        ]
    );
    let sysram = [ClassSpec::new("sysram", 256 * MIB)];
    let errors = topology
        .build_with_zones(&sysram, &[zone(1, 128 * MIB)])
        .err()
        .unwrap_or_default();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.starts_with("partition \"/partition/mem/sysram/web\"")
                && t.contains("finite max")),
        "{text:?}"
    );
    let fixed = text_without_web(&topology);
    let e = fixed
        .build_with_zones(&sysram, &[zone(1, 128 * MIB)])
        .unwrap_or_else(|errors| panic!("{errors:?}"));
    assert_eq!(node_of(&e, "/partition/mem/sysram/db"), Some(1));
    assert_eq!(node_of(&e, "/partition/mem/sysram/db/inner"), None);
    let none = fixed.build(&sysram).err().unwrap_or_default();
    assert!(
        none.iter()
            .any(|e| e.to_string().contains("0 of 0 declared zones")),
        "{none:?}"
    );
}

fn text_without_web(topology: &Topology) -> Topology {
    let mut fixed = topology.clone();
    fixed.partitions.retain(|p| !p.path.ends_with("/web"));
    fixed
}
