//! Name space, groups, processes, inheritance, shared objects and events.

mod common;

use common::{errno, ok};

use mempart::{
    ClassSpec, Credential, DirEntry, Engine, EntryKind, Errno, EventFilter, EventKind, Limits,
    NewPartition, Node, Spawn, Target,
};

const MIB: u64 = 1 << 20;
const HOST: Credential = Credential::Host;

/// sysram, "class 1" and "class 2"; partitions sysram/p0, "class 1"/p1, "class 2"/p3;
/// group my_pseudo_p0 naming all three.
fn seed_example() -> Engine {
    let mut e = ok(Engine::new(&[
        ClassSpec::new("sysram", 256 * MIB),
        ClassSpec::new("class 1", 64 * MIB),
        ClassSpec::new("class 2", 64 * MIB),
    ]));
    for p in [
        "/partition/mem/sysram/p0",
        "/partition/mem/class 1/p1",
        "/partition/mem/class 2/p3",
    ] {
        ok(e.create(&HOST, p, NewPartition::default()));
    }
    ok(e.create(
        &HOST,
        "/partition/mem/my_pseudo_p0",
        NewPartition::default(),
    ));
    ok(e.link(
        &HOST,
        "/partition/mem/my_pseudo_p0/p1",
        "/partition/mem/sysram/p0",
    ));
    ok(e.link(
        &HOST,
        "/partition/mem/my_pseudo_p0/p2",
        "/partition/mem/class 1/p1",
    ));
    ok(e.link(
        &HOST,
        "/partition/mem/my_pseudo_p0/p3",
        "/partition/mem/class 2/p3",
    ));
    e
}

fn paths(e: &Engine, pid: u32) -> Vec<String> {
    let mut v: Vec<String> = ok(e.process_partitions(pid))
        .into_iter()
        .map(|a| a.path)
        .collect();
    v.sort();
    v
}

fn names(entries: Vec<DirEntry>) -> Vec<String> {
    entries.into_iter().map(|d| d.name).collect()
}

#[test]
fn listing_shows_classes_groups_partitions_and_processes() {
    let mut e = seed_example();
    assert_eq!(
        names(ok(e.list(&HOST, "/partition/mem"))),
        vec!["sysram", "class 1", "class 2", "my_pseudo_p0"]
    );
    assert_eq!(
        names(ok(e.list(&HOST, "/partition/mem/sysram"))),
        vec!["p0", "sys"]
    );
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.process_start(&HOST, 147468, Some(1), &Spawn::Inherit));
    let sys = ok(e.list(&HOST, "/partition/mem/sysram/sys"));
    assert_eq!(names(sys.clone()), vec!["1", "147468"]);
    assert!(sys.iter().all(|d| d.kind == EntryKind::Process));
    assert!(matches!(
        ok(e.resolve("/partition/mem/sysram/sys/147468")),
        Node::Process(_, 147468)
    ));
    assert_eq!(
        errno(e.resolve("/partition/mem/sysram/sys/5")),
        Errno::Enoent
    );
    let group = ok(e.list(&HOST, "/partition/mem/my_pseudo_p0"));
    assert_eq!(
        group.first().map(|d| d.kind.clone()),
        Some(EntryKind::Pseudo {
            target: "/partition/mem/sysram/p0".into()
        })
    );
}

#[test]
fn stat_gives_owner_group_and_mode_of_classes_groups_and_partitions() {
    let mut e = seed_example();
    let mine = "/partition/mem/class 1/p1/mine";
    ok(e.create(
        &HOST,
        mine,
        NewPartition {
            mode: 0o700,
            ..NewPartition::default()
        },
    ));
    for node in ["/partition/mem/my_pseudo_p0", mine] {
        ok(e.chown(&HOST, node, 1000, 100));
    }
    ok(e.chmod(&HOST, "/partition/mem/my_pseudo_p0", 0o710));
    let stat = |path: &str| {
        let p = ok(e.stat(path));
        (p.uid, p.gid, p.mode)
    };
    assert_eq!(stat("/partition/mem"), (0, 0, 0o755));
    assert_eq!(stat("/partition/mem/class 1"), (0, 0, 0o755));
    assert_eq!(stat("/partition/mem/my_pseudo_p0"), (1000, 100, 0o710));
    assert_eq!(stat(mine), (1000, 100, 0o700));
    // Pseudo partitions and processes are names for something else.
    assert_eq!(
        errno(e.stat("/partition/mem/my_pseudo_p0/p1")),
        Errno::Einval
    );
    assert_eq!(errno(e.stat("/partition/mem/nothing")), Errno::Enoent);
}

