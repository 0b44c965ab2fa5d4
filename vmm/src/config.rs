//! What a VM is made of, parsed and checked before anything is created.

use std::io::Write;
use std::path::PathBuf;

/// Pages are 4 KiB, the guest's and the host's: class sizes are whole pages.
pub const PAGE: u64 = 4096;

/// How a class is backed, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassBacking {
    /// The class name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Back it with huge pages (memfd with `MFD_HUGETLB`).
    pub hugepages: bool,
    /// Back it with this file instead of a memfd.
    pub file: Option<PathBuf>,
    /// Populate every page at start-up.
    pub prefault: bool,
}

use mempart::topology::parse_size;

/// Zones are sized in the guest's memory blocks: Linux adds hot-plugged memory 128 MiB at
/// a time, so a region that is not a whole number of them loses its tail.
pub const ZONE_GRANULE: u64 = 128 << 20;

/// A zone as given on the command line: a guest NUMA node backed by a virtio-mem device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    /// The zone name.
    pub name: String,
    /// Bytes of its region: the most it can be plugged to.
    pub size: u64,
    /// Bytes asked of the guest at boot.
    pub requested: u64,
    /// Back it with huge pages.
    pub hugepages: bool,
}

/// A disk as given on the command line: a raw image file behind a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Refuse the guest's writes (the file is opened read-only).
    pub read_only: bool,
    /// The disk's name: what the guest reads as its serial, and the label of its counters.
    pub id: String,
}

/// Parses `PATH[,ro][,id=NAME]`; `index` (the disk's place among `--disk` arguments)
/// names it `diskN` when no id is given.
pub fn parse_disk(arg: &str, index: usize) -> Result<DiskSpec, ConfigError> {
    let err = |reason: String| ConfigError::Disk {
        arg: arg.to_string(),
        reason,
    };
    let mut parts = arg.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(err("expected PATH[,ro][,id=NAME]".into()));
    }
    let mut disk = DiskSpec {
        path: PathBuf::from(path),
        read_only: false,
        id: format!("disk{index}"),
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => disk.read_only = true,
            Some(("id", id)) => {
                let fits = !id.is_empty()
                    && id.len() <= devices::virtio::block::ID_BYTES
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !fits {
                    return Err(err(format!(
                        "id {id:?}: use 1 to {} letters, digits, '-', '_' or '.'",
                        devices::virtio::block::ID_BYTES
                    )));
                }
                disk.id = id.to_string();
            }
            _ => {
                return Err(err(format!(
                    "unknown option {option:?} (use ro or id=NAME)"
                )))
            }
        }
    }
    Ok(disk)
}

/// A network device as given on the command line: virtio-net on an existing tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap's interface name.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// Parses `tap=NAME[,mac=MAC]`; `index` (the device's place among `--net` arguments)
/// gives the default MAC, 06:00:00:00:00:0N+1 (locally administered).
pub fn parse_net(arg: &str, index: usize) -> Result<NetSpec, ConfigError> {
    let err = |reason: String| ConfigError::Net {
        arg: arg.to_string(),
        reason,
    };
    let mut tap = None;
    let mut mac = [0x06, 0, 0, 0, 0, (index as u8).wrapping_add(1)];
    for option in arg.split(',') {
        match option.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
            Some(("mac", text)) => mac = parse_mac(text).map_err(err)?,
            _ => {
                return Err(err(format!(
                    "unknown option {option:?} (use tap=NAME and mac=MAC)"
                )))
            }
        }
    }
    let tap = tap.ok_or_else(|| err("expected tap=NAME[,mac=MAC]".into()))?;
    Ok(NetSpec { tap, mac })
}

/// Parses `aa:bb:cc:dd:ee:ff` as a unicast MAC address.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac {text:?}: expected six hex bytes like 06:00:00:00:00:01");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac {text}: a multicast address cannot be a device's"
        ));
    }
    Ok(mac)
}

/// Splits `NAME=SIZE[,OPTION...]` into a checked name, the size and the options.
fn name_size_options(arg: &str) -> Result<(&str, u64, std::str::Split<'_, char>), String> {
    let mut parts = arg.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, size) = first
        .split_once('=')
        .ok_or_else(|| "expected NAME=SIZE".to_string())?;
    mempart::check_name(name).map_err(|e| e.to_string())?;
    Ok((name, parse_size(size)?, parts))
}

/// Parses `NAME=SIZE[,plugged=SIZE][,hugepages]`.
pub fn parse_zone(arg: &str) -> Result<ZoneSpec, ConfigError> {
    let err = |reason: String| ConfigError::Zone {
        arg: arg.to_string(),
        reason,
    };
    let (name, size, parts) = name_size_options(arg).map_err(err)?;
    if size == 0 || size % ZONE_GRANULE != 0 || size == mempart::UNLIMITED {
        return Err(err(format!(
            "size {size} is not a positive multiple of 128 MiB (the guest hot-plugs memory \
             in 128 MiB blocks)"
        )));
    }
    let mut zone = ZoneSpec {
        name: name.to_string(),
        size,
        requested: 0,
        hugepages: false,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "hugepages" => zone.hugepages = true,
            Some(("plugged", value)) => {
                zone.requested = parse_size(value).map_err(err)?;
                if zone.requested > size {
                    return Err(err(format!(
                        "plugged={value} is more than the zone's {size} bytes"
                    )));
                }
            }
            _ => {
                return Err(err(format!(
                    "unknown option {option:?} (use plugged=SIZE or hugepages)"
                )))
            }
        }
    }
    Ok(zone)
}

