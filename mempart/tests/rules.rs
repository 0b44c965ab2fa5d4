//! One test per accounting rule and per error code of the engine.

mod common;

use common::{errno, ok};

use mempart::{
    ClassSpec, Credential, Engine, Errno, EventFilter, EventKind, Limits, NewPartition, Policy,
    SetOutcome, Spawn, UNLIMITED,
};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const HOST: Credential = Credential::Host;

fn engine() -> Engine {
    Engine::new(&[
        ClassSpec::new("sysram", 256 * MIB),
        ClassSpec::new("fast", 128 * MIB),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

fn limits(min: u64, max: u64) -> NewPartition {
    NewPartition {
        limits: Limits { min, max },
        ..NewPartition::default()
    }
}

fn used(e: &Engine, path: &str) -> u64 {
    ok(e.metrics(&HOST, path)).used
}

fn class_free(e: &Engine, class: &str) -> u64 {
    ok(e.class_metrics(&HOST, &format!("/partition/mem/{class}"))).free
}

#[test]
fn fifth_32mib_sandbox_in_128mib_class_fails_with_enomem_and_changes_nothing() {
    let mut e = engine();
    for i in 0..4 {
        ok(e.create(
            &HOST,
            &format!("/partition/mem/fast/s{i}"),
            limits(32 * MIB, 32 * MIB),
        ));
    }
    let before = e.clone();
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/s4", limits(32 * MIB, 32 * MIB))),
        Errno::Enomem
    );
    assert_eq!(e, before);
    assert_eq!(class_free(&e, "fast"), 0);
}

#[test]
fn child_minimum_is_charged_to_parent_as_an_allocation() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(16 * MIB, 64 * MIB)));
    ok(e.create(
        &HOST,
        "/partition/mem/fast/p/c",
        limits(24 * MIB, UNLIMITED),
    ));
    let p = ok(e.metrics(&HOST, "/partition/mem/fast/p"));
    assert_eq!(p.used, 24 * MIB);
    assert_eq!(p.charge, 24 * MIB);
    assert_eq!(p.reserved_unused, 0);
    assert_eq!(class_free(&e, "fast"), 104 * MIB);
}

#[test]
fn allocation_uses_unused_reservation_before_discretionary_memory() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/g", limits(8 * MIB, UNLIMITED)));
    ok(e.process_start(
        &HOST,
        10,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/g".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    let free_before = class_free(&e, "fast");
    ok(e.allocate(10, fast, 8 * MIB));
    assert_eq!(class_free(&e, "fast"), free_before);
    ok(e.allocate(10, fast, MIB));
    assert_eq!(class_free(&e, "fast"), free_before - MIB);
    let c = ok(e.class_metrics(&HOST, "/partition/mem/fast"));
    assert_eq!(c.allocated, 9 * MIB);
    assert_eq!(c.reserved_unused, 0);
}

#[test]
fn allocation_over_own_max_returns_enomem_and_changes_nothing() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/r", limits(0, 4 * MIB)));
    ok(e.process_start(
        &HOST,
        10,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/r".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    ok(e.allocate(10, fast, 4 * MIB));
    let before = e.clone();
    assert_eq!(errno(e.allocate(10, fast, PAGE)), Errno::Enomem);
    assert_eq!(e, before);
}

#[test]
fn allocation_over_ancestor_max_returns_enomem() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/a", limits(0, 4 * MIB)));
    ok(e.create(&HOST, "/partition/mem/fast/a/b", limits(0, UNLIMITED)));
    ok(e.process_start(
        &HOST,
        10,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/a/b".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    let err = e.allocate(10, fast, 5 * MIB).err();
    assert_eq!(err.as_ref().map(|e| e.errno), Some(Errno::Enomem));
    assert_eq!(
        err.map(|e| e.subject),
        Some("/partition/mem/fast/a".to_string())
    );
    assert_eq!(used(&e, "/partition/mem/fast/a/b"), 0);
}

#[test]
fn allocation_beyond_class_size_returns_enomem() {
    let mut e = engine();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    ok(e.allocate(1, sysram, 256 * MIB));
    assert_eq!(errno(e.allocate(1, sysram, PAGE)), Errno::Enomem);
}

#[test]
fn reservations_of_others_are_not_available_as_discretionary_memory() {
    let mut e = engine();
    ok(e.create(
        &HOST,
        "/partition/mem/fast/reserved",
        limits(100 * MIB, 100 * MIB),
    ));
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    ok(e.associate(&HOST, 1, "/partition/mem/fast/sys"));
    ok(e.allocate(1, fast, 28 * MIB));
    assert_eq!(errno(e.allocate(1, fast, PAGE)), Errno::Enomem);
}

#[test]
fn free_returns_exactly_what_was_charged() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(2 * MIB, UNLIMITED)));
    ok(e.create(&HOST, "/partition/mem/fast/p/c", limits(0, UNLIMITED)));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/p/c".into()]),
    ));
    let before = e.clone();
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    let grant = ok(e.allocate(1, fast, 3 * MIB));
    assert_eq!(used(&e, "/partition/mem/fast/p"), 3 * MIB);
    ok(e.free(1, grant));
    assert_eq!(used(&e, "/partition/mem/fast/p"), 0);
    assert_eq!(class_free(&e, "fast"), class_free(&before, "fast"));
    let twice = e.free(1, grant);
    assert_eq!(twice.err().map(|e| e.errno), Some(Errno::Einval));
}

