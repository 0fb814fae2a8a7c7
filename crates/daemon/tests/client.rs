//! A daemon over image files with a VG made by tessera's engine, driven through its control
//! socket with the typed client as `tessera` and other front ends drive it: the version
//! handshake, dmsetup's verbs on a device of its own, an LV change that the served LV
//! follows online, and the refusals a user sees.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tessera_daemon::{envelope, Client, Daemon, DaemonError, LvChange, Request, VERSION};
use tessera_engine::units::parse_size;
use tessera_engine::{Engine, LvCreateOptions};

fn images(dir: &Path, count: usize, mib: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("d{i}.img"));
            std::fs::File::create(&path)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect()
}

fn size(text: &str) -> LvCreateOptions {
    LvCreateOptions {
        size: parse_size(text).unwrap(),
        stripes: None,
        stripe_size_bytes: None,
        pvs: Vec::new(),
        segtype: None,
        mirrors: None,
        region_size_bytes: None,
    }
}

/// The `(name, size_sectors, state)` of every device `dm ls` lists.
fn devices(client: &mut Client) -> Vec<(String, u64, String)> {
    let reply = client.dm_ls().unwrap();
    reply
        .data
        .as_array()
        .expect("dm ls data is a list")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["size_sectors"].as_u64().unwrap(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn refused(result: tessera_daemon::Result<tessera_daemon::Reply>) -> String {
    match result {
        Err(DaemonError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_daemon_over_image_files_answers_its_typed_client() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disks = images(dir.path(), 2, 16);
    let engine = Engine::new(
        dir.path().join("state"),
        vec![format!("{}/*.img", dir.path().display())],
    );
    engine.vg_create("vg0", &disks, None, false).unwrap();
    engine.lv_create("vg0", "data", &size("8M")).unwrap();

    let (daemon, warnings) = Daemon::start(engine, false, false).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(daemon.exports().names(), vec!["vg0/data".to_string()]);
    let daemon = Arc::new(daemon);
    let path = dir.path().join("run").join("control.sock");
    let socket = daemon.listen(&path).unwrap();
    assert_eq!(socket.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only the owner may change volumes");
    // One daemon per socket.
    match daemon.listen(&path) {
        Err(e @ DaemonError::SocketInUse { .. }) => {
            assert!(e.to_string().contains("another tessera daemon"), "{e}")
        }
        other => panic!("a second listener on {}: {:?}", path.display(), other.err()),
    }

    let mut client = Client::connect(&path).unwrap().expect("the daemon listens");
    assert_eq!(client.path(), path);
    let version = client.version().unwrap();
    assert!(version.ok);
    assert_eq!(version.version, VERSION);
    assert_eq!(version.data["protocol"], json!(VERSION));
    assert_eq!(version.data["tessera"], json!(env!("CARGO_PKG_VERSION")));
    assert!(
        version.output.ends_with("control protocol 1.4.0\n"),
        "{}",
        version.output
    );

    // The served LV is a mapped device named as lvm2 names it: 8 MiB.
    assert_eq!(
        devices(&mut client),
        vec![("vg0-data".to_string(), 16384, "live".to_string())]
    );
    assert!(client.serves("vg0").unwrap());
    assert!(!client.serves("vg1").unwrap());

    // A device of its own, with dmsetup's verbs.
    let created = client.dm_create("zeros", "0 2048 zero").unwrap();
    assert_eq!(created.data, json!({"name": "zeros", "size_sectors": 2048}));
    assert_eq!(
        created.output,
        "Created zeros (2048 sectors), exported as zeros\n"
    );
    assert!(daemon.exports().get("zeros").is_some());
    assert_eq!(
        devices(&mut client),
        vec![
            ("vg0-data".to_string(), 16384, "live".to_string()),
            ("zeros".to_string(), 2048, "live".to_string()),
        ]
    );
    assert_eq!(
        client.dm_status("zeros").unwrap().output.trim(),
        "0 2048 zero"
    );
    assert_eq!(
        client.dm_table("zeros", false).unwrap().data,
        json!("0 2048 zero\n")
    );
    assert!(client.dm_suspend("zeros").unwrap().ok);
    assert_eq!(devices(&mut client)[1].2, "suspended");
    client.dm_load("zeros", "0 4096 zero").unwrap();
    assert_eq!(
        client.dm_table("zeros", true).unwrap().output,
        "0 4096 zero\n"
    );
    let resumed = client.dm_resume("zeros").unwrap();
    assert_eq!(resumed.data, json!({"size_sectors": 4096}));
    assert_eq!(
        devices(&mut client)[1],
        ("zeros".into(), 4096, "live".into())
    );

    // A device over the served LV holds it.
    client
        .dm_create("window", "0 1024 linear vg0-data 2048")
        .unwrap();
    let why = refused(client.dm_remove("vg0-data"));
    assert_eq!(why, "vg0-data is in use by the table of window");
    assert!(client.dm_remove("window").unwrap().ok);

    // The daemon's refusals, word for word as `tessera` prints them.
    assert_eq!(
        refused(client.dm_remove("ghost")),
        "no mapped device 'ghost' (tessera dm ls lists them)"
    );
    assert_eq!(
        refused(client.dm_create("zeros", "0 8 zero")),
        "a device or export named 'zeros' exists already"
    );
    assert!(refused(client.dm_create("a/b", "0 8 zero")).contains("without '/'"));
    let why = refused(client.dm_create("odd", "0 8 nosuchtarget"));
    assert!(why.contains("nosuchtarget"), "{why}");
    let why = refused(client.dm_message("zeros", 0, &["hello"]));
    assert!(why.starts_with("zeros: "), "{why}");

    // An LV change goes through the daemon and the served device follows it online.
    let extend = LvChange::Extend {
        vg: "vg0".into(),
        lv: "data".into(),
        options: size("+4M"),
    };
    let done = client.lv_change(&extend).unwrap();
    assert!(
        done.output
            .contains("Logical volume vg0/data successfully resized to 3 extents."),
        "{}",
        done.output
    );
    assert!(
        done.output
            .contains("served device reloaded online, now 24576 sectors"),
        "{}",
        done.output
    );
    assert_eq!(
        devices(&mut client)[0],
        ("vg0-data".into(), 24576, "live".into())
    );
    let elsewhere = LvChange::Remove {
        vg: "vg1".into(),
        lv: "data".into(),
    };
    match client.lv_change(&elsewhere) {
        Err(DaemonError::NotServed(why)) => {
            assert_eq!(why, "this daemon does not serve VG 'vg1'")
        }
        other => panic!("{other:?}"),
    }

    assert!(client.dm_remove("zeros").unwrap().ok);
    assert!(daemon.exports().get("zeros").is_none());
    assert_eq!(devices(&mut client).len(), 1);

    // A client of a newer minor version is refused with both versions named; the
    // connection stays usable.
    let reply = client
        .call_raw(&envelope(&Request::DmLs, [1, 5, 0]))
        .unwrap();
    assert!(!reply.ok);
    assert_eq!(reply.version, VERSION);
    let why = reply.error.clone().unwrap();
    assert!(why.contains("1.5.0") && why.contains("1.4.0"), "{why}");
    assert!(matches!(reply.into_result(), Err(DaemonError::Refused(e)) if e == why));
    let reply = client.call(&Request::DmLs).unwrap();
    assert!(reply.ok, "{reply:?}");

    // Stopping retires every device; the socket's file goes with its handle.
    daemon.shutdown();
    assert_eq!(client.dm_ls().unwrap().output, "No devices found\n");
    drop(socket);
    assert!(!path.exists());
    assert!(Client::connect(&path).unwrap().is_none());
}

#[test]
fn a_second_daemon_over_the_same_images_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disks = images(dir.path(), 1, 8);
    let patterns = vec![format!("{}/*.img", dir.path().display())];
    let engine = Engine::new(dir.path().join("state"), patterns.clone());
    engine.vg_create("vg0", &disks, None, false).unwrap();
    let (_first, _) = Daemon::start(engine, false, false).unwrap();
    let again = Engine::new(dir.path().join("state"), patterns);
    match Daemon::start(again, false, false) {
        Err(e @ DaemonError::Engine(_)) => {
            assert!(e.chain().contains("d0.img"), "{}", e.chain())
        }
        Err(e) => panic!("refused for the wrong reason: {e:?}"),
        Ok(_) => panic!("two daemons over one image"),
    }
}