/// Where the guest's serial console goes.
pub enum SerialOut {
    /// The VMM's standard output.
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
    /// Handed to a writer (tests capture the console this way).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialOut::Stdio => f.write_str("stdio"),
            SerialOut::File(p) => write!(f, "file:{}", p.display()),
            SerialOut::None => f.write_str("none"),
            SerialOut::Writer(_) => f.write_str("writer"),
        }
    }
}

/// Errors in what the user asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A `--class` argument that does not parse.
    #[error("--class {arg:?}: {reason}")]
    Class {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--zone` argument that does not parse.
    #[error("--zone {arg:?}: {reason}")]
    Zone {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--disk` argument that does not parse.
    #[error("--disk {arg:?}: {reason}")]
    Disk {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--net` argument that does not parse.
    #[error("--net {arg:?}: {reason}")]
    Net {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// Two network devices on one tap.
    #[error("--net tap={0:?} is given twice")]
    DuplicateTap(String),
    /// Two disks with one id.
    #[error("--disk id {0:?} is given twice")]
    DuplicateDisk(String),
    /// Two zones with one name.
    #[error("--zone {0:?} is given twice")]
    DuplicateZone(String),
    /// Two classes with one name.
    #[error("--class {0:?} is given twice")]
    DuplicateClass(String),
    /// A `--serial` argument that does not parse.
    #[error("--serial {0:?}: use stdio, none or file:PATH")]
    Serial(String),
    /// A vCPU count out of range.
    #[error("--cpus {given}: must be between 1 and {max}")]
    Cpus {
        /// The count given.
        given: u32,
        /// The most this host allows.
        max: u32,
    },
}

/// Parses `NAME=SIZE[,hugepages][,file=PATH][,prefault]`.
pub fn parse_class(arg: &str) -> Result<ClassBacking, ConfigError> {
    let err = |reason: String| ConfigError::Class {
        arg: arg.to_string(),
        reason,
    };
    let (name, size, parts) = name_size_options(arg).map_err(err)?;
    if size == 0 || size % PAGE != 0 || size == mempart::UNLIMITED {
        return Err(err(format!(
            "size {size} is not a positive multiple of 4 KiB"
        )));
    }
    let mut class = ClassBacking {
        name: name.to_string(),
        size,
        hugepages: false,
        file: None,
        prefault: false,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "hugepages" => class.hugepages = true,
            None if option == "prefault" => class.prefault = true,
            Some(("file", path)) if !path.is_empty() => class.file = Some(PathBuf::from(path)),
            _ => {
                return Err(err(format!(
                    "unknown option {option:?} (use hugepages, prefault or file=PATH)"
                )))
            }
        }
    }
    if class.hugepages && class.file.is_some() {
        return Err(err("hugepages and file= exclude each other".to_string()));
    }
    Ok(class)
}

/// Parses `stdio`, `none` or `file:PATH`.
pub fn parse_serial(arg: &str) -> Result<SerialOut, ConfigError> {
    match arg {
        "stdio" => Ok(SerialOut::Stdio),
        "none" => Ok(SerialOut::None),
        _ => match arg.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOut::File(PathBuf::from(path))),
            _ => Err(ConfigError::Serial(arg.to_string())),
        },
    }
}

/// The classes a VM gets: those given, with sysram (256 MiB unless given) first.
pub fn with_sysram(classes: Vec<ClassBacking>) -> Result<Vec<ClassBacking>, ConfigError> {
    let mut out: Vec<ClassBacking> = Vec::with_capacity(classes.len() + 1);
    for class in classes {
        if out.iter().any(|c| c.name == class.name) {
            return Err(ConfigError::DuplicateClass(class.name));
        }
        out.push(class);
    }
    if !out.iter().any(|c| c.name == mempart::SYSRAM) {
        out.push(ClassBacking {
            name: mempart::SYSRAM.to_string(),
            size: 256 << 20,
            hugepages: false,
            file: None,
            prefault: false,
        });
    }
    out.sort_by_key(|c| c.name != mempart::SYSRAM);
    Ok(out)
}

/// Who speaks on the agent channel's VMM end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEnd {
    /// The partition service (what `mempart-vmm run` does).
    Service,
    /// Nobody: the program embedding the VM reads and writes the raw byte stream
    /// through `VmHandle::agent`.
    Raw,
}

/// Everything `run` needs.
#[derive(Debug)]
pub struct VmConfig {
    /// ELF vmlinux, bare ELF guest or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory classes, sysram first.
    pub classes: Vec<ClassBacking>,
    /// Zones: guest NUMA nodes of hot-pluggable memory.
    pub zones: Vec<ZoneSpec>,
    /// Disks, in the order the guest finds them (the first is `/dev/vda`).
    pub disks: Vec<DiskSpec>,
    /// Network devices, in the order the guest finds them (the first is `eth0`).
    pub nets: Vec<NetSpec>,
    /// Start-up topology file.
    pub topology: Option<PathBuf>,
    /// Serial console destination.
    pub serial: SerialOut,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// Who serves the agent channel.
    pub agent_end: AgentEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_disk("/images/root.ext4,ro,id=root", 0),
            Ok(DiskSpec {
                path: PathBuf::from("/images/root.ext4"),
                read_only: true,
                id: "root".into(),
            })
        );
        assert_eq!(
            parse_disk("data.img", 3).map(|d| (d.read_only, d.id)),
            Ok((false, "disk3".into()))
        );
        for (arg, says) in [
            ("", "expected PATH"),
            (",ro", "expected PATH"),
            ("a.img,rw", "unknown option \"rw\""),
            ("a.img,id=", "use 1 to 20"),
            ("a.img,id=twenty-one-bytes-long", "use 1 to 20"),
            ("a.img,id=a\"b", "use 1 to 20"),
        ] {
            let err = parse_disk(arg, 0).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(says), "{arg}: {err}");
        }
    }

    #[test]
    fn net_arguments_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_net("tap=mp0,mac=52:54:00:12:34:56", 0),
            Ok(NetSpec {
                tap: "mp0".into(),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            })
        );
        assert_eq!(
            parse_net("tap=mp1", 1).map(|n| n.mac),
            Ok([6, 0, 0, 0, 0, 2])
        );
        for (arg, says) in [
            ("", "unknown option"),
            ("mac=06:00:00:00:00:01", "expected tap=NAME"),
            ("tap=", "unknown option"),
            ("tap=a,mac=06:00:00:00:00", "six hex bytes"),
            ("tap=a,mac=06:00:00:00:00:01:02", "six hex bytes"),
            ("tap=a,mac=0g:00:00:00:00:01", "six hex bytes"),
            ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
        ] {
            let err = parse_net(arg, 0).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(says), "{arg}: {err}");
        }
    }

    #[test]
    fn zone_arguments_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_zone("db=256M,plugged=64M,hugepages"),
            Ok(ZoneSpec {
                name: "db".into(),
                size: 256 << 20,
                requested: 64 << 20,
                hugepages: true
            })
        );
        assert_eq!(parse_zone("db=128M").map(|z| z.requested), Ok(0));
        for (arg, says) in [
            ("db", "NAME=SIZE"),
            ("db=100M", "multiple of 128 MiB"),
            ("db=128M,plugged=256M", "more than"),
            ("db=128M,plugged=x", "x"),
            ("db=128M,fast", "unknown option"),
            ("a/b=128M", "a/b"),
        ] {
            let e = parse_zone(arg).unwrap_err().to_string();
            assert!(e.contains(says), "{arg}: {e}");
        }
    }

    #[test]
    fn class_arguments_parse_with_options() {
        let c = parse_class("fast=64M,prefault,file=/tmp/x");
        assert_eq!(
            c.map(|c| (c.name, c.size, c.prefault, c.file)),
            Ok((
                "fast".to_string(),
                64 << 20,
                true,
                Some(PathBuf::from("/tmp/x"))
            ))
        );
        assert!(parse_class("fast=64M,hugepages").is_ok_and(|c| c.hugepages));
    }

    #[test]
    fn bad_class_arguments_name_the_argument() {
        for bad in [
            "fast",
            "fast=0",
            "fast=4097",
            "fast=12Q",
            "fast=1M,turbo",
            "a/b=1M",
            "=1M",
            "fast=unlimited",
            "fast=1M,hugepages,file=/x",
        ] {
            let e = parse_class(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(&format!("--class {bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicates_are_refused_and_sysram_comes_first() {
        let a = parse_class("fast=1M").ok();
        let b = parse_class("fast=2M").ok();
        let both: Vec<_> = a.into_iter().chain(b).collect();
        assert_eq!(
            with_sysram(both).err(),
            Some(ConfigError::DuplicateClass("fast".into()))
        );
        let classes = with_sysram(parse_class("fast=1M").into_iter().collect());
        assert_eq!(
            classes.map(|v| v.into_iter().map(|c| c.name).collect::<Vec<_>>()),
            Ok(vec!["sysram".to_string(), "fast".to_string()])
        );
    }

    #[test]
    fn serial_destinations_parse() {
        assert!(matches!(parse_serial("none"), Ok(SerialOut::None)));
        assert!(matches!(
            parse_serial("file:/tmp/s"),
            Ok(SerialOut::File(_))
        ));
        assert_eq!(
            parse_serial("tcp:1").err(),
            Some(ConfigError::Serial("tcp:1".into()))
        );
    }
}