#[test]
fn each_association_of_a_process_takes_the_charges_of_its_class() {
    let classes = ["sysram", "fast", "slow", "dma"];
    let specs: Vec<ClassSpec> = classes
        .iter()
        .map(|c| ClassSpec::new(*c, 64 * MIB))
        .collect();
    let mut e = Engine::new(&specs).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<String> = classes
        .iter()
        .map(|c| format!("/partition/mem/{c}/p"))
        .collect();
    for path in &paths {
        ok(e.create(&HOST, path, limits(0, UNLIMITED)));
    }
    ok(e.process_start(&HOST, 1, None, &Spawn::SetMpart(paths.clone())));
    let ids: Vec<_> = classes
        .iter()
        .map(|c| e.class_id(c).unwrap_or_else(|| panic!("{c}")))
        .collect();
    let mut grants = Vec::new();
    for (n, (id, path)) in ids.iter().zip(&paths).enumerate() {
        let bytes = (n as u64 + 1) * PAGE;
        let grant = ok(e.allocate(1, *id, bytes));
        assert_eq!(e.class_of(grant.partition).ok(), Some(*id), "{path}");
        grants.push(grant);
        assert_eq!(used(&e, path), bytes, "{path}");
    }
    for (grant, path) in grants.into_iter().zip(&paths).rev() {
        ok(e.free(1, grant));
        assert_eq!(used(&e, path), 0, "{path}");
    }
    assert!(paths.iter().all(|p| used(&e, p) == 0));
}

#[test]
fn highest_size_is_kept_and_reset_returns_it() {
    let mut e = engine();
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    let g = ok(e.allocate(1, sysram, 3 * MIB));
    ok(e.free(1, g));
    assert_eq!(
        ok(e.metrics(&HOST, "/partition/mem/sysram/sys")).highest,
        3 * MIB
    );
    assert_eq!(
        ok(e.reset_highest(&HOST, "/partition/mem/sysram/sys")),
        3 * MIB
    );
    assert_eq!(ok(e.metrics(&HOST, "/partition/mem/sysram/sys")).highest, 0);
    assert_eq!(ok(e.reset_highest(&HOST, "/partition/mem/sysram")), 3 * MIB);
}

#[test]
fn min_above_max_is_einval() {
    let mut e = engine();
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/x", limits(2 * MIB, MIB))),
        Errno::Einval
    );
    ok(e.create(&HOST, "/partition/mem/fast/x", limits(0, MIB)));
    assert_eq!(
        errno(e.set_limits(&HOST, "/partition/mem/fast/x", Some(2 * MIB), None, false)),
        Errno::Einval
    );
}

#[test]
fn size_not_a_multiple_of_the_unit_is_einval() {
    let mut e = engine();
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/x", limits(100, UNLIMITED))),
        Errno::Einval
    );
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    assert_eq!(errno(e.allocate(1, sysram, 100)), Errno::Einval);
    assert_eq!(errno(e.allocate(1, sysram, 0)), Errno::Einval);
    // Nor can part of a grant be handed back.
    let grant = ok(e.allocate(1, sysram, 8192));
    let before = e.clone();
    let part = mempart::Grant {
        bytes: 100,
        ..grant
    };
    let refused = e.free(1, part).err();
    assert_eq!(refused.as_ref().map(|r| r.errno), Some(Errno::Einval));
    assert_eq!(
        refused.map(|r| r.to_string()),
        Some("EINVAL: pid 1: 100 is not a positive multiple of the unit 4096".to_string()),
        "the refusal names the process, as allocate's does"
    );
    assert!(e == before, "a refused free changes nothing");
    ok(e.free(1, grant));
}

