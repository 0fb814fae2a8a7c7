//! Well-formed negotiation over raw sockets: what INFO/GO and EXPORT_NAME answer.

mod common;

use common::*;
use tessera_export::proto::*;
use tessera_export::ExportSet;

#[test]
fn info_answers_what_was_asked() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "d.img", &vec![0; 3 << 20]);
    exports
        .insert("disk", file_export(&f, false).description("the disk"))
        .unwrap();
    let (_server, addr) = tcp_server(&exports);

    let mut c = Raw::start(addr);
    // The empty name is the only export; NAME tells its canonical name. Unknown info types
    // and repeats are ignored.
    c.option(
        OPT_INFO,
        &info_payload(
            "",
            &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77, INFO_NAME],
        ),
    );
    let mut infos = Vec::new();
    loop {
        let (o, reply, d) = c.option_reply();
        assert_eq!(o, OPT_INFO);
        if reply == REP_ACK {
            break;
        }
        assert_eq!(reply, REP_INFO);
        infos.push((u16::from_be_bytes([d[0], d[1]]), d[2..].to_vec()));
    }
    let size = 3u64 << 20;
    let mut want_export = size.to_be_bytes().to_vec();
    let flags = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_SEND_FAST_ZERO
        | FLAG_CAN_MULTI_CONN;
    want_export.extend_from_slice(&flags.to_be_bytes());
    let mut block = Vec::new();
    for v in [1u32, 4096, MAX_PAYLOAD] {
        block.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(
        infos,
        vec![
            (INFO_EXPORT, want_export),
            (INFO_NAME, b"disk".to_vec()),
            (INFO_DESCRIPTION, b"the disk".to_vec()),
            (INFO_BLOCK_SIZE, block),
        ]
    );

    // After STRUCTURED_REPLY, GO also offers DF.
    assert_eq!(c.option_final(OPT_STRUCTURED_REPLY, &[]), REP_ACK);
    assert_eq!(c.go("disk"), (size, flags | FLAG_SEND_DF));
    c.structured = true;
    assert_eq!(c.read(1, 0, 4096).unwrap(), vec![0; 4096]);
    c.disconnect();
}

#[test]
fn export_name_with_and_without_zero_padding() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "d.img", &pattern(1 << 20, 5));
    exports.insert("disk", file_export(&f, true)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    for (client_flags, padding) in [(FLAG_C_FIXED_NEWSTYLE, 124), (3, 0), (0, 124)] {
        let mut c = Raw::connect(addr);
        c.hello();
        c.send(&client_flags.to_be_bytes());
        c.option(OPT_EXPORT_NAME, b"disk");
        let b = c.recv(10 + padding);
        assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), 1 << 20);
        let flags = u16::from_be_bytes([b[8], b[9]]);
        assert_eq!(
            flags,
            FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN
        );
        assert!(b[10..].iter().all(|&z| z == 0));
        assert_eq!(
            c.read(1, 4096, 4096).unwrap(),
            pattern(1 << 20, 5)[4096..8192]
        );
        c.disconnect();
    }
}

#[test]
fn a_client_that_stalls_in_the_handshake_is_hung_up_on_and_one_in_transmission_is_not() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "d.img", &vec![7; 1 << 20]);
    exports.insert("disk", file_export(&f, false)).unwrap();
    let config = tessera_export::ServerConfig {
        handshake_timeout: Some(std::time::Duration::from_millis(500)),
        ..Default::default()
    };
    let server = tessera_export::Server::bind_tcp_with(exports, "127.0.0.1:0", config).unwrap();
    let tessera_export::ListenAddr::Tcp(addr) = *server.local_addr() else {
        panic!("not TCP")
    };
    // Silent after the greeting: the server hangs up.
    let mut stalled = Raw::connect(addr);
    stalled.hello();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    use std::io::Read;
    assert_eq!(
        stalled.s.read(&mut byte).unwrap(),
        0,
        "the server closed it"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(400)
            && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
    // A client in transmission may stay idle longer than the handshake limit.
    let mut idle = Raw::start(addr);
    idle.option(OPT_GO, &info_payload("disk", &[]));
    loop {
        let (_, reply, _) = idle.option_reply();
        if reply == REP_ACK {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let data = idle.read(1, 0, 4096).expect("a read after idling");
    assert!(data.iter().all(|&b| b == 7));
}
