//! The plug-in boundary, proved from outside the engine: a toy format module, written
//! here against `tessera_engine::format` alone, is registered with an engine and is then
//! probed and shown by discovery (with what lies on its volume, an ext4 made by the real
//! mkfs.ext4), refused over by `pv create` without --force, and served by the daemon over
//! NBD, where the real nbdcopy reads and writes it at the offsets its header gives.
//!
//! The toy format: sector 0 holds "TSRTOY01", a name (length byte at 8, bytes from 9),
//! the volume's first sector (u64 LE at 48) and its length in sectors (u64 LE at 56).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tessera_block::{BlockError, SharedDevice};
use tessera_daemon::Daemon;
use tessera_engine::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};
use tessera_engine::Engine;
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

const MAGIC: &[u8; 8] = b"TSRTOY01";

struct Header {
    name: String,
    start_sectors: u64,
    sectors: u64,
}

fn read_header(device: &SharedDevice) -> Option<Result<Header, String>> {
    let mut sector = [0u8; 512];
    device.read_at(&mut sector, 0).ok()?;
    if &sector[..8] != MAGIC {
        return None;
    }
    let len = sector[8] as usize;
    let name = match std::str::from_utf8(&sector[9..9 + len.min(32)]) {
        Ok(n) if !n.is_empty() && len <= 32 => n.to_string(),
        _ => {
            return Some(Err(
                "the toy header's name is not 1 to 32 bytes of UTF-8".into()
            ))
        }
    };
    let u64_at = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap());
    let (start_sectors, sectors) = (u64_at(48), u64_at(56));
    let end = start_sectors.checked_add(sectors).map(|e| e * 512);
    if sectors == 0 || end.is_none_or(|e| e > device.size_bytes()) {
        return Some(Err(format!(
            "volume {name} lies past the end of the device"
        )));
    }
    Some(Ok(Header {
        name,
        start_sectors,
        sectors,
    }))
}

struct ToyFormat;

impl FormatModule for ToyFormat {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match read_header(device)? {
            Ok(h) => {
                let mut f = Finding::new(
                    "tessera_toy",
                    format!("toy volume {}, {} sectors", h.name, h.sectors),
                );
                f.detail = serde_json::json!({ "name": h.name, "start_sector": h.start_sectors });
                Some((f, Vec::new()))
            }
            Err(why) => Finding::damaged(
                "tessera_toy",
                "a damaged toy header",
                format!("{name}: {why}"),
            ),
        }
    }
    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        members
            .into_iter()
            .filter_map(|m| {
                let h = read_header(&m.device)?.ok()?;
                let node = Node {
                    kind: "toy",
                    name: format!("toy/{}", h.name),
                    size_bytes: h.sectors * 512,
                    format: None,
                    summary: format!("toy set {}", h.name),
                    state: Some("ready".into()),
                    detail: serde_json::json!({ "member": m.name }),
                    problems: Vec::new(),
                    children: Vec::new(),
                };
                let places = vec![Place {
                    name: m.name.clone(),
                    state: Some("active".into()),
                    ..Place::default()
                }];
                let volumes: Vec<Box<dyn Volume>> = vec![Box::new(ToyVolume {
                    member: m.name,
                    device: m.device,
                    header: h,
                })];
                Some(Assembly {
                    node,
                    places,
                    volumes,
                })
            })
            .collect()
    }
}

struct ToyVolume {
    member: String,
    device: SharedDevice,
    header: Header,
}

