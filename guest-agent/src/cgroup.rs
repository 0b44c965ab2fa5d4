//! The cgroup v2 mirror of sysram partitions: one cgroup per partition under
//! `<root>/mempart`, with `memory.min` and `memory.max` from the partition's limits, and
//! inside it a group [`OWN`] holding the partition's processes, so an association bites
//! inside the guest. Once any partition is zoned, each top-level group also gets
//! `cpuset.mems`: a zoned partition's node, node 0 for the others; nested groups inherit.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One sysram partition as the mirror needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Path below `/partition/mem/sysram`, e.g. `apps/web`.
    pub rel: String,
    /// `memory.min`.
    pub min: u64,
    /// `memory.max` (`u64::MAX` for none).
    pub max: u64,
    /// Processes to place in it.
    pub pids: Vec<u32>,
    /// The guest NUMA node of its zone, for a zoned (top-level) partition.
    pub zone: Option<u32>,
}

/// Something [`CgroupMirror::apply`] could not do that leaves part of the tree unenforced
/// without stopping the rest: a group not created or configured, the memory controller
/// not delegated to a group's children, or a process not moved into its group.
#[derive(Debug)]
pub struct Shortfall {
    /// The group or control file that refused.
    pub path: PathBuf,
    /// The process that stayed where it was, when a move failed.
    pub pid: Option<u32>,
    /// Why.
    pub error: io::Error,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(
                f,
                "pid {pid} not moved by {}: {}",
                self.path.display(),
                self.error
            ),
            None => write!(f, "{}: {}", self.path.display(), self.error),
        }
    }
}

/// Writes partitions into a cgroup v2 hierarchy (or any directory laid out like one).
pub struct CgroupMirror {
    root: PathBuf,
    node_dir: PathBuf,
}

/// The node everything but zoned partitions lives on.
const HOME_NODE: u32 = 0;

/// Sets a control file's value (replacing it in a look-alike directory). A file that
/// already reads `text` is left alone: the mirror is applied again on every change, and
/// rewriting an unchanged value would cost a write and, in a look-alike directory, leave
/// the file empty for a moment while it is truncated.
fn write_file(path: &Path, text: &str) -> io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|current| current == text) {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Adds a process to a cgroup: one pid per write, as cgroupfs wants.
fn add_process(path: &Path, pid: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(format!("{pid}\n").as_bytes())
}

/// The group inside each partition's group that holds the partition's own processes:
/// cgroup v2 lets only a group without controllers enabled for children hold processes,
/// and a partition's group has its children's groups below it. No partition's group can
/// take this name: theirs never contain a '.'.
pub const OWN: &str = ".own";

/// The longest name cgroupfs takes, in bytes.
const GROUP_NAME_MAX: usize = 255;

/// The cgroup name of a partition named `name`: '%', '.' and newline written as `%XX`,
/// so that no group takes the name of a control file (each has a '.') or of [`OWN`], and
/// cgroupfs, which refuses newlines, accepts it. A name that grows past what cgroupfs
/// takes keeps its start and ends in `%%` and a hash of the whole name (`%%` appears in
/// no other group name).
pub fn group_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' | '.' | '\n' => out.push_str(&format!("%{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    if out.len() <= GROUP_NAME_MAX {
        return out;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(name, &mut hasher);
    let tail = format!("%%{:016x}", std::hash::Hasher::finish(&hasher));
    let mut cut = GROUP_NAME_MAX - tail.len();
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out + &tail
}

/// The group of the partition at `rel` (names joined by '/') below `base`.
fn group_dir(base: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .fold(base.to_path_buf(), |dir, name| dir.join(group_name(name)))
}

/// The partition `rel` sits in, if it is not a root.
fn parent_of(rel: &str) -> Option<&str> {
    rel.rsplit_once('/').map(|(parent, _)| parent)
}

/// Enables the memory controller (and the cpuset controller when `cpuset`) for the
/// children of the group at `dir`.
fn delegate_memory(dir: &Path, cpuset: bool, shortfalls: &mut Vec<Shortfall>) {
    let path = dir.join("cgroup.subtree_control");
    let controllers = if cpuset {
        "+memory +cpuset\n"
    } else {
        "+memory\n"
    };
    if let Err(error) = write_file(&path, controllers) {
        shortfalls.push(Shortfall {
            path,
            pid: None,
            error,
        });
    }
}