#[test]
fn raising_min_behaves_like_allocating_the_difference() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/a", limits(0, 64 * MIB)));
    ok(e.create(&HOST, "/partition/mem/fast/a/b", limits(0, UNLIMITED)));
    ok(e.set_limits(
        &HOST,
        "/partition/mem/fast/a/b",
        Some(64 * MIB),
        None,
        false,
    ));
    assert_eq!(used(&e, "/partition/mem/fast/a"), 64 * MIB);
    let before = e.clone();
    assert_eq!(
        errno(e.set_limits(
            &HOST,
            "/partition/mem/fast/a/b",
            Some(65 * MIB),
            None,
            false
        )),
        Errno::Enomem
    );
    assert_eq!(e, before);
}

#[test]
fn lowering_max_below_use_is_ebusy_without_reclaim() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/a", limits(0, 8 * MIB)));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/a".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    ok(e.allocate(1, fast, 4 * MIB));
    assert_eq!(
        errno(e.set_limits(&HOST, "/partition/mem/fast/a", None, Some(2 * MIB), false)),
        Errno::Ebusy
    );
}

#[test]
fn reclaim_keeps_a_pending_max_until_use_fits() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/a", limits(0, 8 * MIB)));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/a".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    let g1 = ok(e.allocate(1, fast, 2 * MIB));
    let g2 = ok(e.allocate(1, fast, 2 * MIB));
    let sub = ok(e.subscribe(&HOST, "/partition/mem/fast/a", EventFilter::default(), 16));
    let out = ok(e.set_limits(&HOST, "/partition/mem/fast/a", None, Some(2 * MIB), true));
    assert_eq!(out, SetOutcome::ReclaimPending { excess: 2 * MIB });
    assert_eq!(errno(e.allocate(1, fast, PAGE)), Errno::Enomem);
    let m = ok(e.metrics(&HOST, "/partition/mem/fast/a"));
    assert_eq!(
        (m.current.limits.max, m.pending_max),
        (8 * MIB, Some(2 * MIB))
    );
    ok(e.free(1, g1));
    let m = ok(e.metrics(&HOST, "/partition/mem/fast/a"));
    assert_eq!((m.current.limits.max, m.pending_max), (2 * MIB, None));
    let kinds: Vec<_> = ok(e.drain_events(sub))
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::ConfigChanged,
            EventKind::Reclaim {
                max: 2 * MIB,
                excess: 2 * MIB
            },
            EventKind::ConfigChanged
        ]
    );
    ok(e.free(1, g2));
}

#[test]
fn withdrawing_a_reclaim_keeps_the_old_max() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/a", limits(0, 8 * MIB)));
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a", 4 * MIB));
    ok(e.set_limits(&HOST, "/partition/mem/sysram/a", None, Some(MIB), true));
    assert_eq!(
        ok(e.withdraw_reclaim(&HOST, "/partition/mem/sysram/a")),
        Some(MIB)
    );
    let m = ok(e.metrics(&HOST, "/partition/mem/sysram/a"));
    assert_eq!((m.current.limits.max, m.pending_max), (8 * MIB, None));
    assert_eq!(
        ok(e.withdraw_reclaim(&HOST, "/partition/mem/sysram/a")),
        None
    );
}

#[test]
fn reported_use_completes_a_reclaim_when_it_fits() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/a", limits(0, 8 * MIB)));
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a", 6 * MIB));
    ok(e.set_limits(&HOST, "/partition/mem/sysram/a", None, Some(2 * MIB), true));
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a", 3 * MIB));
    assert_eq!(
        ok(e.metrics(&HOST, "/partition/mem/sysram/a")).pending_max,
        Some(2 * MIB)
    );
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a", 2 * MIB));
    let m = ok(e.metrics(&HOST, "/partition/mem/sysram/a"));
    assert_eq!(
        (m.current.limits.max, m.pending_max, m.used),
        (2 * MIB, None, 2 * MIB)
    );
    assert_eq!(class_free(&e, "sysram"), 254 * MIB);
}

