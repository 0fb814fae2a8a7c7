//! Malformed and hostile traffic over raw sockets: each case gets the protocol's error reply
//! or a closed connection, while a well-behaved client on another connection keeps being
//! served throughout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use tessera_export::proto::*;
use tessera_export::ExportSet;

const SIZE: usize = 1 << 20;

type Case = (&'static str, fn(SocketAddr));

const CASES: &[Case] = &[
    ("bad request magic closes", |a| {
        let mut c = Raw::open(a, "rw", false);
        let mut req = encode_request(&read_req(1, 0, 512));
        req[0..4].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        c.send(&req);
        c.expect_closed();
    }),
    ("bad option magic closes", |a| {
        let mut c = Raw::start(a);
        let mut b = 0x1234_5678_u64.to_be_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0]);
        c.send(&b);
        c.expect_closed();
    }),
    ("unknown client flags close", |a| {
        let mut c = Raw::connect(a);
        c.hello();
        c.send(&0x80u32.to_be_bytes());
        c.expect_closed();
    }),
    ("option before client flags closes", |a| {
        let mut c = Raw::connect(a);
        c.hello();
        c.option(OPT_LIST, &[]); // "IHAV" read as client flags
        c.expect_closed();
    }),
    ("HTTP instead of NBD closes", |a| {
        let mut c = Raw::connect(a);
        c.hello();
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        c.expect_closed();
    }),
    ("unknown option is unsupported, then GO works", |a| {
        let mut c = Raw::start(a);
        assert_eq!(c.option_final(99, b"whatever"), REP_ERR_UNSUP);
        assert_eq!(c.option_final(OPT_STARTTLS, &[]), REP_ERR_UNSUP);
        c.go("rw");
        assert_eq!(c.read(1, 0, 512).unwrap().len(), 512);
        c.disconnect();
    }),
    ("LIST with data is invalid, then LIST works", |a| {
        let mut c = Raw::start(a);
        assert_eq!(c.option_final(OPT_LIST, b"x"), REP_ERR_INVALID);
        c.option(OPT_LIST, &[]);
        let mut names = Vec::new();
        loop {
            let (_, reply, d) = c.option_reply();
            if reply == REP_ACK {
                break;
            }
            assert_eq!(reply, REP_SERVER);
            let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
            names.push(String::from_utf8(d[4..4 + len].to_vec()).unwrap());
        }
        assert_eq!(names, ["good", "ro", "rw"]);
    }),
    ("GO with a name longer than its data is invalid", |a| {
        let mut c = Raw::start(a);
        assert_eq!(
            c.option_final(OPT_GO, &[0, 0, 1, 0, b'r', b'w', 0, 0]),
            REP_ERR_INVALID
        );
        assert_eq!(c.option_final(OPT_GO, &[0, 0]), REP_ERR_INVALID);
        c.go("rw");
    }),
    ("INFO with a wrong request count is invalid", |a| {
        let mut c = Raw::start(a);
        let mut d = info_payload("rw", &[INFO_BLOCK_SIZE]);
        d[7] = 5; // claims five requests, carries one
        assert_eq!(c.option_final(OPT_INFO, &d), REP_ERR_INVALID);
    }),
    ("GO for an unknown export is unknown", |a| {
        let mut c = Raw::start(a);
        assert_eq!(
            c.option_final(OPT_GO, &info_payload("nope", &[])),
            REP_ERR_UNKNOWN
        );
        assert_eq!(
            c.option_final(OPT_INFO, &info_payload("nope", &[])),
            REP_ERR_UNKNOWN
        );
        // Several exports and no default: the empty name selects nothing.
        assert_eq!(
            c.option_final(OPT_GO, &info_payload("", &[])),
            REP_ERR_UNKNOWN
        );
        c.go("ro");
    }),
    ("GO with a name that is not UTF-8 is invalid", |a| {
        let mut c = Raw::start(a);
        assert_eq!(
            c.option_final(OPT_GO, &[0, 0, 0, 1, 0xff, 0, 0]),
            REP_ERR_INVALID
        );
    }),
    ("EXPORT_NAME for an unknown export closes", |a| {
        let mut c = Raw::start(a);
        c.option(OPT_EXPORT_NAME, b"nope");
        c.expect_closed();
    }),
    ("EXPORT_NAME of 4 GiB closes at once", |a| {
        let mut c = Raw::start(a);
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        c.send(&b);
        c.expect_closed();
    }),
    (
        "oversized INFO payload is too big, and negotiation goes on",
        |a| {
            let mut c = Raw::start(a);
            assert_eq!(
                c.option_final(OPT_INFO, &vec![7u8; 1 << 20]),
                REP_ERR_TOO_BIG
            );
            c.go("rw");
            assert!(c.read(1, 0, 4096).is_ok());
        },
    ),
    ("STRUCTURED_REPLY with data is invalid", |a| {
        let mut c = Raw::start(a);
        assert_eq!(c.option_final(OPT_STRUCTURED_REPLY, b"x"), REP_ERR_INVALID);
    }),
    ("ABORT is acknowledged, then the server hangs up", |a| {
        let mut c = Raw::start(a);
        assert_eq!(c.option_final(OPT_ABORT, &[]), REP_ACK);
        c.expect_closed();
    }),
    ("truncated option header closes", |a| {
        let mut c = Raw::start(a);
        c.send(&IHAVEOPT.to_be_bytes()[..6]);
        c.shutdown_write();
        c.expect_closed();
    }),
    ("truncated request closes", |a| {
        let mut c = Raw::open(a, "rw", false);
        c.send(&encode_request(&read_req(1, 0, 512))[..20]);
        c.shutdown_write();
        c.expect_closed();
    }),
    ("write payload cut short closes and writes nothing", |a| {
        let mut c = Raw::open(a, "rw", false);
        c.request(1, 0, 1, 0, 4096, &[0xee; 100]);
        c.shutdown_write();
        c.expect_closed();
        let mut check = Raw::open(a, "rw", false);
        assert!(!check.read(2, 0, 4096).unwrap().contains(&0xee));
    }),
    (
        "read past the end is EINVAL, and the connection goes on",
        |a| {
            let mut c = Raw::open(a, "rw", false);
            assert_eq!(c.read(1, SIZE as u64 - 511, 512), Err(EINVAL));
            assert_eq!(c.read(2, SIZE as u64, 1), Err(EINVAL));
            assert_eq!(c.read(3, SIZE as u64 - 512, 512).unwrap().len(), 512);
            c.disconnect();
        },
    ),
    ("offset + length overflowing u64 is EINVAL", |a| {
        let mut c = Raw::open(a, "rw", false);
        assert_eq!(c.read(1, u64::MAX, 4096), Err(EINVAL));
        c.request(4, 0, 2, u64::MAX - 1, 2, &[]);
        assert_eq!(c.reply_error(2), EINVAL);
    }),
    ("read longer than the request limit is EOVERFLOW", |a| {
        let mut c = Raw::open(a, "rw", false);
        assert_eq!(c.read(1, 0, MAX_PAYLOAD + 1), Err(EOVERFLOW));
        assert_eq!(c.read(2, 0, u32::MAX), Err(EOVERFLOW));
        assert!(c.read(3, 0, 512).is_ok());
    }),
    (
        "write past the end is ENOSPC; its payload is skipped",
        |a| {
            let mut c = Raw::open(a, "rw", false);
            assert_eq!(c.write(1, SIZE as u64 - 4, &[0x77; 4096], 0), ENOSPC);
            assert_eq!(c.read(2, SIZE as u64 - 4096, 4096).unwrap(), vec![0; 4096]);
            c.request(6, 0, 3, SIZE as u64, 1, &[]);
            assert_eq!(c.reply_error(3), ENOSPC, "write zeroes past the end");
        },
    ),
    ("write longer than the request limit closes", |a| {
        let mut c = Raw::open(a, "rw", false);
        c.request(1, 0, 1, 0, MAX_PAYLOAD + 1, &[0; 4096]);
        c.expect_closed();
    }),
    (
        "unknown command is EINVAL, and the connection goes on",
        |a| {
            let mut c = Raw::open(a, "rw", false);
            c.request(42, 0, 1, 0, 512, &[]);
            assert_eq!(c.reply_error(1), EINVAL);
            c.request(7, 0, 2, 0, 512, &[]); // BLOCK_STATUS, never negotiated
            assert_eq!(c.reply_error(2), EINVAL);
            c.request(5, 0, 3, 0, 512, &[]); // CACHE, not offered
            assert_eq!(c.reply_error(3), EINVAL);
            assert!(c.read(4, 0, 512).is_ok());
        },
    ),
    ("unknown or misplaced command flags are EINVAL", |a| {
        let mut c = Raw::open(a, "rw", false);
        c.request(0, 1 << 9, 1, 0, 512, &[]);
        assert_eq!(c.reply_error(1), EINVAL);
        c.request(0, CMD_FLAG_DF, 2, 0, 512, &[]); // DF needs structured replies
        assert_eq!(c.reply_error(2), EINVAL);
        c.request(4, CMD_FLAG_NO_HOLE, 3, 0, 512, &[]); // NO_HOLE is for write zeroes
        assert_eq!(c.reply_error(3), EINVAL);
        c.request(1, CMD_FLAG_FAST_ZERO, 4, 0, 4, b"abcd"); // payload skipped
        assert_eq!(c.reply_error(4), EINVAL);
        assert!(c.read(5, 0, 512).is_ok());
    }),
    ("writes to a read-only export are EPERM", |a| {
        let mut c = Raw::open(a, "ro", false);
        assert_eq!(c.write(1, 0, &[0x55; 4096], 0), EPERM);
        c.request(4, 0, 2, 0, 4096, &[]);
        assert_eq!(c.reply_error(2), EPERM, "trim");
        c.request(6, 0, 3, 0, 4096, &[]);
        assert_eq!(c.reply_error(3), EPERM, "write zeroes");
        assert_eq!(c.read(4, 0, 4096).unwrap(), pattern(4096, 2));
    }),
    ("FAST_ZERO is ENOTSUP and changes nothing", |a| {
        let mut c = Raw::open(a, "rw", false);
        assert_eq!(c.write(1, 8192, &[0x99; 512], 0), 0);
        c.request(6, CMD_FLAG_FAST_ZERO, 2, 8192, 512, &[]);
        assert_eq!(c.reply_error(2), ENOTSUP);
        assert_eq!(c.read(3, 8192, 512).unwrap(), vec![0x99; 512]);
    }),
    ("structured: errors are error chunks with a message", |a| {
        let mut c = Raw::open(a, "rw", true);
        c.request(0, 0, 1, SIZE as u64, 512, &[]);
        let (flags, kind, cookie, p) = c.chunk();
        assert_eq!(
            (flags, kind, cookie),
            (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 1)
        );
        assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), EINVAL);
        let msg_len = u16::from_be_bytes([p[4], p[5]]) as usize;
        assert!(String::from_utf8_lossy(&p[6..6 + msg_len]).contains("past the end"));
        // Zero-length read: one NONE chunk. DF is allowed now.
        c.request(0, 0, 2, 0, 0, &[]);
        assert_eq!(c.chunk().1, REPLY_TYPE_NONE);
        c.request(0, CMD_FLAG_DF, 3, 0, 512, &[]);
        let (_, kind, _, p) = c.chunk();
        assert_eq!((kind, p.len()), (REPLY_TYPE_OFFSET_DATA, 8 + 512));
    }),
    ("client vanishing mid-handshake is harmless", |a| {
        let mut c = Raw::connect(a);
        c.hello();
        drop(c);
        let c = Raw::connect(a);
        drop(c);
    }),
];

