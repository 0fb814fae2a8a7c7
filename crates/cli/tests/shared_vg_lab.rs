//! Shared VGs in the kernel lab, tessera beside lvm2's lvmlockd with sanlock (Debian's
//! lvm2-lockd and sanlock, run from the host's /usr), two sanlock daemons standing for two
//! hosts over the same loop devices:
//! (a) a VG tessera made with `vg create --shared` (on the host, with its own sanlock
//!     daemon) is read by lvm2's `vgs`/`lvs` (lock type, lock args, the hidden lvmlock LV,
//!     the LV's lease offset); lvmlockd starts its lockspace (`vgchange --lockstart`) and
//!     activates the LV, and while it does, tessera as host 2 is refused serving it with an
//!     error naming lvm2's host; after `lvchange -an` and `--lockstop`, tessera extends it
//!     and lvm2 sees the new size.
//! Not covered yet: a VG made by lvm2's own `vgcreate --shared`, which did not finish in
//! the lab (it stopped after creating its lvmlock LV, until the lab's timeout).

mod common;

use common::lab_line as line;

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf /tmp/sl /tmp/sl2 /run/lvm
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 use_lvmlockd = 1 }
C
echo 'local { host_id = 1 }' > /tmp/lvmconf/lvmlocal.conf
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
json() { tr -d ' \n'; echo; }
t0=$(losetup -f --show t0.img)
# No udev here: make the /dev/mapper nodes lvmlockd and sanlock open.
(while :; do dmsetup mknodes 2>/dev/null; sleep 0.2; done) &
# Host 1: lvm2 with lvmlockd and its sanlock daemon; host 2: tessera with its own.
SANLOCK_RUN_DIR=/tmp/sl SANLOCK_PRIVILEGED=0 sanlock daemon -w 0 -U root -G root -e labhost1 &
SANLOCK_RUN_DIR=/tmp/sl2 SANLOCK_PRIVILEGED=0 sanlock daemon -w 0 -U root -G root -e labhost2 &
sleep 1
SANLOCK_RUN_DIR=/tmp/sl lvmlockd -g sanlock &
sleep 1
T2() { SANLOCK_RUN_DIR=/tmp/sl2 @TESSERA@ --state-dir /tmp/st2 --host-id 2 "$@"; }
lockstart() { # lvmlockd opens /dev/mapper/VG-lvmlock right after activating it
  for i in 1 2 3 4 5; do vgchange --lockstart "$1" >/dev/null 2>&1 && return 0; sleep 1; done; return 1; }
echo "vgs $(vgs --reportformat json -o vg_name,vg_lock_type,vg_lock_args tvg 2>/dev/null | json)"
echo "lvs $(lvs -a --reportformat json -o lv_name,lv_attr,lv_size,lock_args tvg 2>/dev/null | json)"
s=$(date +%s); lockstart tvg; echo "lockstart rc=$? $(( $(date +%s) - s ))s"
lvchange -ay tvg/tlv; echo "activate rc=$?"
echo "held1 $(SANLOCK_RUN_DIR=/tmp/sl sanlock client status | grep '^r ' | tr '\n' '|')"
s=$(date +%s); T2 --devices "$t0" serve --listen 127.0.0.1:0 > /tmp/serve.out 2> /tmp/serve.err; echo "t2serve rc=$? $(( $(date +%s) - s ))s $(tr '\n' '|' < /tmp/serve.err)"
echo "t2status $(T2 --devices "$t0" lock status --json | json)"
lvchange -an tvg/tlv; echo "deactivate rc=$?"
vgchange --lockstop tvg; echo "lockstop rc=$?"
T2 --devices "$t0" lv extend tvg/tlv -L +4M; echo "t2extend rc=$?"
echo "lvs2 $(lvs -a --reportformat json -o lv_name,lv_size,lock_args --units b --nosuffix tvg 2>/dev/null | json)"
T2 --devices "$t0" lock stop tvg
echo done
"#;