#[test]
fn group_association_associates_with_every_member() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.associate(&HOST, 1, "/partition/mem/my_pseudo_p0"));
    assert_eq!(
        paths(&e, 1),
        vec![
            "/partition/mem/class 1/p1",
            "/partition/mem/class 2/p3",
            "/partition/mem/sysram/p0"
        ]
    );
    assert!(ok(e.metrics(&HOST, "/partition/mem/sysram/sys"))
        .processes
        .is_empty());
}

#[test]
fn a_group_names_at_most_one_partition_per_class() {
    let mut e = seed_example();
    ok(e.create(
        &HOST,
        "/partition/mem/sysram/other",
        NewPartition::default(),
    ));
    assert_eq!(
        errno(e.link(
            &HOST,
            "/partition/mem/my_pseudo_p0/p9",
            "/partition/mem/sysram/other"
        )),
        Errno::Eexist
    );
    assert_eq!(
        errno(e.link(
            &HOST,
            "/partition/mem/my_pseudo_p0/x",
            "/partition/mem/sysram"
        )),
        Errno::Einval
    );
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/sysram/p0")),
        Errno::Ebusy
    );
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/my_pseudo_p0")),
        Errno::Enotempty
    );
    for p in ["p1", "p2", "p3"] {
        ok(e.destroy(&HOST, &format!("/partition/mem/my_pseudo_p0/{p}")));
    }
    ok(e.destroy(&HOST, "/partition/mem/my_pseudo_p0"));
    ok(e.destroy(&HOST, "/partition/mem/sysram/p0"));
}

#[test]
fn default_inheritance_skips_no_inherit_associations() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.associate(&HOST, 1, "/partition/mem/my_pseudo_p0"));
    ok(e.set_no_inherit(&HOST, 1, "/partition/mem/class 1/p1", true));
    ok(e.process_start(&HOST, 2, Some(1), &Spawn::Inherit));
    assert_eq!(
        paths(&e, 2),
        vec!["/partition/mem/class 2/p3", "/partition/mem/sysram/p0"]
    );
    assert!(ok(e.process_partitions(2)).iter().all(|a| !a.no_inherit));
}

#[test]
fn no_inherit_on_sysram_gives_the_child_sys() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.associate(&HOST, 1, "/partition/mem/sysram/p0"));
    ok(e.set_no_inherit(&HOST, 1, "/partition/mem/sysram/p0", true));
    ok(e.process_start(&HOST, 2, Some(1), &Spawn::Inherit));
    assert_eq!(paths(&e, 2), vec!["/partition/mem/sysram/sys"]);
}

#[test]
fn setmpart_with_empty_list_inherits_only_sysram() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.associate(&HOST, 1, "/partition/mem/my_pseudo_p0"));
    ok(e.process_start(&HOST, 2, Some(1), &Spawn::SetMpart(vec![])));
    assert_eq!(paths(&e, 2), vec!["/partition/mem/sysram/p0"]);
}