impl CgroupMirror {
    /// A mirror under `<cgroup_root>/mempart`, reading node figures from `node_dir`
    /// (`/sys/devices/system/node` in a guest).
    pub fn new(cgroup_root: &Path, node_dir: &Path) -> CgroupMirror {
        CgroupMirror {
            root: cgroup_root.to_path_buf(),
            node_dir: node_dir.to_path_buf(),
        }
    }

    fn base(&self) -> PathBuf {
        self.root.join("mempart")
    }

    /// Makes the hierarchy match `nodes`: creates and configures their cgroups, places
    /// their processes and removes cgroups of partitions that are gone. Fails only when
    /// `mempart/` itself cannot be made or read; returns what it could not do (a group it
    /// could not create or configure, whose partitions below are then left alone; a
    /// controller not delegated; a process not moved — one that has exited meanwhile is
    /// not one of them).
    pub fn apply(&self, nodes: &[Node]) -> io::Result<Vec<Shortfall>> {
        let base = self.base();
        fs::create_dir_all(&base)?;
        let mut shortfalls = Vec::new();
        // Delegate the memory controller down to every level we create, and the cpuset
        // controller down to the top-level groups when a zone needs it.
        let zoned = nodes.iter().any(|n| n.zone.is_some());
        delegate_memory(&self.root, zoned, &mut shortfalls);
        delegate_memory(&base, zoned, &mut shortfalls);
        let mut sorted: Vec<&Node> = nodes.iter().collect();
        sorted.sort_by_key(|n| n.rel.matches('/').count());
        let mut wanted = BTreeSet::new();
        let mut failed: Vec<PathBuf> = Vec::new();
        for node in sorted {
            let dir = group_dir(&base, &node.rel);
            if failed.iter().any(|f| dir.starts_with(f)) {
                continue;
            }
            wanted.insert(dir.clone());
            if zoned && !node.rel.contains('/') && node.rel != "sys" {
                let path = dir.join("cpuset.mems");
                let mems = node.zone.unwrap_or(HOME_NODE);
                // Processes move after their group's node is set, never before.
                let set =
                    fs::create_dir_all(&dir).and_then(|()| write_file(&path, &format!("{mems}\n")));
                if let Err(error) = set {
                    shortfalls.push(Shortfall {
                        path,
                        pid: None,
                        error,
                    });
                }
            }
            let own = match self.configure(node, nodes, &dir, &mut shortfalls) {
                Ok(own) => own,
                Err((path, error)) => {
                    shortfalls.push(Shortfall {
                        path,
                        pid: None,
                        error,
                    });
                    failed.push(dir);
                    continue;
                }
            };
            self.place(node, &base, &own, &mut shortfalls);
            wanted.insert(own);
        }
        self.remove_stale(&base, &wanted, &failed, &mut shortfalls)?;
        Ok(shortfalls)
    }

    /// Creates the group of `node` at `dir` with its limits, and its [`OWN`] group with
    /// the partition's min less its children's (`nodes` holds them). Returns [`OWN`], or
    /// the directory or control file that refused.
    fn configure(
        &self,
        node: &Node,
        nodes: &[Node],
        dir: &Path,
        shortfalls: &mut Vec<Shortfall>,
    ) -> Result<PathBuf, (PathBuf, io::Error)> {
        let make = |path: PathBuf| fs::create_dir_all(&path).map_err(|e| (path, e));
        let set = |path: PathBuf, text: String| write_file(&path, &text).map_err(|e| (path, e));
        make(dir.to_path_buf())?;
        set(dir.join("memory.min"), format!("{}\n", node.min))?;
        let max = if node.max == u64::MAX {
            "max".to_string()
        } else {
            node.max.to_string()
        };
        set(dir.join("memory.max"), format!("{max}\n"))?;
        delegate_memory(dir, false, shortfalls);
        let own = dir.join(OWN);
        make(own.clone())?;
        let children_min: u64 = nodes
            .iter()
            .filter(|c| parent_of(&c.rel) == Some(node.rel.as_str()))
            .map(|c| c.min)
            .fold(0, u64::saturating_add);
        let own_min = node.min.saturating_sub(children_min);
        set(own.join("memory.min"), format!("{own_min}\n"))?;
        Ok(own)
    }