/// A sanlock daemon on this host, stopped when dropped.
struct Sanlock(std::process::Child);
impl Drop for Sanlock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lvmlockd_and_tessera_share_vgs_through_sanlock() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::File::create(d.join("t0.img"))
        .and_then(|f| f.set_len(300 << 20))
        .unwrap();
    // tessera makes the shared VG on the host, through a sanlock daemon of its own.
    let run_dir = d.join("sanlock");
    std::fs::create_dir_all(&run_dir).unwrap();
    let _daemon = Sanlock(
        std::process::Command::new("sanlock")
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root", "-e", "host1",
            ])
            .env("SANLOCK_RUN_DIR", &run_dir)
            .env("SANLOCK_PRIVILEGED", "0")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sanlock is installed"),
    );
    while !run_dir.join("sanlock.sock").exists() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let t0 = d.join("t0.img").display().to_string();
    let state = d.join("state");
    let t = |args: &[&str]| {
        common::run_ok(
            std::process::Command::new(common::tessera_path())
                .args(["--devices", &t0, "--state-dir"])
                .arg(&state)
                .args(["--host-id", "1"])
                .env("SANLOCK_RUN_DIR", &run_dir)
                .args(args),
        )
    };
    t(&["vg", "create", "--shared", "tvg", &t0]);
    t(&["lv", "create", "tvg/tlv", "-L", "8M"]);
    t(&["lock", "stop", "tvg"]);

    let started = std::time::Instant::now();
    // A copy in the lab's working directory: the VM sees the host's files, but not its /tmp,
    // where a checkout (and its target directory) may live.
    let tessera = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera).unwrap();
    let out = common::lab_script(
        d,
        &INSIDE.replace("@TESSERA@", &tessera.display().to_string()),
        500,
    );
    eprintln!("lab: {:?}", started.elapsed());
    assert!(out.contains("\ndone"), "{out}");
    // (a) lvm2 reads tessera's VG.
    let vgs = line(&out, "vgs ");
    assert!(vgs.contains(r#""vg_lock_type":"sanlock""#), "{vgs}");
    assert!(vgs.contains(r#""vg_lock_args":"1.0.0:lvmlock""#), "{vgs}");
    let lvs = line(&out, "lvs ");
    assert!(lvs.contains(r#""lv_name":"[lvmlock]""#), "{lvs}");
    assert!(lvs.contains(r#""lv_size":"256.00m""#), "{lvs}");
    assert!(lvs.contains(r#""lv_lockargs":"1.0.0:70254592""#), "{lvs}");
    // lvmlockd starts tessera's lockspace and activates the LV under its lease.
    assert!(line(&out, "lockstart ").starts_with("rc=0"), "{out}");
    assert_eq!(line(&out, "activate "), "rc=0", "{out}");
    let held = line(&out, "held1 ");
    assert!(
        held.contains("r lvm_tvg:") && held.contains(":70254592"),
        "{held}"
    );
    // tessera on host 2 is refused, naming lvm2's host.
    let serve = line(&out, "t2serve ");
    assert!(serve.starts_with("rc=1"), "{serve}");
    assert!(
        serve.contains("LV 'tvg/tlv' is held by host 1 ('labhost1') exclusively"),
        "{serve}"
    );
    let status = line(&out, "t2status ");
    assert!(
        status.contains(r#""holders":[1],"lock":"tlv","mode":"ex""#),
        "{status}"
    );
    // Once lvm2 let go, tessera changes it and lvm2 sees the change.
    assert_eq!(line(&out, "t2extend "), "rc=0", "{out}");
    let lvs2 = line(&out, "lvs2 ");
    assert!(
        lvs2.contains(r#""lv_name":"tlv","lv_size":"12582912","lv_lockargs":"1.0.0:70254592""#),
        "{lvs2}"
    );
}
