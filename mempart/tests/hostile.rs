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
