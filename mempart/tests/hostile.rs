//! Hostile input: bad names, huge sizes, stale ids and deep trees give errors, never panics.

mod common;

use common::{errno, ok};

use mempart::{
    ClassSpec, Credential, Engine, Errno, Grant, Limits, NewPartition, Spawn, MAX_DEPTH,
    MAX_PARTITIONS, PID_LIMIT, UNLIMITED,
};

const HOST: Credential = Credential::Host;
const PAGE: u64 = 4096;
const TOP: u64 = u64::MAX - (PAGE - 1);

fn limits(min: u64, max: u64) -> NewPartition {
    NewPartition {
        limits: Limits { min, max },
        ..NewPartition::default()
    }
}

#[test]
fn bad_names_are_refused_everywhere() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    let long = "n".repeat(4096);
    for (path, want) in [
        ("/partition/mem/sysram/".to_string() + "", Errno::Eexist),
        ("/partition/mem/sysram//x".to_string(), Errno::Einval),
        ("/partition/mem/sysram/a\0b".to_string(), Errno::Einval),
        (format!("/partition/mem/sysram/{long}"), Errno::Enametoolong),
        ("/partition/mem/sysram/..".to_string(), Errno::Einval),
        ("/partition/mem/sysram/42".to_string(), Errno::Einval),
        ("relative/path".to_string(), Errno::Enoent),
        (String::new(), Errno::Enoent),
    ] {
        assert_eq!(
            errno(e.create(&HOST, &path, NewPartition::default())),
            want,
            "{path:?}"
        );
    }
    assert_eq!(errno(e.add_class(&ClassSpec::new("", 4096))), Errno::Einval);
    assert_eq!(
        errno(e.add_class(&ClassSpec::new("a/b", 4096))),
        Errno::Einval
    );
    assert_eq!(
        errno(e.add_class(&ClassSpec::new(long.clone(), 4096))),
        Errno::Enametoolong
    );
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    assert_eq!(errno(e.object_create(1, "x\0", sysram)), Errno::Einval);
    assert_eq!(
        errno(e.object_create(1, &long, sysram)),
        Errno::Enametoolong
    );
    assert_eq!(
        errno(e.process_start(
            &HOST,
            2,
            None,
            &Spawn::SetMpart(vec![format!("/partition/mem/{long}")])
        )),
        Errno::Enametoolong
    );
    assert_eq!(
        errno(e.chmod(&HOST, "/partition/mem/sysram/sys", 0o7777)),
        Errno::Einval
    );
}

#[test]
fn sizes_near_u64_max_use_checked_arithmetic() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", TOP)]));
    ok(e.create(
        &HOST,
        "/partition/mem/sysram/big",
        limits(TOP - PAGE, UNLIMITED),
    ));
    assert_eq!(
        errno(e.create(
            &HOST,
            "/partition/mem/sysram/more",
            limits(2 * PAGE, UNLIMITED)
        )),
        Errno::Enomem
    );
    ok(e.process_start(
        &HOST,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/sysram/big".into()]),
    ));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    ok(e.allocate(1, sysram, TOP - PAGE));
    ok(e.allocate(1, sysram, PAGE));
    assert_eq!(errno(e.allocate(1, sysram, TOP)), Errno::Enomem);
    assert_eq!(errno(e.allocate(1, sysram, PAGE)), Errno::Enomem);
    assert_eq!(
        errno(e.set_limits(&HOST, "/partition/mem/sysram/sys", Some(PAGE), None, false)),
        Errno::Enomem
    );
    ok(e.object_create(1, "o", sysram));
    assert_eq!(errno(e.object_resize("o", TOP)), Errno::Enomem);
    ok(e.process_exit(1));
    assert_eq!(
        ok(e.class_metrics(&HOST, "/partition/mem/sysram")).allocated,
        0
    );
    assert_eq!(
        errno(Engine::new(&[ClassSpec::new("sysram", u64::MAX)])),
        Errno::Einval
    );
    assert_eq!(
        errno(Engine::new(&[ClassSpec {
            unit: 3,
            ..ClassSpec::new("sysram", 4096)
        }])),
        Errno::Einval
    );
    assert_eq!(
        errno(Engine::new(&[ClassSpec {
            sys_min: TOP,
            ..ClassSpec::new("sysram", PAGE)
        }])),
        Errno::Enomem
    );
}

#[test]
fn stale_and_unknown_ids_are_errors() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    ok(e.create(&HOST, "/partition/mem/sysram/a", NewPartition::default()));
    let id = ok(e.resolve_partition("/partition/mem/sysram/a"));
    ok(e.destroy(&HOST, "/partition/mem/sysram/a"));
    ok(e.create(&HOST, "/partition/mem/sysram/b", NewPartition::default()));
    assert_eq!(errno(e.partition_metrics(id)), Errno::Enoent);
    assert_eq!(errno(e.path_of(id)), Errno::Enoent);
    ok(e.process_start(&HOST, 1, None, &Spawn::Inherit));
    assert_eq!(
        errno(e.free(
            1,
            Grant {
                partition: id,
                bytes: PAGE
            }
        )),
        Errno::Einval
    );
    let bogus_class = {
        let mut other = ok(Engine::new(&[
            ClassSpec::new("sysram", 1 << 30),
            ClassSpec::new("x", 4096),
        ]));
        let x = other.class_id("x").unwrap_or_else(|| panic!("x"));
        ok(other.process_start(&HOST, 1, None, &Spawn::Inherit));
        x
    };
    assert_eq!(errno(e.allocate(1, bogus_class, PAGE)), Errno::Enoent);
    assert_eq!(errno(e.report_violation(bogus_class, 0)), Errno::Enoent);
    assert_eq!(errno(e.set_class_size(bogus_class, PAGE)), Errno::Enoent);
}

