//! The start-up topology file: a full example loads; every broken rule is reported by entry.

use mempart::topology::{parse_size, Topology, TopologyError};
use mempart::{ClassSpec, Credential, EntryKind, PartitionType, Spawn, UNLIMITED};

const MIB: u64 = 1 << 20;

const EXAMPLE: &str = r#"
[classes.sysram]
size = "256M"
sys_min = "32M"

[classes."class 1"]
size = "64M"
unit = "64K"

[[partition]]
path = "/partition/mem/sysram/apps/web"
max = "64M"
mode = "0750"
uid = 1000
gid = 1000

[[partition]]
path = "/partition/mem/sysram/apps"
min = "96M"
policies = ["permanent", "config_lock", "terminal"]

[[partition]]
path = "/partition/mem/class 1/sandbox"
min = "32M"
max = "32M"

[[group]]
name = "web"
mode = 0o755
members = { ram = "/partition/mem/sysram/apps/web", fast = "/partition/mem/class 1/sandbox" }
"#;

fn errors(result: Result<mempart::Engine, Vec<TopologyError>>) -> Vec<String> {
    match result {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_example_builds_the_declared_tree() {
    let topology = Topology::parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    let mut e = topology
        .build(&[])
        .unwrap_or_else(|errs| panic!("{errs:?}"));
    let host = Credential::Host;
    let apps = e
        .metrics(&host, "/partition/mem/sysram/apps")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(apps.kind, PartitionType::Guarantee);
    assert!(
        apps.current.policies.permanent
            && apps.current.policies.config_lock
            && apps.current.policies.terminal
    );
    let web = e
        .metrics(&host, "/partition/mem/sysram/apps/web")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((web.current.perm.uid, web.current.perm.mode), (1000, 0o750));
    assert_eq!(web.current.limits.max, 64 * MIB);
    let sysram = e
        .class_metrics(&host, "/partition/mem/sysram")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sysram.free, 256 * MIB - 32 * MIB - 96 * MIB);
    let c1 = e
        .class_metrics(&host, "/partition/mem/class 1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c1.unit, c1.free), (64 * 1024, 32 * MIB));
    let group = e
        .list(&host, "/partition/mem/web")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(group.len(), 2);
    assert!(group
        .iter()
        .all(|d| matches!(d.kind, EntryKind::Pseudo { .. })));
    e.process_start(
        &host,
        1,
        None,
        &Spawn::SetMpart(vec!["/partition/mem/web".into()]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.process_partitions(1).map(|v| v.len()).ok(), Some(2));
}

#[test]
fn classes_defined_by_the_vmm_are_merged_and_must_agree() {
    let text = "[classes.sysram]\nsys_min = \"4M\"\n[classes.fast]\nsize = \"8M\"\n";
    let topology = Topology::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let defined = [
        ClassSpec::new("sysram", 64 * MIB),
        ClassSpec::new("fast", 16 * MIB),
    ];
    let errs = errors(topology.build(&defined));
    assert_eq!(
        errs,
        vec!["class \"fast\": size 8388608 differs from the VMM's 16777216"]
    );
    let errs = errors(
        Topology::parse("[classes.fast]\n")
            .unwrap_or_else(|e| panic!("{e}"))
            .build(&[]),
    );
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("class \"fast\": has no size"),
        "{errs:?}"
    );
    let errs = errors(Topology::default().build(&[]));
    assert!(errs[0].contains("sysram is not defined"), "{errs:?}");
}

#[test]
fn every_violated_rule_is_reported_naming_its_entry() {
    let text = r#"
[classes.sysram]
size = "64M"
[classes.fast]
size = "128M"

[[partition]]
path = "/partition/mem/fast/s1"
min = "32M"
max = "32M"
[[partition]]
path = "/partition/mem/fast/s2"
min = "32M"
max = "32M"
[[partition]]
path = "/partition/mem/fast/s3"
min = "32M"
max = "32M"
[[partition]]
path = "/partition/mem/fast/s4"
min = "32M"
max = "32M"
[[partition]]
path = "/partition/mem/fast/s5"
min = "32M"
max = "32M"
[[partition]]
path = "/partition/mem/sysram/bad"
min = "8M"
max = "4M"
[[partition]]
path = "/partition/mem/sysram/orphan/child"
[[partition]]
path = "/partition/mem/sysram/s1"
[[partition]]
path = "/partition/mem/sysram/s1"
[[partition]]
path = "/partition/mem/nowhere/x"

[[group]]
name = "sysram"
[[group]]
name = "g"
members = { a = "/partition/mem/fast/s1", b = "/partition/mem/fast/s2" }
"#;
    let topology = Topology::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let errs = errors(topology.build(&[]));
    let expect = [
        "partition \"/partition/mem/sysram/s1\": declared twice",
        "partition \"/partition/mem/fast/s5\": ENOMEM: /partition/mem/fast:",
        "partition \"/partition/mem/sysram/bad\": EINVAL:",
        "partition \"/partition/mem/sysram/s1\": EEXIST:",
        "partition \"/partition/mem/nowhere/x\": ENOENT:",
        "partition \"/partition/mem/sysram/orphan/child\": ENOENT:",
        "group \"sysram\": EEXIST:",
        "group \"g\" member \"b\": EEXIST:",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn malformed_documents_are_parse_errors_with_a_location() {
    for (text, needle) in [
        ("[classes.sysram]\nsize = \"12Q\"\n", "unknown suffix"),
        ("[classes.sysram]\nsize = -1\n", "negative"),
        ("[classes.sysram]\nbogus = 1\n", "unknown field"),
        (
            "[[partition]]\npath = \"/partition/mem/sysram/a\"\nmode = \"999\"\n",
            "octal",
        ),
        (
            "[[partition]]\npath = \"/partition/mem/sysram/a\"\npolicies = [\"sticky\"]\n",
            "unknown variant",
        ),
        ("[classes.sysram\n", "line 1"),
    ] {
        match Topology::parse(text) {
            Err(TopologyError::Parse(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    let huge = "#".repeat(2 << 20);
    assert!(matches!(
        Topology::parse(&huge),
        Err(TopologyError::Parse(_))
    ));
}

#[test]
fn sizes_parse_with_binary_suffixes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("4K"), Ok(4096));
    assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
    assert_eq!(parse_size("1g"), Ok(1 << 30));
    assert_eq!(parse_size("unlimited"), Ok(UNLIMITED));
    assert!(parse_size("20000000T").is_err());
    assert!(parse_size("M").is_err());
    assert!(parse_size("").is_err());
}

#[test]
fn partitions_in_a_class_missing_from_the_engine_name_their_entry() {
    let text = "[classes.sysram]\nsize = \"1M\"\n[classes.bad]\nsize = 100\n";
    let errs = errors(
        Topology::parse(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .build(&[]),
    );
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("class \"bad\": EINVAL"), "{errs:?}");
}