fn read_req(cookie: u64, offset: u64, length: u32) -> Request {
    Request {
        flags: 0,
        command: Command::Read,
        cookie,
        offset,
        length,
    }
}

#[test]
fn malformed_traffic_gets_errors_or_a_hangup_and_others_are_served() {
    assert!(CASES.len() >= 20);
    let dir = tmpdir();
    let exports = ExportSet::new();
    let rw = backing_file(dir.path(), "rw.img", &vec![0; SIZE]);
    let ro = backing_file(dir.path(), "ro.img", &pattern(SIZE, 2));
    let good = backing_file(dir.path(), "good.img", &vec![0; SIZE]);
    exports.insert("rw", file_export(&rw, false)).unwrap();
    exports.insert("ro", file_export(&ro, true)).unwrap();
    exports.insert("good", file_export(&good, false)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    // The well-behaved client: writes, reads back and checks, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = Raw::open(addr, "good", false);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 10 {
                let offset = (rounds * 4096) % SIZE as u64;
                let data = pattern(4096, rounds as u8);
                assert_eq!(c.write(rounds * 2, offset, &data, 0), 0);
                assert_eq!(c.read(rounds * 2 + 1, offset, 4096).unwrap(), data);
                rounds += 1;
            }
            c.disconnect();
            rounds
        })
    };

    for (name, case) in CASES {
        eprintln!("case: {name}");
        case(addr);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = bystander.join().expect("the well-behaved client failed");
    assert!(rounds >= 10);

    // Nothing above changed the files' sizes or the read-only export.
    assert_eq!(std::fs::metadata(&rw).unwrap().len(), SIZE as u64);
    assert_eq!(std::fs::read(&ro).unwrap(), pattern(SIZE, 2));
    // And a fresh client is still welcome.
    Raw::open(addr, "rw", true).disconnect();
}