#[test]
fn pids_no_linux_guest_has_are_refused_and_any_pid_can_be_asked_for() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    let before = e.clone();
    for pid in [PID_LIMIT, PID_LIMIT + 1, u32::MAX] {
        assert_eq!(
            errno(e.process_start(&HOST, pid, None, &Spawn::Inherit)),
            Errno::Einval,
            "pid {pid}"
        );
        assert_eq!(e, before, "a refused pid {pid} changed nothing");
        assert_eq!(errno(e.allocate(pid, sysram, PAGE)), Errno::Esrch);
        assert_eq!(errno(e.process_exit(pid)), Errno::Esrch);
    }
    for pid in [0, 1023, 1024, PID_LIMIT - 1] {
        ok(e.process_start(&HOST, pid, None, &Spawn::Inherit));
        let grant = ok(e.allocate(pid, sysram, PAGE));
        ok(e.free(pid, grant));
    }
    assert_eq!(e.pids(), vec![0, 1023, 1024, PID_LIMIT - 1]);
    ok(e.process_exit(1023));
    assert_eq!(e.pids(), vec![0, 1024, PID_LIMIT - 1]);
    ok(e.allocate(PID_LIMIT - 1, sysram, PAGE));
}

#[test]
fn a_tree_64_deep_works_and_the_65th_level_is_refused() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    let mut path = String::from("/partition/mem/sysram");
    for depth in 1..=MAX_DEPTH {
        path.push_str(&format!("/d{depth}"));
        ok(e.create(&HOST, &path, limits(PAGE, UNLIMITED)));
    }
    assert_eq!(
        errno(e.create(&HOST, &format!("{path}/deeper"), NewPartition::default())),
        Errno::Einval
    );
    ok(e.process_start(&HOST, 1, None, &Spawn::SetMpart(vec![path.clone()])));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    let g = ok(e.allocate(1, sysram, 2 * PAGE));
    // Nested reservations overlap: each level's min is covered by its child's charge.
    let used = |e: &Engine| ok(e.metrics(&HOST, "/partition/mem/sysram/d1")).used;
    let free = |e: &Engine| ok(e.class_metrics(&HOST, "/partition/mem/sysram")).free;
    assert_eq!(used(&e), 2 * PAGE);
    assert_eq!(free(&e), (1 << 30) - 2 * PAGE);
    ok(e.free(1, g));
    assert_eq!(used(&e), PAGE);
    assert_eq!(free(&e), (1 << 30) - PAGE);
}

#[test]
fn partition_count_is_bounded() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    for i in 1..MAX_PARTITIONS {
        ok(e.create(
            &HOST,
            &format!("/partition/mem/sysram/p{i}"),
            NewPartition::default(),
        ));
    }
    assert_eq!(
        errno(e.create(
            &HOST,
            "/partition/mem/sysram/one-more",
            NewPartition::default()
        )),
        Errno::Enomem
    );
}

/// An engine with a partition `victim` only uid 1001 may join, and its process 10 in it.
fn victim_engine() -> Engine {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 64 << 20)]));
    let victim = "/partition/mem/sysram/victim";
    ok(e.create(&HOST, victim, limits(16 << 20, 32 << 20)));
    ok(e.chown(&HOST, victim, 1001, 1001));
    ok(e.chmod(&HOST, victim, 0o700));
    let owner = Credential::guest(1001, 1001);
    ok(e.process_start(&owner, 10, None, &Spawn::SetMpart(vec![victim.into()])));
    e
}

#[test]
fn a_forged_inheritance_from_another_users_process_is_refused_and_changes_nothing() {
    let mut e = victim_engine();
    let before = e.clone();
    let attacker = Credential::guest(1000, 1000);
    assert_eq!(
        errno(e.process_start(&attacker, 11, Some(10), &Spawn::Inherit)),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.process_start(&attacker, 11, Some(10), &Spawn::SetMpart(Vec::new()))),
        Errno::Eperm
    );
    assert_eq!(
        errno(e.register(
            &attacker,
            &Credential::guest(1001, 1001),
            11,
            None,
            &Spawn::Inherit
        )),
        Errno::Eperm,
        "a registrar names an owner it controls"
    );
    assert_eq!(
        errno(e.register(&Credential::guest_root(), &HOST, 11, None, &Spawn::Inherit)),
        Errno::Eperm,
        "a guest registrar cannot make a host-owned process"
    );
    assert!(e == before, "the refusals changed the engine");
    // The agent (the guest superuser) registers a fork for the child's own user.
    let child = Credential::guest(1001, 1001);
    ok(e.register(
        &Credential::guest_root(),
        &child,
        11,
        Some(10),
        &Spawn::Inherit,
    ));
    let view = ok(e.process_partitions(11));
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].path, "/partition/mem/sysram/victim");
    assert_eq!(
        errno(e.may_act_for(&Credential::guest(1000, 1000), 11)),
        Errno::Eperm
    );
}