#[test]
fn reported_use_above_a_max_is_kept_and_raised_as_an_event() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/a", limits(0, 8 * MIB)));
    ok(e.create(&HOST, "/partition/mem/sysram/a/b", limits(0, 4 * MIB)));
    let sub_a = ok(e.subscribe(&HOST, "/partition/mem/sysram/a", EventFilter::default(), 16));
    let sub_b = ok(e.subscribe(
        &HOST,
        "/partition/mem/sysram/a/b",
        EventFilter::default(),
        16,
    ));
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a/b", 10 * MIB));
    assert_eq!(used(&e, "/partition/mem/sysram/a/b"), 10 * MIB);
    assert_eq!(used(&e, "/partition/mem/sysram/a"), 10 * MIB);
    assert_eq!(class_free(&e, "sysram"), 246 * MIB);
    let kinds = |e: &mut Engine, sub| -> Vec<EventKind> {
        ok(e.drain_events(sub))
            .events
            .into_iter()
            .map(|e| e.kind)
            .collect()
    };
    assert!(kinds(&mut e, sub_b).contains(&EventKind::OverLimit {
        used: 10 * MIB,
        limit: 4 * MIB
    }));
    assert!(kinds(&mut e, sub_a).contains(&EventKind::OverLimit {
        used: 10 * MIB,
        limit: 8 * MIB
    }));
    ok(e.report_usage(&HOST, "/partition/mem/sysram/a/b", MIB));
    assert_eq!(used(&e, "/partition/mem/sysram/a"), MIB);
    assert_eq!(class_free(&e, "sysram"), 255 * MIB);
}

#[test]
fn use_reports_need_the_superuser_and_a_figure_the_class_can_hold() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/sysram/a", limits(0, 8 * MIB)));
    assert_eq!(
        errno(e.report_usage(
            &Credential::guest(1000, 1000),
            "/partition/mem/sysram/a",
            MIB
        )),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.report_usage(&HOST, "/partition/mem/sysram/a", 257 * MIB)),
        Errno::Einval
    );
    assert_eq!(
        errno(e.report_usage(&HOST, "/partition/mem/sysram/nope", MIB)),
        Errno::Enoent
    );
    ok(e.report_usage(&Credential::guest_root(), "/partition/mem/sysram/a", MIB));
    assert_eq!(used(&e, "/partition/mem/sysram/a"), MIB);
}

#[test]
fn destroy_refusals_each_have_their_errno() {
    let mut e = engine();
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/sysram/sys")),
        Errno::Eperm
    );
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(0, UNLIMITED)));
    ok(e.create(&HOST, "/partition/mem/fast/p/c", limits(0, UNLIMITED)));
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/fast/p")),
        Errno::Enotempty
    );
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/p/c".into()]),
    ));
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/fast/p/c")),
        Errno::Ebusy
    );
    ok(e.process_exit(1));
    ok(e.set_policy(&HOST, "/partition/mem/fast/p/c", Policy::Permanent));
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/fast/p/c")),
        Errno::Eacces
    );
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/fast/nope")),
        Errno::Enoent
    );
}

#[test]
fn destroy_returns_the_reservation() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(32 * MIB, UNLIMITED)));
    assert_eq!(class_free(&e, "fast"), 96 * MIB);
    ok(e.destroy(&HOST, "/partition/mem/fast/p"));
    assert_eq!(class_free(&e, "fast"), 128 * MIB);
    assert_eq!(
        errno(e.metrics(&HOST, "/partition/mem/fast/p")),
        Errno::Enoent
    );
}

#[test]
fn object_pinned_partition_cannot_be_destroyed() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(0, UNLIMITED)));
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/fast/p".into()]),
    ));
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    ok(e.object_create(1, "shm", fast));
    ok(e.process_exit(1));
    assert_eq!(
        errno(e.destroy(&HOST, "/partition/mem/fast/p")),
        Errno::Ebusy
    );
    ok(e.object_unlink(&HOST, "shm"));
    ok(e.destroy(&HOST, "/partition/mem/fast/p"));
}