#[test]
fn setmpart_with_a_list_associates_exactly_those_and_expands_groups() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    ok(e.associate(&HOST, 1, "/partition/mem/my_pseudo_p0"));
    ok(e.process_start(
        &HOST,
        2,
        Some(1),
        &Spawn::SetMpart(vec!["/partition/mem/class 2/p3".into()]),
    ));
    assert_eq!(
        paths(&e, 2),
        vec!["/partition/mem/class 2/p3", "/partition/mem/sysram/sys"]
    );
    ok(e.process_start(
        &HOST,
        3,
        Some(2),
        &Spawn::SetMpart(vec!["/partition/mem/my_pseudo_p0".into()]),
    ));
    assert_eq!(paths(&e, 3).len(), 3);
    assert_eq!(
        errno(e.process_start(
            &HOST,
            4,
            Some(1),
            &Spawn::SetMpart(vec![
                "/partition/mem/sysram/p0".into(),
                "/partition/mem/sysram/sys".into()
            ])
        )),
        Errno::Einval
    );
    assert_eq!(
        errno(e.process_start(
            &HOST,
            4,
            Some(1),
            &Spawn::SetMpart(vec!["/partition/mem/sysram".into()])
        )),
        Errno::Einval
    );
}

#[test]
fn sysram_association_can_be_replaced_but_not_removed() {
    let mut e = seed_example();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    assert_eq!(
        errno(e.disassociate(&HOST, 1, "/partition/mem/sysram/sys")),
        Errno::Einval
    );
    ok(e.associate(&HOST, 1, "/partition/mem/class 1/p1"));
    ok(e.disassociate(&HOST, 1, "/partition/mem/class 1/p1"));
    assert_eq!(
        errno(e.disassociate(&HOST, 1, "/partition/mem/class 1/p1")),
        Errno::Enoent
    );
    assert_eq!(paths(&e, 1), vec!["/partition/mem/sysram/sys"]);
}

#[test]
fn exit_frees_private_allocations_including_those_left_in_former_partitions() {
    let mut e = seed_example();
    let c1 = e.class_id("class 1").unwrap_or_else(|| panic!("class 1"));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/class 1/p1".into()]),
    ));
    ok(e.allocate(1, c1, 4 * MIB));
    ok(e.associate(&HOST, 1, "/partition/mem/class 1/sys"));
    ok(e.allocate(1, c1, 2 * MIB));
    assert_eq!(
        ok(e.metrics(&HOST, "/partition/mem/class 1/p1")).used,
        4 * MIB
    );
    assert_eq!(ok(e.retained_charges(1)).len(), 1);
    ok(e.process_exit(1));
    assert_eq!(ok(e.metrics(&HOST, "/partition/mem/class 1/p1")).used, 0);
    assert_eq!(
        ok(e.class_metrics(&HOST, "/partition/mem/class 1")).allocated,
        0
    );
    assert!(ok(e.metrics(&HOST, "/partition/mem/class 1/sys"))
        .processes
        .is_empty());
}

#[test]
fn shared_object_growth_is_charged_to_the_object_partition_and_outlives_its_creator() {
    let mut e = seed_example();
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/sysram/p0".into()]),
    ));
    ok(e.process_start(&HOST, 2, None, &Spawn::Inherit));
    ok(e.object_create(1, "ring", sysram));
    ok(e.object_resize("ring", 2 * MIB));
    ok(e.process_exit(1));
    ok(e.object_resize("ring", 6 * MIB));
    assert_eq!(
        ok(e.metrics(&HOST, "/partition/mem/sysram/p0")).used,
        6 * MIB
    );
    assert_eq!(ok(e.metrics(&HOST, "/partition/mem/sysram/sys")).used, 0);
    assert_eq!(errno(e.object_create(2, "ring", sysram)), Errno::Eexist);
    assert_eq!(
        errno(e.object_unlink(&Credential::guest(5, 5), "ring")),
        Errno::Eacces
    );
    ok(e.object_unlink(&HOST, "ring"));
    assert_eq!(ok(e.metrics(&HOST, "/partition/mem/sysram/p0")).used, 0);
    assert_eq!(errno(e.object_resize("ring", 0)), Errno::Enoent);
}