impl Volume for ToyVolume {
    fn module(&self) -> &'static str {
        "toy"
    }
    fn name(&self) -> String {
        format!("toy/{}", self.header.name)
    }
    fn dm_name(&self) -> String {
        format!("toy-{}", self.header.name)
    }
    fn shown(&self) -> Shown {
        Shown::AsSet
    }
    fn devices(&self) -> Vec<String> {
        vec![self.member.clone()]
    }
    fn activate(
        &self,
        registry: Arc<TargetRegistry>,
        _writable: bool,
    ) -> Result<Activated, String> {
        // One linear row, as dm-linear maps it: the member named by a placeholder the
        // resolver below turns into the member's device.
        let table = Table::parse(&format!(
            "0 {} linear member {}",
            self.header.sectors, self.header.start_sectors
        ))
        .map_err(|e| e.to_string())?;
        let device = MappedDevice::new(self.dm_name(), registry);
        let resolve = |arg: &str| -> Result<SharedDevice, BlockError> {
            assert_eq!(arg, "member");
            Ok(self.device.clone())
        };
        device.load(&table, &resolve).map_err(|e| e.to_string())?;
        device.resume().map_err(|e| e.to_string())?;
        Ok(Activated {
            device,
            notes: Vec::new(),
        })
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 64 MiB image whose toy volume `demo` (32 MiB from 1 MiB) holds an ext4 filesystem.
fn toy_image(dir: &Path) -> String {
    let fs = dir.join("fs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "toyfs"])
        .arg(&fs));
    let img = dir.join("toy.img");
    let mut bytes = vec![0u8; 64 << 20];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8] = 4;
    bytes[9..13].copy_from_slice(b"demo");
    bytes[48..56].copy_from_slice(&2048u64.to_le_bytes());
    bytes[56..64].copy_from_slice(&(65536u64).to_le_bytes());
    bytes[1 << 20..(1 << 20) + (32 << 20)].copy_from_slice(&std::fs::read(&fs).unwrap());
    std::fs::write(&img, bytes).unwrap();
    img.to_string_lossy().into_owned()
}

fn engine(dir: &Path, img: &str) -> Engine {
    let mut engine = Engine::new(dir.join("state"), vec![img.to_string()]);
    engine.register_format(Arc::new(ToyFormat));
    engine
}

#[test]
fn a_toy_format_from_outside_the_engine_is_probed_shown_and_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = toy_image(dir.path());

    // Without the module the bytes are data no format claims; with it, the toy format.
    let plain = Engine::new(dir.path().join("state"), vec![img.clone()]);
    let before = plain.discover().unwrap();
    assert_eq!(before.devices[0].format.as_deref(), Some("unknown"));

    // Probed and shown: the image > its toy set > the ext4 on the set's volume.
    let report = engine(dir.path(), &img).discover().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let disk = &report.devices[0];
    assert_eq!(disk.name, img);
    assert_eq!(disk.format.as_deref(), Some("tessera_toy"));
    assert_eq!(disk.state.as_deref(), Some("active"));
    assert!(
        disk.summary.contains("toy volume demo, 65536 sectors"),
        "{disk:?}"
    );
    assert_eq!(disk.children.len(), 1, "{disk:#?}");
    let set = &disk.children[0];
    assert_eq!(set.kind, "toy");
    assert_eq!(set.name, "toy/demo");
    assert_eq!(set.size_bytes, 32 << 20);
    assert_eq!(set.format.as_deref(), Some("ext4"), "{set:#?}");
    assert!(set.summary.contains("label 'toyfs'"), "{set:#?}");
    assert_eq!(set.detail["content"]["offset"], 1080, "{set:#?}");

    // The engine's own checks see the format too: pv create refuses to overwrite it.
    let err = engine(dir.path(), &img)
        .pv_create(std::slice::from_ref(&img), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&img) && err.contains("toy") && err.contains("--force"),
        "{err}"
    );

    // Served: the daemon exports the volume under its name; nbdcopy reads the ext4 the
    // image holds at 1 MiB, and what it writes lands there.
    let (daemon, warnings) = Daemon::start(engine(dir.path(), &img), false, false).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(daemon.exports().names(), vec!["toy/demo".to_string()]);
    let socket = dir.path().join("nbd.sock");
    let server = tessera_export::Server::bind_unix(daemon.exports().clone(), &socket).unwrap();
    let uri = format!("nbd+unix:///toy/demo?socket={}", socket.display());
    let size = run(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(size.trim(), (32u64 << 20).to_string());
    let copy = dir.path().join("copy.img");
    run(Command::new("nbdcopy").arg(&uri).arg(&copy));
    let image = std::fs::read(&img).unwrap();
    assert!(std::fs::read(&copy).unwrap() == image[1 << 20..(1 << 20) + (32 << 20)]);
    run(Command::new("fsck.ext4").arg("-n").arg(&copy));
    let pattern = dir.path().join("pattern.img");
    let bytes: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&pattern, &bytes).unwrap();
    run(Command::new("nbdcopy").arg(&pattern).arg(&uri));
    server.shutdown();
    daemon.shutdown();
    let image = std::fs::read(&img).unwrap();
    assert!(image[1 << 20..(1 << 20) + (32 << 20)] == bytes[..]);
    assert_eq!(
        &image[..8],
        MAGIC,
        "the header is outside the volume and untouched"
    );
    assert!(image[(1 << 20) + (32 << 20)..].iter().all(|&b| b == 0));
}