    /// Moves the processes of `node` into its group `own`. Processes of `sys` belong in
    /// the root group (unlimited like an Open sys): they stay where they are unless they
    /// come from a group below `base`. Others move only when they are not in `own` yet.
    fn place(&self, node: &Node, base: &Path, own: &Path, shortfalls: &mut Vec<Shortfall>) {
        let sys = node.rel == "sys";
        let procs = if sys {
            self.root.join("cgroup.procs")
        } else {
            own.join("cgroup.procs")
        };
        for &pid in &node.pids {
            let placed = if sys {
                !self.is_below(pid, base)
            } else {
                self.is_in(pid, own)
            };
            if placed {
                continue;
            }
            match add_process(&procs, pid) {
                // A process that has exited meanwhile cannot be moved; that is fine.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(error) => shortfalls.push(Shortfall {
                    path: procs.clone(),
                    pid: Some(pid),
                    error,
                }),
                Ok(()) => {}
            }
        }
    }

    /// Each node's own use: the `memory.current` of its [`OWN`] group, which holds its
    /// processes (the engine adds children itself; what the kernel spends on a group's
    /// children's groups is charged to the group, not to [`OWN`]). `sys` (whose
    /// processes stay in the root group) and nodes whose figure cannot be read are left
    /// out.
    pub fn own_usage(&self, nodes: &[Node]) -> Vec<(String, u64)> {
        let base = self.base();
        nodes
            .iter()
            .filter(|n| n.rel != "sys")
            .filter_map(|n| {
                let path = group_dir(&base, &n.rel).join(OWN).join("memory.current");
                let own = fs::read_to_string(path).ok()?.trim().parse().ok()?;
                Some((n.rel.clone(), own))
            })
            .collect()
    }

    /// What `sys` holds of node 0: the node's use (its `meminfo`'s `MemUsed`) less what
    /// the processes of partitions on node 0 use (`own`, as [`CgroupMirror::own_usage`]
    /// gives it; partitions in a zone, nested ones included, live on another node). `None`
    /// when the node's figures cannot be read.
    pub fn sys_usage(&self, nodes: &[Node], own: &[(String, u64)]) -> Option<u64> {
        let path = self
            .node_dir
            .join(format!("node{HOME_NODE}"))
            .join("meminfo");
        let text = fs::read_to_string(path).ok()?;
        let used_kib: u64 = text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.ends_with("MemUsed")
                .then(|| value.trim().trim_end_matches("kB").trim().parse().ok())?
        })?;
        let zoned_tops: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.zone.is_some())
            .map(|n| n.rel.as_str())
            .collect();
        let on_home_node: u64 = own
            .iter()
            .filter(|(rel, _)| !zoned_tops.contains(rel.split('/').next().unwrap_or(rel)))
            .map(|(_, bytes)| *bytes)
            .fold(0, u64::saturating_add);
        Some(used_kib.saturating_mul(1024).saturating_sub(on_home_node))
    }

    /// The group `pid` sits in, below the root (`/proc/<pid>/cgroup` reads `0::/<group>`
    /// on a cgroup v2 guest); `None` if that cannot be read.
    fn group_of(&self, pid: u32) -> Option<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let group = text.lines().find_map(|l| l.strip_prefix("0::/"))?;
        Some(self.root.join(group))
    }

    /// Whether `pid` already sits in the group at `dir`.
    fn is_in(&self, pid: u32, dir: &Path) -> bool {
        self.group_of(pid).is_some_and(|g| g == dir)
    }

    /// Whether `pid` sits in a group below `dir`.
    fn is_below(&self, pid: u32, dir: &Path) -> bool {
        self.group_of(pid).is_some_and(|g| g.starts_with(dir))
    }

    /// Removes groups below `dir` that no partition wants, deepest first, and leaves
    /// the groups `left_alone` (ones that could not be configured) as they are, with
    /// everything below them. Processes left in a removed group (the engine no longer
    /// knows them there) go back to the root group first; a group that cannot be removed
    /// is a shortfall.
    fn remove_stale(
        &self,
        dir: &Path,
        wanted: &BTreeSet<PathBuf>,
        left_alone: &[PathBuf],
        shortfalls: &mut Vec<Shortfall>,
    ) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if !path.is_dir() || left_alone.contains(&path) {
                continue;
            }
            self.remove_stale(&path, wanted, left_alone, shortfalls)?;
            if wanted.contains(&path) {
                continue;
            }
            let left = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            let root_procs = self.root.join("cgroup.procs");
            for pid in left.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                match add_process(&root_procs, pid) {
                    Err(e) if e.raw_os_error() != Some(libc::ESRCH) => shortfalls.push(Shortfall {
                        path: root_procs.clone(),
                        pid: Some(pid),
                        error: e,
                    }),
                    _ => {}
                }
            }
            // A real cgroup goes with rmdir; a look-alike directory holds plain files.
            if let Err(error) = fs::remove_dir(&path) {
                if fs::remove_dir_all(&path).is_err() {
                    shortfalls.push(Shortfall {
                        path,
                        pid: None,
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_value_is_not_rewritten_and_a_changed_one_is() {
        let dir = std::env::temp_dir().join(format!("mempart-write-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("memory.max");
        fs::write(&path, "1048576\n").unwrap_or_else(|e| panic!("{e}"));
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let file = fs::File::options()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        file.set_modified(old).unwrap_or_else(|e| panic!("{e}"));
        let modified = || {
            fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{e}"))
        };

        write_file(&path, "1048576\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(modified(), old, "the same value left the file untouched");
        write_file(&path, "max\n").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(modified(), old);
        assert_eq!(
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
            "max\n"
        );
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A partition at `rel` with a 64 MiB max and these processes.
    fn node(rel: &str, pids: Vec<u32>) -> Node {
        Node {
            rel: rel.into(),
            min: 0,
            max: 1 << 26,
            pids,
            zone: None,
        }
    }

    #[test]
    fn nodes_become_cgroups_with_limits_and_processes_and_stale_ones_go() {
        let root = std::env::temp_dir().join(format!("mempart-cgroup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
        let mirror = CgroupMirror::new(&root, &root);
        let nodes = vec![
            Node {
                rel: "apps".into(),
                min: 1 << 24,
                max: u64::MAX,
                pids: vec![],
                zone: None,
            },
            Node {
                rel: "apps/web".into(),
                min: 1 << 22,
                max: 1 << 26,
                pids: vec![42],
                zone: None,
            },
            Node {
                rel: "apps/memory.max".into(),
                min: 0,
                max: 1 << 20,
                pids: vec![43],
                zone: None,
            },
            Node {
                rel: "old".into(),
                min: 0,
                max: u64::MAX,
                pids: vec![],
                zone: None,
            },
        ];
        let shortfalls = mirror.apply(&nodes).unwrap_or_else(|e| panic!("{e}"));
        assert!(shortfalls.is_empty(), "{shortfalls:?}");
        let read = |p: &str| fs::read_to_string(root.join("mempart").join(p)).unwrap_or_default();
        assert_eq!(read("apps/memory.min"), "16777216\n");
        assert_eq!(read("apps/memory.max"), "max\n");
        assert_eq!(read("apps/web/memory.max"), "67108864\n");
        assert_eq!(read("apps/web/.own/cgroup.procs"), "42\n");
        assert_eq!(read("apps/web/cgroup.procs"), "", "processes sit in .own");
        assert_eq!(
            read("apps/.own/memory.min"),
            "12582912\n",
            "apps's own processes keep its min less its children's"
        );
        assert_eq!(
            read("apps/memory.max"),
            "max\n",
            "a partition named like a control file does not write over it"
        );
        assert_eq!(read("apps/memory%2Emax/memory.max"), "1048576\n");
        assert_eq!(read("apps/memory%2Emax/.own/cgroup.procs"), "43\n");
        for group in ["", "apps/", "apps/web/"] {
            assert_eq!(read(&format!("{group}cgroup.subtree_control")), "+memory\n");
        }
        assert_eq!(
            read("sys/.own/cgroup.procs"),
            "",
            "sys's processes stay in the root group"
        );
        for (group, current) in [
            ("apps", "50000000"),
            ("apps/.own", "30000000"),
            ("apps/web/.own", "20000000"),
        ] {
            fs::write(
                root.join("mempart").join(group).join("memory.current"),
                current,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            mirror.own_usage(&nodes),
            vec![
                ("apps".to_string(), 30_000_000),
                ("apps/web".to_string(), 20_000_000)
            ],
            "each partition's own processes' use; the others have no figure"
        );
        // A process the engine no longer places there is still in old's group.
        fs::write(root.join("mempart/old/.own/cgroup.procs"), "99\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let shortfalls = mirror.apply(&nodes[..2]).unwrap_or_else(|e| panic!("{e}"));
        assert!(shortfalls.is_empty(), "{shortfalls:?}");
        let back = fs::read_to_string(root.join("cgroup.procs")).unwrap_or_default();
        let mut back: Vec<&str> = back.lines().collect();
        back.sort_unstable();
        assert_eq!(
            back,
            ["43", "99"],
            "the removed groups' processes go back to the root group"
        );
        assert!(!root.join("mempart/sys").exists());
        assert!(!root.join("mempart/old").exists());
        assert!(!root.join("mempart/apps/memory%2Emax").exists());
        assert!(root.join("mempart/apps/web/.own").exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_group_that_refuses_delegation_or_a_process_is_reported_and_the_rest_applied() {
        let root =
            std::env::temp_dir().join(format!("mempart-cgroup-refusing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        // A directory where a control file should be refuses every write to it.
        for refusing in [
            "mempart/apps/cgroup.subtree_control",
            "mempart/apps/db/.own/cgroup.procs",
        ] {
            fs::create_dir_all(root.join(refusing)).unwrap_or_else(|e| panic!("{e}"));
        }
        let nodes = vec![
            node("apps", vec![]),
            node("apps/db", vec![7]),
            node("apps/web", vec![42]),
        ];
        let mirror = CgroupMirror::new(&root, &root);
        let shortfalls = mirror.apply(&nodes).unwrap_or_else(|e| panic!("{e}"));
        let base = root.join("mempart");
        let seen: Vec<(PathBuf, Option<u32>)> =
            shortfalls.iter().map(|s| (s.path.clone(), s.pid)).collect();
        assert_eq!(
            seen,
            vec![
                (base.join("apps/cgroup.subtree_control"), None),
                (base.join("apps/db/.own/cgroup.procs"), Some(7)),
            ],
            "each group's delegation is tried once"
        );
        let text = shortfalls
            .get(1)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(text.starts_with("pid 7 not moved by "), "{text}");
        let read = |p: &str| fs::read_to_string(base.join(p)).unwrap_or_default();
        assert_eq!(
            read("apps/web/.own/cgroup.procs"),
            "42\n",
            "the rest is applied"
        );
        assert_eq!(read("apps/db/memory.max"), "67108864\n");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn group_names_never_hold_a_dot_a_newline_or_a_bare_percent() {
        assert_eq!(group_name("web"), "web");
        assert_eq!(group_name("web.api"), "web%2Eapi");
        assert_eq!(group_name("50%"), "50%25");
        assert_eq!(group_name("a\nb"), "a%0Ab");
        assert_eq!(group_name(".own"), "%2Eown");
        assert_ne!(
            group_name("%2E"),
            group_name("."),
            "escaping keeps names apart"
        );
    }

    #[test]
    fn a_name_too_long_once_escaped_is_cut_and_hashed_within_the_limit() {
        let dots = group_name(&".".repeat(255));
        let fewer = group_name(&".".repeat(254));
        for long in [&dots, &fewer] {
            assert!(long.len() <= GROUP_NAME_MAX, "{}", long.len());
            assert!(long.contains("%%") && !long.contains('.'), "{long}");
        }
        assert_ne!(dots, fewer);
        assert_eq!(group_name(&"a".repeat(255)), "a".repeat(255));
        let wide = group_name(&format!("{}{}", "é".repeat(120), ".".repeat(15)));
        assert!(
            wide.len() <= GROUP_NAME_MAX && wide.starts_with('é'),
            "{wide}"
        );
    }

    #[test]
    fn a_group_that_cannot_be_configured_is_reported_and_only_its_subtree_skipped() {
        let root = std::env::temp_dir().join(format!("mempart-cgroup-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        // A directory where `bad`'s memory.max should be refuses the write; what an
        // earlier sync made below `bad` stays.
        for made in ["mempart/bad/memory.max", "mempart/bad/.own"] {
            fs::create_dir_all(root.join(made)).unwrap_or_else(|e| panic!("{e}"));
        }
        let long = ".".repeat(255);
        let nodes = vec![
            node("bad", vec![]),
            node("bad/kid", vec![7]),
            node("good", vec![42]),
            node(&long, vec![]),
        ];
        let shortfalls = CgroupMirror::new(&root, &root)
            .apply(&nodes)
            .unwrap_or_else(|e| panic!("{e}"));
        let base = root.join("mempart");
        let seen: Vec<(PathBuf, Option<u32>)> =
            shortfalls.iter().map(|s| (s.path.clone(), s.pid)).collect();
        assert_eq!(seen, vec![(base.join("bad/memory.max"), None)]);
        assert!(
            !base.join("bad/kid").exists(),
            "nothing is made below a failed group"
        );
        assert!(base.join("bad/.own").is_dir(), "nor removed");
        assert_eq!(
            fs::read_to_string(base.join("good/.own/cgroup.procs")).unwrap_or_default(),
            "42\n"
        );
        assert!(base.join(group_name(&long)).join(OWN).is_dir());
        let _ = fs::remove_dir_all(&root);
    }

    /// A partition at `rel` with a 32 MiB max, maybe zoned.
    fn zoned_node(rel: &str, zone: Option<u32>, pids: Vec<u32>) -> Node {
        Node {
            rel: rel.into(),
            min: 0,
            max: 32 << 20,
            pids,
            zone,
        }
    }

    #[test]
    fn zoned_partitions_get_their_node_and_the_others_node_0() {
        let root =
            std::env::temp_dir().join(format!("mempart-cgroup-zones-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
        let mirror = CgroupMirror::new(&root, &root);
        let unzoned = [
            zoned_node("web", None, vec![]),
            zoned_node("sys", None, vec![]),
        ];
        assert!(mirror
            .apply(&unzoned)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_default();
        assert_eq!(read("cgroup.subtree_control"), "+memory\n");
        assert!(
            !root.join("mempart/web/cpuset.mems").exists(),
            "without a zone no group is bound to a node"
        );
        let nodes = [
            zoned_node("db", Some(1), vec![42]),
            zoned_node("db/inner", None, vec![43]),
            zoned_node("web", None, vec![]),
            zoned_node("sys", None, vec![]),
        ];
        let shortfalls = mirror.apply(&nodes).unwrap_or_else(|e| panic!("{e}"));
        assert!(shortfalls.is_empty(), "{shortfalls:?}");
        for group in ["", "mempart/"] {
            assert_eq!(
                read(&format!("{group}cgroup.subtree_control")),
                "+memory +cpuset\n",
                "the cpuset controller reaches the top-level groups"
            );
        }
        assert_eq!(read("mempart/db/cgroup.subtree_control"), "+memory\n");
        assert_eq!(read("mempart/db/cpuset.mems"), "1\n");
        assert_eq!(read("mempart/web/cpuset.mems"), "0\n");
        assert!(
            !root.join("mempart/db/inner/cpuset.mems").exists(),
            "nested groups inherit their zone's node"
        );
        assert_eq!(read("mempart/db/inner/memory.max"), "33554432\n");
        assert!(
            !root.join("mempart/sys/cpuset.mems").exists(),
            "sys's processes stay in the root group, which no cpuset binds"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn sys_holds_node_0_less_what_unzoned_partitions_use() {
        let root = std::env::temp_dir().join(format!("mempart-node0-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mirror = CgroupMirror::new(&root, &root.join("node"));
        let nodes = [
            zoned_node("db", Some(1), vec![]),
            zoned_node("db/inner", None, vec![]),
            zoned_node("web", None, vec![]),
        ];
        let own = [
            ("db".to_string(), 8 << 20),
            ("db/inner".to_string(), 4 << 20),
            ("web".to_string(), 16 << 20),
        ];
        assert_eq!(mirror.sys_usage(&nodes, &own), None, "no node figures");
        fs::create_dir_all(root.join("node/node0")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(
            root.join("node/node0/meminfo"),
            "Node 0 MemTotal:  262144 kB\nNode 0 MemFree:  163840 kB\nNode 0 MemUsed:   98304 kB\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            mirror.sys_usage(&nodes, &own),
            Some((96 << 20) - (16 << 20)),
            "web lives on node 0; db and what is nested in it do not"
        );
        let _ = fs::remove_dir_all(&root);
    }
}
