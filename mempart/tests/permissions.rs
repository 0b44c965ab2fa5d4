//! The permission matrix: every operation × caller × policy → the expected result.
//!
//! The partition under test is `/partition/mem/sysram/p`, owned by uid 1000 gid 100, mode 0750.

use mempart::{ClassSpec, Credential, Engine, Errno, EventFilter, NewPartition, Policy, Spawn};

const MIB: u64 = 1 << 20;
const PART: &str = "/partition/mem/sysram/p";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Metrics,
    List,
    Subscribe,
    CreateChild,
    SetMax,
    Chmod,
    Chown,
    SetTerminal,
    Destroy,
    Associate,
    ResetHighest,
    ReportUsage,
    WithdrawReclaim,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pol {
    None,
    Terminal,
    ConfigLock,
    Permanent,
}

/// Owner, group member, other, guest root, host.
fn callers() -> [Credential; 5] {
    [
        Credential::guest(1000, 100),
        Credential::Guest {
            uid: 1001,
            gid: 5,
            groups: vec![100],
        },
        Credential::guest(1002, 5),
        Credential::guest_root(),
        Credential::Host,
    ]
}

const OK: Option<Errno> = None;
const ACCES: Option<Errno> = Some(Errno::Eacces);
const PERM: Option<Errno> = Some(Errno::Eperm);

/// The expected outcome, per caller, written out by hand from DESIGN §6.
fn expected(op: Op, pol: Pol) -> [Option<Errno>; 5] {
    let read = [OK, OK, ACCES, OK, OK];
    let write = [OK, ACCES, ACCES, OK, OK];
    let write_refused = [PERM, ACCES, ACCES, PERM, PERM];
    match (op, pol) {
        (Op::Metrics | Op::List | Op::Subscribe | Op::Associate, _) => read,
        // A measurement, not a configuration: only the agent (guest root) and the host.
        (Op::ReportUsage, _) => [PERM, PERM, PERM, OK, OK],
        (Op::CreateChild, Pol::Terminal) => write_refused,
        (Op::SetMax | Op::Chmod | Op::Chown | Op::WithdrawReclaim, Pol::ConfigLock) => {
            write_refused
        }
        (Op::Destroy, Pol::Permanent) => [ACCES; 5],
        _ => write,
    }
}

fn fixture(pol: Pol) -> Engine {
    let mut e =
        Engine::new(&[ClassSpec::new("sysram", 64 * MIB)]).unwrap_or_else(|e| panic!("{e}"));
    let host = Credential::Host;
    let spec = NewPartition {
        mode: 0o750,
        ..NewPartition::default()
    };
    let setup = e
        .create(&host, PART, spec)
        .and_then(|_| e.chown(&host, PART, 1000, 100))
        .and_then(|_| match pol {
            Pol::None => Ok(()),
            Pol::Terminal => e.set_policy(&host, PART, Policy::Terminal),
            Pol::ConfigLock => e.set_policy(&host, PART, Policy::ConfigLock),
            Pol::Permanent => e.set_policy(&host, PART, Policy::Permanent),
        });
    setup.unwrap_or_else(|err| panic!("{err}"));
    e
}

fn run(e: &mut Engine, op: Op, cred: &Credential) -> Option<Errno> {
    let result = match op {
        Op::Metrics => e.metrics(cred, PART).map(drop),
        Op::List => e.list(cred, PART).map(drop),
        Op::Subscribe => e.subscribe(cred, PART, EventFilter::default(), 8).map(drop),
        Op::CreateChild => e
            .create(cred, &format!("{PART}/child"), NewPartition::default())
            .map(drop),
        Op::SetMax => e.set_limits(cred, PART, None, Some(MIB), false).map(drop),
        Op::Chmod => e.chmod(cred, PART, 0o755),
        Op::Chown => e.chown(cred, PART, 1000, 100),
        Op::SetTerminal => e.set_policy(cred, PART, Policy::Terminal),
        Op::Destroy => e.destroy(cred, PART),
        Op::Associate => e
            .process_start(cred, 50, None, &Spawn::Inherit)
            .and_then(|_| e.associate(cred, 50, PART)),
        Op::ResetHighest => e.reset_highest(cred, PART).map(drop),
        Op::ReportUsage => e.report_usage(cred, PART, MIB),
        Op::WithdrawReclaim => e.withdraw_reclaim(cred, PART).map(drop),
    };
    result.err().map(|err| err.errno)
}

#[test]
fn every_operation_by_every_caller_under_every_policy() {
    let ops = [
        Op::Metrics,
        Op::List,
        Op::Subscribe,
        Op::CreateChild,
        Op::SetMax,
        Op::Chmod,
        Op::Chown,
        Op::SetTerminal,
        Op::Destroy,
        Op::Associate,
        Op::ResetHighest,
        Op::ReportUsage,
        Op::WithdrawReclaim,
    ];
    for pol in [Pol::None, Pol::Terminal, Pol::ConfigLock, Pol::Permanent] {
        for op in ops {
            for (who, cred) in callers().iter().enumerate() {
                let mut e = fixture(pol);
                let before = e.clone();
                let got = run(&mut e, op, cred);
                let want = expected(op, pol).get(who).copied().flatten();
                assert_eq!(got, want, "{op:?} by {cred:?} under {pol:?}");
                if got.is_some() && op != Op::Associate {
                    assert_eq!(e, before, "{op:?} by {cred:?} under {pol:?} changed state");
                }
            }
        }
    }
}

#[test]
fn guest_root_cannot_associate_without_any_execute_bit_but_the_host_can() {
    let mut e = fixture(Pol::None);
    let host = Credential::Host;
    e.chmod(&host, PART, 0o600)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        run(&mut e, Op::Associate, &Credential::guest_root()),
        Some(Errno::Eacces)
    );
    let mut e = fixture(Pol::None);
    e.chmod(&host, PART, 0o600)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(run(&mut e, Op::Associate, &host), None);
}

#[test]
fn a_user_cannot_associate_another_users_process() {
    let mut e = fixture(Pol::None);
    let owner = Credential::guest(1000, 100);
    e.process_start(&Credential::guest(1002, 5), 60, None, &Spawn::Inherit)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        e.associate(&owner, 60, PART).err().map(|e| e.errno),
        Some(Errno::Eperm)
    );
    assert!(e.associate(&Credential::guest_root(), 60, PART).is_ok());
}

#[test]
fn only_the_superuser_and_the_host_create_groups_and_root_partitions() {
    let mut e = fixture(Pol::None);
    let user = Credential::guest(1000, 100);
    let errno = |r: mempart::Result<mempart::Node>| r.err().map(|e| e.errno);
    assert_eq!(
        errno(e.create(&user, "/partition/mem/grp", NewPartition::default())),
        Some(Errno::Eacces)
    );
    assert_eq!(
        errno(e.create(&user, "/partition/mem/sysram/mine", NewPartition::default())),
        Some(Errno::Eacces)
    );
    assert_eq!(
        errno(e.create(
            &Credential::guest_root(),
            "/partition/mem/grp",
            NewPartition::default()
        )),
        None
    );
    e.chmod(&Credential::Host, "/partition/mem/sysram", 0o777)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        errno(e.create(&user, "/partition/mem/sysram/mine", NewPartition::default())),
        None
    );
}
