//! The Adaptec ASR, LSI, NVIDIA and Promise readers over arbitrary records and disk sizes:
//! never panic, answer the same twice, name the device in every error, and a member they
//! accept is consistent (its place inside its set, its data before its metadata, its
//! vendor's set name).
//!
//! Input: a byte choosing the format, two bytes of disk size in sectors, then the record,
//! laid where the format looks for it (ASR: the reserved block in the last sector, the rest
//! as the RAID table 17 sectors from the end). An input of odd length has its checksum made
//! right, so mutations reach past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::ataraid::{asr, lsi, nvidia, promise, Level, ProbeFn, Vendor};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn fix_checksum(vendor: Vendor, record: &mut [u8]) {
    match vendor {
        Vendor::Promise if record.len() >= 2048 => {
            let sum = (0..511).fold(0u32, |s, i| s.wrapping_add(le32(record, i * 4)));
            record[0x7FC..0x800].copy_from_slice(&sum.to_le_bytes());
        }
        Vendor::Nvidia if record.len() >= 120 => {
            record[0x0C..0x10].fill(0);
            let sum = (0..30).fold(0u32, |s, i| s.wrapping_add(le32(record, i * 4)));
            record[0x0C..0x10].copy_from_slice(&0u32.wrapping_sub(sum).to_le_bytes());
        }
        Vendor::Asr if record.len() >= 512 + 64 => {
            // The table's header follows the reserved block in the input.
            let table = &mut record[512..];
            let elmcnt = usize::from(u16::from_be_bytes([table[0x0A], table[0x0B]]));
            let end = (64 + elmcnt * 64).min(table.len());
            let sum = table[64..end].iter().fold(0u32, |s, &b| s + u32::from(b)) & 0xFFFF;
            table[0x0E..0x10].copy_from_slice(&(sum as u16).to_be_bytes());
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (vendor, probe, back, max): (Vendor, ProbeFn, u64, usize) = match data[0] % 4 {
        0 => (Vendor::Asr, asr::probe, 1, 512 * 17),
        1 => (Vendor::Lsi, lsi::probe, 1, 512),
        2 => (Vendor::Nvidia, nvidia::probe, 2, 512),
        _ => (Vendor::Promise, promise::probe, 63, 2048),
    };
    let sectors = u64::from(u16::from_le_bytes([data[1], data[2]])) % 8192;
    let mut record = data[3..data.len().min(3 + max)].to_vec();
    if data.len() % 2 == 1 {
        fix_checksum(vendor, &mut record);
    }
    let dev = MemoryDevice::new("fuzz", sectors * 512);
    if let Some(at) = sectors.checked_sub(back) {
        if vendor == Vendor::Asr {
            let _ = dev.write_at(&record[..record.len().min(512)], at * 512);
            if record.len() > 512 {
                if let Some(table) = sectors.checked_sub(asr::TABLE_SECTORS + 1) {
                    let _ = dev.write_at(&record[512..], table * 512);
                }
            }
        } else {
            let _ = dev.write_at(&record, at * 512);
        }
    }
    let first = probe(&dev);
    let again = probe(&dev);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(a.to_string().contains("fuzz"), "{a}");
        }
        _ => panic!("two reads disagree"),
    }
    if let Ok(Some(m)) = first {
        assert_eq!(m.vendor, vendor);
        assert!(
            m.set_name.starts_with(vendor.dmraid_name()) || m.set_name == ".asr_spares",
            "{}",
            m.set_name
        );
        // A spare has no place in the set (NVIDIA numbers it after the members).
        assert!(m.level == Level::Spare || m.index < m.member_count, "{m:?}");
        assert!(m.data_sectors > 0, "{m:?}");
        assert!(m.data_offset + m.data_sectors <= m.metadata_offset, "{m:?}");
        assert!(m.metadata_offset < sectors, "{m:?}");
    }
});
