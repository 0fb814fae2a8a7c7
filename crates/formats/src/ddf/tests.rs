use super::container::md_layout;
use super::records::*;

fn config(prl: u8, rlq: u8, n: u16, sec: u8) -> VdConfig {
    let mut b = vec![0xffu8; 512 + 12 * 16];
    b[0..4].copy_from_slice(&VD_CONFIG_MAGIC.to_be_bytes());
    b[64..66].copy_from_slice(&n.to_be_bytes());
    b[66] = 7;
    b[67] = prl;
    b[68] = rlq;
    b[69] = sec;
    b[70] = 0;
    b[71] = srl::SPANNED;
    VdConfig::decode(&b, 16).unwrap()
}

#[test]
fn levels_map_to_md_as_mdadm_maps_them() {
    assert_eq!(md_layout(&config(prl::RAID0, 0, 3, 1)), Ok((0, 0)));
    assert_eq!(md_layout(&config(prl::RAID1, 0, 2, 1)), Ok((1, 0)));
    assert_eq!(md_layout(&config(prl::RAID5, 3, 4, 1)), Ok((5, 2)));
    assert_eq!(md_layout(&config(prl::RAID5, 2, 4, 1)), Ok((5, 0)));
    assert_eq!(md_layout(&config(prl::RAID5, 0, 4, 1)), Ok((5, 1)));
    assert_eq!(md_layout(&config(prl::RAID6, 1, 5, 1)), Ok((6, 8)));
    assert_eq!(md_layout(&config(prl::RAID1, 0, 2, 3)), Ok((10, 0x102)));
    assert!(md_layout(&config(prl::RAID5, 7, 4, 1)).is_err());
    assert!(md_layout(&config(prl::RAID1, 0, 4, 1)).is_err());
}

#[test]
fn records_encode_back_to_their_bytes_with_a_fresh_crc() {
    let mut c = config(prl::RAID5, 3, 4, 1);
    c.phys_refnum = vec![1, 2, 3, 4];
    c.lba_offset = vec![0, 0, 8, 8];
    let b = c.encode();
    assert_eq!(crc_mismatch(&b), None);
    let again = VdConfig::decode(&b, 16).unwrap();
    assert_eq!(again.encode(), b);
    assert_eq!(again.phys_refnum, [1, 2, 3, 4]);
    assert_eq!(again.lba_offset, [0, 0, 8, 8]);
}

#[test]
fn the_crc_is_mdadms() {
    // Reflected CRC-32, started from 0, not inverted: of 8 bytes of 0xff (the CRC field
    // alone) it is that of the standard CRC-32's inverse.
    let rec = [0u8; 8];
    let std = {
        let mut h = crc32fast::Hasher::new_with_initial(u32::MAX);
        h.update(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        !h.finalize()
    };
    assert_eq!(crc(&rec), std);
    let mut sealed = vec![7u8; 512];
    seal(&mut sealed);
    assert_eq!(crc_mismatch(&sealed), None);
    sealed[100] ^= 1;
    assert!(crc_mismatch(&sealed).is_some());
}

#[test]
fn guids_print_as_mdadm_prints_them() {
    let mut g = [0u8; 24];
    g[..8].copy_from_slice(b"Linux-MD");
    g[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let g = Guid(g);
    assert_eq!(
        g.to_string(),
        "4C696E75:782D4D44:DEADBEEF:00000000:00000000:00000000"
    );
    assert_eq!(g.vendor(), "Linux-MD");
}