#[test]
fn events_cover_processes_children_config_sizes_and_violations_in_order() {
    let mut e = seed_example();
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    let filter = EventFilter {
        threshold: Some(2 * MIB),
        delta: Some(MIB),
        ..EventFilter::default()
    };
    let sub = ok(e.subscribe(&HOST, "/partition/mem/sysram/p0", filter, 64));
    let class_sub = ok(e.subscribe(&HOST, "/partition/mem/sysram", EventFilter::default(), 64));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/sysram/p0".into()]),
    ));
    let child = ok(e.create(&HOST, "/partition/mem/sysram/p0/c", NewPartition::default()));
    let g = ok(e.allocate(1, sysram, 3 * MIB));
    ok(e.set_limits(
        &HOST,
        "/partition/mem/sysram/p0",
        None,
        Some(8 * MIB),
        false,
    ));
    ok(e.free(1, g));
    ok(e.destroy(&HOST, "/partition/mem/sysram/p0/c"));
    ok(e.process_exit(1));
    ok(e.report_violation(sysram, 0x1000_0000));
    let Node::Partition(child) = child else {
        panic!("not a partition")
    };
    let batch = ok(e.drain_events(sub));
    assert_eq!(batch.missed, 0);
    let kinds: Vec<EventKind> = batch.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::ProcessAssociated { pid: 1 },
            EventKind::ChildCreated { child },
            EventKind::Threshold {
                threshold: 2 * MIB,
                size: 3 * MIB,
                up: true
            },
            EventKind::Delta {
                previous: 0,
                size: 3 * MIB
            },
            EventKind::ConfigChanged,
            EventKind::Threshold {
                threshold: 2 * MIB,
                size: 0,
                up: false
            },
            EventKind::Delta {
                previous: 3 * MIB,
                size: 0
            },
            EventKind::ChildDestroyed { child },
            EventKind::ProcessDisassociated { pid: 1 },
        ]
    );
    let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<u64>>());
    assert!(batch
        .events
        .iter()
        .all(|ev| matches!(ev.target, Target::Partition(_))));
    let class_kinds: Vec<EventKind> = ok(e.drain_events(class_sub))
        .events
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(class_kinds, vec![EventKind::Violation { gpa: 0x1000_0000 }]);
}

#[test]
fn overloaded_subscriber_is_told_how_many_it_missed() {
    let mut e = seed_example();
    let sub = ok(e.subscribe(&HOST, "/partition/mem/sysram/p0", EventFilter::default(), 4));
    for pid in 1..=10 {
        ok(e.process_start(
            &HOST,
            pid,
            None,
            &Spawn::SetMpart(vec!["/partition/mem/sysram/p0".into()]),
        ));
    }
    let batch = ok(e.drain_events(sub));
    assert_eq!(batch.events.len(), 4);
    assert_eq!(batch.missed, 6);
    ok(e.process_exit(1));
    let next = ok(e.drain_events(sub));
    assert_eq!(next.events.first().map(|ev| ev.seq), Some(11));
    ok(e.unsubscribe(sub));
    assert_eq!(errno(e.drain_events(sub)), Errno::Enoent);
}

#[test]
fn destroyed_partition_tells_its_subscribers() {
    let mut e = seed_example();
    ok(e.create(
        &HOST,
        "/partition/mem/sysram/gone",
        NewPartition {
            limits: Limits::OPEN,
            mode: 0o700,
            zone: false,
        },
    ));
    let sub = ok(e.subscribe(
        &HOST,
        "/partition/mem/sysram/gone",
        EventFilter::default(),
        4,
    ));
    ok(e.destroy(&HOST, "/partition/mem/sysram/gone"));
    let kinds: Vec<EventKind> = ok(e.drain_events(sub))
        .events
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![EventKind::Destroyed]);
    assert_eq!(
        errno(e.subscribe(
            &HOST,
            "/partition/mem/sysram/p0",
            EventFilter {
                delta: Some(0),
                ..EventFilter::default()
            },
            4
        )),
        Errno::Einval
    );
    assert_eq!(
        errno(e.subscribe(&HOST, "/partition/mem/sysram/p0", EventFilter::default(), 0)),
        Errno::Einval
    );
}