#[test]
fn policies_are_one_way_and_locked_partitions_refuse_changes() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(0, UNLIMITED)));
    ok(e.set_policy(&HOST, "/partition/mem/fast/p", Policy::ConfigLock));
    assert_eq!(
        errno(e.clear_policy(&HOST, "/partition/mem/fast/p", Policy::ConfigLock)),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.set_limits(&HOST, "/partition/mem/fast/p", None, Some(MIB), false)),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.chmod(&HOST, "/partition/mem/fast/p", 0o700)),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.chown(&HOST, "/partition/mem/fast/p", 1, 1)),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.set_policy(&HOST, "/partition/mem/fast/p", Policy::Permanent)),
        Errno::Eperm
    );
    ok(e.create(&HOST, "/partition/mem/fast/p/child", limits(0, UNLIMITED)));
    ok(e.set_policy(&HOST, "/partition/mem/fast/p", Policy::Terminal));
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/p/other", limits(0, UNLIMITED))),
        Errno::Eperm
    );
    ok(e.clear_policy(&HOST, "/partition/mem/fast/p/child", Policy::Terminal));
}

#[test]
fn duplicate_names_are_eexist() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(0, UNLIMITED)));
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/p", limits(0, UNLIMITED))),
        Errno::Eexist
    );
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast", limits(0, UNLIMITED))),
        Errno::Eexist
    );
    assert_eq!(
        errno(e.add_class(&ClassSpec::new("fast", MIB))),
        Errno::Eexist
    );
}

#[test]
fn missing_parent_is_enoent_and_process_leaf_is_enotdir() {
    let mut e = engine();
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/fast/a/b", limits(0, UNLIMITED))),
        Errno::Enoent
    );
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/slow/a", limits(0, UNLIMITED))),
        Errno::Enoent
    );
    ok(e.process_start(&HOST, 7, None, &Spawn::Inherit));
    assert_eq!(
        errno(e.create(&HOST, "/partition/mem/sysram/sys/7/x", limits(0, UNLIMITED))),
        Errno::Enotdir
    );
}

#[test]
fn unknown_process_is_esrch() {
    let mut e = engine();
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    assert_eq!(errno(e.allocate(99, sysram, PAGE)), Errno::Esrch);
    assert_eq!(errno(e.process_exit(99)), Errno::Esrch);
    assert_eq!(
        errno(e.process_start(&HOST, 2, Some(99), &Spawn::Inherit)),
        Errno::Esrch
    );
    assert_eq!(
        errno(e.associate(&HOST, 99, "/partition/mem/sysram/sys")),
        Errno::Esrch
    );
}

#[test]
fn class_size_can_shrink_only_to_what_is_charged() {
    let mut e = engine();
    let fast = e.class_id("fast").unwrap_or_else(|| panic!("fast"));
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(64 * MIB, UNLIMITED)));
    assert_eq!(errno(e.set_class_size(fast, 32 * MIB)), Errno::Ebusy);
    ok(e.set_class_size(fast, 64 * MIB));
    assert_eq!(class_free(&e, "fast"), 0);
    assert_eq!(errno(e.set_class_size(fast, 100)), Errno::Einval);
}

#[test]
fn sys_partition_can_start_as_a_guarantee() {
    let e = Engine::new(&[ClassSpec {
        sys_min: 64 * MIB,
        ..ClassSpec::new("sysram", 256 * MIB)
    }])
    .unwrap_or_else(|err| panic!("{err}"));
    let sys = ok(e.metrics(&HOST, "/partition/mem/sysram/sys"));
    assert_eq!(sys.kind, mempart::PartitionType::Guarantee);
    assert_eq!(class_free(&e, "sysram"), 192 * MIB);
    assert_eq!(
        Engine::new(&[ClassSpec::new("fast", MIB)])
            .err()
            .map(|e| e.errno),
        Some(Errno::Einval)
    );
}

#[test]
fn metrics_report_configuration_now_and_at_creation() {
    let mut e = engine();
    ok(e.create(&HOST, "/partition/mem/fast/p", limits(MIB, 4 * MIB)));
    ok(e.set_limits(
        &HOST,
        "/partition/mem/fast/p",
        Some(2 * MIB),
        Some(8 * MIB),
        false,
    ));
    let m = ok(e.metrics(&HOST, "/partition/mem/fast/p"));
    assert_eq!(
        m.created.limits,
        Limits {
            min: MIB,
            max: 4 * MIB
        }
    );
    assert_eq!(
        m.current.limits,
        Limits {
            min: 2 * MIB,
            max: 8 * MIB
        }
    );
    assert_eq!(m.kind, mempart::PartitionType::GuaranteeRestricted);
    assert_eq!(m.reserved_unused, 2 * MIB);
}