#[test]
fn replacing_associations_needs_execute_on_each_and_keeps_charges_where_they_were() {
    let mut e = victim_engine();
    let open = "/partition/mem/sysram/open";
    ok(e.create(&HOST, open, limits(0, 8 << 20)));
    ok(e.chmod(&HOST, open, 0o777));
    let me = Credential::guest(1000, 1000);
    ok(e.process_start(&me, 20, None, &Spawn::Inherit));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
    let grant = ok(e.allocate(20, sysram, 2 * PAGE));
    let before = e.clone();
    let victim = "/partition/mem/sysram/victim".to_string();
    assert_eq!(
        errno(e.replace_associations(&me, 20, &[open.to_string(), victim])),
        Errno::Eacces
    );
    assert_eq!(
        errno(e.replace_associations(&me, 10, &[open.to_string()])),
        Errno::Eperm,
        "another user's process"
    );
    assert!(e == before, "the refusals changed the engine");
    ok(e.replace_associations(&me, 20, &[open.to_string()]));
    let view = ok(e.process_partitions(20));
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].path, open);
    assert_eq!(ok(e.retained_charges(20)), vec![grant]);
    let sys = ok(e.metrics(&HOST, "/partition/mem/sysram/sys"));
    assert!(!sys.processes.contains(&20), "{:?}", sys.processes);
    assert_eq!(sys.own, 2 * PAGE, "the charge stays where it was made");
    // No names: only the sysram association stays.
    ok(e.replace_associations(&me, 20, &[]));
    assert_eq!(ok(e.process_partitions(20))[0].path, open);
    ok(e.process_exit(20));
    assert_eq!(ok(e.metrics(&HOST, "/partition/mem/sysram/sys")).own, 0);
}

#[test]
fn an_exit_after_a_report_below_the_charge_completes_and_leaves_nothing() {
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 64 << 20)]));
    let apps = "/partition/mem/sysram/apps";
    ok(e.create(&HOST, apps, limits(0, 32 << 20)));
    let root = Credential::guest_root();
    for (pid, report) in [(30, 0), (31, PAGE), (32, 3 * PAGE + 1)] {
        ok(e.process_start(&root, pid, None, &Spawn::SetMpart(vec![apps.into()])));
        let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));
        ok(e.allocate(pid, sysram, 4 * PAGE));
        ok(e.report_usage(&root, apps, report));
        ok(e.process_exit(pid));
        let m = ok(e.metrics(&HOST, apps));
        assert!(m.processes.is_empty(), "pid {pid} stays a member");
        assert_eq!(m.own, 0, "after a report of {report}");
    }
    ok(e.destroy(&HOST, apps));
}

/// One user fills its share of the global partition and subscription limits: it is
/// refused there while another user and root carry on.
#[test]
fn one_user_holds_at_most_a_share_of_each_global_limit() {
    use mempart::{EventFilter, MAX_SUBSCRIPTIONS};
    let mut e = ok(Engine::new(&[ClassSpec::new("sysram", 1 << 30)]));
    for uid in [1000, 1001] {
        let home = format!("/partition/mem/sysram/u{uid}");
        ok(e.create(&HOST, &home, NewPartition::default()));
        ok(e.chown(&HOST, &home, uid, uid));
    }
    let mallory = Credential::guest(1000, 1000);
    let share = MAX_PARTITIONS / 4;
    for i in 1..share {
        ok(e.create(
            &mallory,
            &format!("/partition/mem/sysram/u1000/p{i}"),
            NewPartition::default(),
        ));
    }
    let refused = e
        .create(
            &mallory,
            "/partition/mem/sysram/u1000/one-more",
            NewPartition::default(),
        )
        .err()
        .map(|e| (e.errno, e.to_string()));
    assert!(
        matches!(&refused, Some((Errno::Enomem, m)) if m.contains("one user's share")),
        "{refused:?}"
    );
    let alice = Credential::guest(1001, 1001);
    ok(e.create(
        &alice,
        "/partition/mem/sysram/u1001/p",
        NewPartition::default(),
    ));
    ok(e.create(&HOST, "/partition/mem/sysram/host", NewPartition::default()));

    let watch = |e: &mut Engine, cred: &Credential| {
        e.subscribe(
            cred,
            "/partition/mem/sysram/u1000",
            EventFilter::default(),
            1,
        )
    };
    for _ in 0..MAX_SUBSCRIPTIONS / 4 {
        ok(watch(&mut e, &mallory));
    }
    assert_eq!(errno(watch(&mut e, &mallory)), Errno::Enomem);
    ok(watch(&mut e, &Credential::guest_root()));
}
