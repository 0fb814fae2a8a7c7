//! Reports in lvm2's shape: the same field names (`pv_name`, `lv_size`, `seg_pe_ranges`...),
//! columns aligned as `pvs`/`vgs`/`lvs` align them, and JSON as `--reportformat json`.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Result};
use serde_json::{Map, Value};
use tessera_engine::units::Units;
use tessera_engine::{Scan, VgState};
use tessera_formats::lvm2::vg::{LogicalVolume, Segment, SegmentKind, VolumeGroup};

/// One field: its lvm2 name, column heading, and whether it is right-aligned (numbers).
struct Field {
    name: &'static str,
    heading: &'static str,
    numeric: bool,
}

const fn f(name: &'static str, heading: &'static str, numeric: bool) -> Field {
    Field {
        name,
        heading,
        numeric,
    }
}

const FIELDS: &[Field] = &[
    f("pv_name", "PV", false),
    f("pv_uuid", "PV UUID", false),
    f("pv_fmt", "Fmt", false),
    f("pv_attr", "Attr", false),
    f("pv_size", "PSize", true),
    f("pv_free", "PFree", true),
    f("pv_used", "Used", true),
    f("dev_size", "DevSize", true),
    f("pe_start", "1st PE", true),
    f("pv_pe_count", "PE", true),
    f("pv_pe_alloc_count", "Alloc", true),
    f("pv_mda_count", "#PMda", true),
    f("vg_name", "VG", false),
    f("vg_uuid", "VG UUID", false),
    f("vg_attr", "Attr", false),
    f("vg_size", "VSize", true),
    f("vg_free", "VFree", true),
    f("vg_extent_size", "Ext", true),
    f("vg_extent_count", "#Ext", true),
    f("vg_free_count", "Free", true),
    f("vg_seqno", "Seq", true),
    f("vg_mda_count", "#VMda", true),
    f("pv_count", "#PV", true),
    f("lv_count", "#LV", true),
    f("snap_count", "#SN", true),
    f("lv_name", "LV", false),
    f("lv_uuid", "LV UUID", false),
    f("lv_attr", "Attr", false),
    f("lv_size", "LSize", true),
    f("lv_path", "Path", false),
    f("origin", "Origin", false),
    f("pool_lv", "Pool", false),
    f("data_percent", "Data%", true),
    f("metadata_percent", "Meta%", true),
    f("lv_metadata_size", "LMetaSize", true),
    f("chunk_size", "Chunk", true),
    f("transaction_id", "TransId", true),
    f("thin_id", "ThId", true),
    f("discards", "Discards", false),
    f("lv_when_full", "WhenFull", false),
    f("zero", "Zero", false),
    f("snap_percent", "Snap%", true),
    f("bbr_relocated", "Reloc", true),
    f("bbr_pool", "BBRPool", false),
    f("bbr_state", "BBR", false),
    f("seg_count", "#Seg", true),
    f("segtype", "Type", false),
    f("stripes", "#Str", true),
    f("stripe_size", "Stripe", true),
    f("seg_start", "Start", true),
    f("seg_start_pe", "Start", true),
    f("seg_size", "SSize", true),
    f("seg_size_pe", "SSize", true),
    f("seg_pe_ranges", "PE Ranges", false),
    f("devices", "Devices", false),
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pv,
    Vg,
    Lv,
    Seg,
}

impl Kind {
    fn json_key(self) -> &'static str {
        match self {
            Kind::Pv => "pv",
            Kind::Vg => "vg",
            Kind::Lv => "lv",
            Kind::Seg => "seg",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Kind::Pv => "pv_",
            Kind::Vg => "vg_",
            Kind::Lv | Kind::Seg => "lv_",
        }
    }
    fn defaults(self) -> &'static [&'static str] {
        match self {
            Kind::Pv => &[
                "pv_name", "vg_name", "pv_fmt", "pv_attr", "pv_size", "pv_free",
            ],
            Kind::Vg => &[
                "vg_name",
                "pv_count",
                "lv_count",
                "snap_count",
                "vg_attr",
                "vg_size",
                "vg_free",
            ],
            Kind::Lv => &[
                "lv_name",
                "vg_name",
                "lv_attr",
                "lv_size",
                "pool_lv",
                "origin",
                "data_percent",
                "metadata_percent",
            ],
            Kind::Seg => &[
                "lv_name", "vg_name", "lv_attr", "stripes", "segtype", "seg_size",
            ],
        }
    }
}

/// Options shared by every list.
pub struct Options {
    pub fields: Option<String>,
    pub json: bool,
    pub units: Units,
    pub headings: bool,
    pub separator: Option<String>,
}

fn resolve(kind: Kind, spec: Option<&str>) -> Result<Vec<&'static Field>> {
    let mut names: Vec<String> = kind.defaults().iter().map(|s| s.to_string()).collect();
    if let Some(spec) = spec {
        let spec = spec.trim();
        let (append, list) = match spec.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, spec),
        };
        if !append {
            names.clear();
        }
        names.extend(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    names
        .iter()
        .map(|n| {
            let candidates = [
                n.clone(),
                format!("{}{n}", kind.prefix()),
                format!("seg_{n}"),
            ];
            candidates
                .iter()
                .find_map(|c| FIELDS.iter().find(|f| f.name == c))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown field '{n}'; known fields: {}",
                        FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                    )
                })
        })
        .collect()
}

type Row = BTreeMap<&'static str, String>;

fn pv_rows(scan: &Scan, u: &Units) -> Vec<Row> {
    let mut rows = Vec::new();
    for pv in &scan.pvs {
        let mut r = Row::new();
        r.insert("pv_name", pv.path.clone());
        r.insert("pv_uuid", pv.label.pv_id.to_string());
        r.insert("pv_fmt", "lvm2".into());
        r.insert("dev_size", u.format(pv.device.size_bytes()));
        r.insert("pv_mda_count", pv.mdas.len().to_string());
        let pe_start = pv.label.data_areas.first().map_or(0, |a| a.offset);
        r.insert("pe_start", u.format(pe_start));
        let state = pv.vg_name.as_ref().and_then(|n| scan.vg(n));
        match state.and_then(|s| s.vg.pv_by_id(&pv.label.pv_id).map(|p| (s, p))) {
            Some((s, p)) => {
                let ext = s.vg.extent_size_bytes();
                let used = s.vg.pe_used(&p.key);
                r.insert("vg_name", s.vg.name.clone());
                r.insert(
                    "pv_attr",
                    format!("{}--", if p.is_allocatable() { 'a' } else { '-' }),
                );
                r.insert("pv_size", u.format(p.pe_count * ext));
                r.insert(
                    "pv_free",
                    u.format((p.pe_count - used.min(p.pe_count)) * ext),
                );
                r.insert("pv_used", u.format(used * ext));
                r.insert("pv_pe_count", p.pe_count.to_string());
                r.insert("pv_pe_alloc_count", used.to_string());
                r.insert("pe_start", u.format(p.pe_start_sectors * 512));
            }
            None => {
                // lvm2 reports an orphan's whole device as its size.
                let size = pv.device.size_bytes();
                r.insert("vg_name", String::new());
                r.insert("pv_attr", "---".into());
                r.insert("pv_size", u.format(size));
                r.insert("pv_free", u.format(size));
                r.insert("pv_used", u.format(0));
                r.insert("pv_pe_count", "0".into());
                r.insert("pv_pe_alloc_count", "0".into());
            }
        }
        rows.push(r);
    }
    rows
}

fn vg_fields(s: &VgState, u: &Units, r: &mut Row) {
    let vg = &s.vg;
    let ext = vg.extent_size_bytes();
    let free = vg.pe_free_total();
    r.insert("vg_name", vg.name.clone());
    r.insert("vg_uuid", vg.id.to_string());
    let writeable = vg.status.iter().any(|x| x == "WRITE");
    let resizeable = vg.status.iter().any(|x| x == "RESIZEABLE");
    r.insert(
        "vg_attr",
        format!(
            "{}{}-{}n-",
            if writeable { 'w' } else { 'r' },
            if resizeable { 'z' } else { '-' },
            if s.is_partial() { 'p' } else { '-' }
        ),
    );
    r.insert("vg_size", u.format(vg.pe_total() * ext));
    r.insert("vg_free", u.format(free * ext));
    r.insert("vg_extent_size", u.format(ext));
    r.insert("vg_extent_count", vg.pe_total().to_string());
    r.insert("vg_free_count", free.to_string());
    r.insert("vg_seqno", vg.seqno.to_string());
    r.insert("vg_mda_count", vg.pvs.len().to_string());
    r.insert("pv_count", vg.pvs.len().to_string());
    r.insert(
        "lv_count",
        vg.lvs
            .iter()
            .filter(|l| vg.lv_is_visible(l))
            .count()
            .to_string(),
    );
    let snaps = vg
        .lvs
        .iter()
        .filter(|l| l.segments.iter().any(|s| s.type_name() == "snapshot"))
        .count();
    r.insert("snap_count", snaps.to_string());
}

fn vg_rows(scan: &Scan, u: &Units) -> Vec<Row> {
    scan.vgs
        .values()
        .map(|s| {
            let mut r = Row::new();
            vg_fields(s, u, &mut r);
            r
        })
        .collect()
}

fn lv_attr(vg: &VolumeGroup, lv: &LogicalVolume) -> String {
    let merging = vg.is_merging(&lv.name);
    let snapshot = vg.is_origin(&lv.name) || vg.is_cow(&lv.name);
    let pool_part = vg.pool_of_metadata(&lv.name).is_some() || vg.is_pmspare(lv);
    let kind = match lv.segments.first().map(|s| s.type_name()) {
        // As lvm2: an origin before anything else, then pool metadata and the spare, a COW
        // LV as the snapshot.
        _ if vg.is_origin(&lv.name) => {
            if merging {
                'O'
            } else {
                'o'
            }
        }
        _ if pool_part => 'e',
        Some(t) if t.starts_with("raid") => {
            if lv.is_visible() {
                'r'
            } else {
                'i'
            }
        }
        Some("mirror") => 'm',
        Some("thin") => 'V',
        Some("thin-pool") => 't',
        _ if vg.pool_of_data(&lv.name).is_some() => 'T',
        _ if vg.is_cow(&lv.name) => {
            if merging {
                'S'
            } else {
                's'
            }
        }
        Some("snapshot") => 's',
        _ if !lv.is_visible() => 'i',
        _ => '-',
    };
    let write = if lv.status.iter().any(|s| s == "WRITE") {
        'w'
    } else {
        'r'
    };
    let thin = lv.thin_pool().is_some() || lv.thin().is_some();
    let target = if thin {
        't'
    } else if snapshot {
        's'
    } else {
        '-'
    };
    let pool = vg.pool_of(&lv.name).and_then(|p| p.thin_pool());
    let zero = if thin && pool.is_some_and(|p| p.zeroes()) {
        'z'
    } else {
        '-'
    };
    let skip = if lv.activation_skip() { 'k' } else { '-' };
    format!("{kind}{write}i---{target}{zero}-{skip}")
}

fn pv_name(s: &VgState, scan: &Scan, key: &str) -> String {
    match s.present.get(key) {
        Some(&i) => scan.pvs[i].path.clone(),
        None => "[unknown]".into(),
    }
}

fn seg_fields(s: &VgState, scan: &Scan, seg: &Segment, u: &Units, r: &mut Row) {
    let ext = s.vg.extent_size_bytes();
    r.insert("segtype", seg.type_name().to_string());
    r.insert("stripes", seg.stripe_count().to_string());
    r.insert("seg_start", u.format(seg.start_extent * ext));
    r.insert("seg_start_pe", seg.start_extent.to_string());
    r.insert("seg_size", u.format(seg.extent_count * ext));
    r.insert("seg_size_pe", seg.extent_count.to_string());
    match &seg.kind {
        SegmentKind::Striped {
            stripe_size_sectors,
            stripes,
        } => {
            let per = seg.extent_count / stripes.len().max(1) as u64;
            r.insert("stripe_size", u.format(stripe_size_sectors * 512));
            let ranges: Vec<String> = stripes
                .iter()
                .map(|st| {
                    format!(
                        "{}:{}-{}",
                        pv_name(s, scan, &st.pv),
                        st.start_pe,
                        st.start_pe + per - 1
                    )
                })
                .collect();
            r.insert("seg_pe_ranges", ranges.join(" "));
            let devices: Vec<String> = stripes
                .iter()
                .map(|st| format!("{}({})", pv_name(s, scan, &st.pv), st.start_pe))
                .collect();
            r.insert("devices", devices.join(","));
        }
        SegmentKind::Raid { raid, .. } => {
            r.insert("stripe_size", u.format(raid.stripe_size_sectors * 512));
            // As lvm2 shows them: the data sub-LVs and their extents.
            let ranges: Vec<String> = raid
                .images
                .iter()
                .map(|i| {
                    let count = s.vg.lv(&i.data).map_or(0, |l| l.extent_count());
                    format!("{}:0-{}", i.data, count.saturating_sub(1))
                })
                .collect();
            r.insert("seg_pe_ranges", ranges.join(" "));
            let devices: Vec<String> = raid
                .images
                .iter()
                .map(|i| format!("{}(0)", i.data))
                .collect();
            r.insert("devices", devices.join(","));
        }
        SegmentKind::Snapshot(_) | SegmentKind::Thin(_) => {
            r.insert("stripe_size", u.format(0));
            r.insert("seg_pe_ranges", String::new());
            r.insert("devices", String::new());
        }
        SegmentKind::ThinPool(p) => {
            // As lvm2 shows a pool: its data LV's extents.
            r.insert("stripe_size", u.format(0));
            let count = s.vg.lv(&p.data).map_or(0, |l| l.extent_count());
            r.insert(
                "seg_pe_ranges",
                format!("{}:0-{}", p.data, count.saturating_sub(1)),
            );
            r.insert("devices", format!("{}(0)", p.data));
        }
        SegmentKind::Other { body, .. } => {
            r.insert(
                "stripe_size",
                u.format(body.get_int("stripe_size").unwrap_or(0).max(0) as u64 * 512),
            );
            r.insert("seg_pe_ranges", String::new());
            r.insert("devices", String::new());
        }
    }
}

/// A pool's usage, read once per pool: its info and its devices' mapped blocks by id.
type PoolUsage = Option<(tessera_formats::thin::PoolInfo, BTreeMap<u32, u64>)>;

fn pool_usage(scan: &Scan, s: &VgState, pool: &str) -> PoolUsage {
    match tessera_engine::thin::pool_usage(scan, s, pool) {
        Ok((info, devices)) => Some((
            info,
            devices
                .into_iter()
                .map(|(id, d)| (id, d.mapped_blocks))
                .collect(),
        )),
        Err(e) => {
            eprintln!("tessera: warning: {}/{pool}: {e}", s.vg.name);
            None
        }
    }
}

/// The thin fields of LV `lv`: its pool, Data% and Meta% from the pool's metadata, chunk,
/// transaction and device ids, discards and zeroing, as lvs names them.
fn thin_fields(
    scan: &Scan,
    s: &VgState,
    lv: &LogicalVolume,
    u: &Units,
    usage: bool,
    cache: &mut BTreeMap<String, PoolUsage>,
    r: &mut Row,
) {
    use tessera_engine::thin::percent;
    let vg = &s.vg;
    let mut usage_of = |pool: &str| -> PoolUsage {
        cache
            .entry(pool.to_string())
            .or_insert_with(|| pool_usage(scan, s, pool))
            .clone()
    };
    if let Some(p) = lv.thin_pool() {
        r.insert("chunk_size", u.format(p.chunk_size_sectors * 512));
        r.insert("transaction_id", p.transaction_id.to_string());
        r.insert(
            "lv_when_full",
            if tessera_engine::thin::error_when_full(lv) {
                "error"
            } else {
                "queue"
            }
            .to_string(),
        );
        r.insert("discards", p.discards().name().to_string());
        r.insert("zero", if p.zeroes() { "zero" } else { "" }.to_string());
        let meta = vg.lv(&p.metadata).map_or(0, |m| m.extent_count());
        r.insert("lv_metadata_size", u.format(meta * vg.extent_size_bytes()));
        if usage {
            if let Some((info, _)) = usage_of(&lv.name) {
                let used = info.nr_data_blocks - info.free_data_blocks.min(info.nr_data_blocks);
                r.insert("data_percent", percent(used, info.nr_data_blocks));
                // As the kernel's pool status counts them (and lvs shows them): the blocks
                // in use plus the reserve the pool keeps for itself.
                let mused = tessera_engine::thin::metadata_used_as_reported(&info);
                r.insert("metadata_percent", percent(mused, info.nr_metadata_blocks));
            }
        }
    } else if let Some(t) = lv.thin() {
        r.insert("pool_lv", t.pool.clone());
        r.insert("origin", t.origin.clone().unwrap_or_default());
        r.insert("transaction_id", t.transaction_id.to_string());
        r.insert("thin_id", t.device_id.to_string());
        if let Some(p) = vg.lv(&t.pool).and_then(|p| p.thin_pool()) {
            r.insert("discards", p.discards().name().to_string());
            r.insert("zero", if p.zeroes() { "zero" } else { "" }.to_string());
            if usage {
                if let Some((info, devices)) = usage_of(&t.pool) {
                    let size = lv.extent_count() * vg.extent_size_sectors;
                    let mapped = devices.get(&t.device_id).copied().unwrap_or(0)
                        * u64::from(info.data_block_sectors);
                    r.insert("data_percent", percent(mapped.min(size), size));
                }
            }
        }
    }
}

fn lv_rows(
    scan: &Scan,
    u: &Units,
    vg_filter: Option<&str>,
    all: bool,
    segments: bool,
    usage: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut pools: BTreeMap<String, PoolUsage> = BTreeMap::new();
    for s in scan
        .vgs
        .values()
        .filter(|s| vg_filter.is_none_or(|f| f == s.vg.name))
    {
        let ext = s.vg.extent_size_bytes();
        for lv in &s.vg.lvs {
            // lvm2 never lists its snapshotN LVs; a snapshot shows under its COW LV's name.
            if lv.snapshot().is_some() || (!all && !s.vg.lv_is_visible(lv)) {
                continue;
            }
            let mut base = Row::new();
            vg_fields(s, u, &mut base);
            base.insert(
                "lv_name",
                if s.vg.lv_is_visible(lv) {
                    lv.name.clone()
                } else {
                    format!("[{}]", lv.name)
                },
            );
            base.insert("lv_uuid", lv.id.to_string());
            base.insert("lv_attr", lv_attr(&s.vg, lv));
            let origin =
                s.vg.snapshot_of_cow(&lv.name)
                    .and_then(|l| l.snapshot())
                    .map(|snap| snap.origin.clone());
            base.insert("origin", origin.unwrap_or_default());
            // How full a snapshot's store is, read from the store itself (lvm2 reads the
            // kernel's status of an active snapshot): allocated over total sectors.
            let used = match s.vg.snapshot_of_cow(&lv.name) {
                Some(_) if usage => match tessera_engine::activate::cow_usage(scan, s, &lv.name) {
                    // lvm2 shows a snapshot that filled up (invalidated) as full.
                    Ok(Some((_, false))) => "100.00".to_string(),
                    Ok(Some((u, true))) if u.total_sectors > 0 => format!(
                        "{:.2}",
                        u.sectors_allocated as f64 * 100.0 / u.total_sectors as f64
                    ),
                    Ok(_) => "0.00".to_string(),
                    Err(_) => String::new(),
                },
                _ => String::new(),
            };
            base.insert("data_percent", used.clone());
            base.insert("snap_percent", used);
            thin_fields(scan, s, lv, u, usage, &mut pools, &mut base);
            if usage && tessera_engine::bbr::is_bbr(lv) {
                bbr_fields(scan, s, &lv.name, &mut base);
            }
            base.insert("lv_size", u.format(lv.extent_count() * ext));
            base.insert("lv_path", format!("/dev/{}/{}", s.vg.name, lv.name));
            base.insert("seg_count", lv.segments.len().to_string());
            if segments {
                for seg in &lv.segments {
                    let mut r = base.clone();
                    seg_fields(s, scan, seg, u, &mut r);
                    rows.push(r);
                }
            } else {
                if let Some(first) = lv.segments.first() {
                    seg_fields(s, scan, first, u, &mut base);
                    // Whole-LV values where a segment's would mislead.
                    let per_segment: Vec<Row> = lv
                        .segments
                        .iter()
                        .map(|seg| {
                            let mut r = Row::new();
                            seg_fields(s, scan, seg, u, &mut r);
                            r
                        })
                        .collect();
                    let joined = |key: &str, sep: &str| -> String {
                        per_segment
                            .iter()
                            .filter_map(|r| r.get(key).filter(|v| !v.is_empty()).cloned())
                            .collect::<Vec<_>>()
                            .join(sep)
                    };
                    base.insert("seg_pe_ranges", joined("seg_pe_ranges", " "));
                    // lvm2 lists every segment's devices, comma-separated.
                    base.insert("devices", joined("devices", ","));
                }
                rows.push(base);
            }
        }
    }
    rows
}

/// A BBR LV's relocations, read from its table: sectors relocated, replacement sectors
/// used of the pool, and `ok`, `full` (no replacement left: the next failing write fails),
/// `repair` (a table copy is damaged or behind; rewritten when next served) or the error.
fn bbr_fields(scan: &Scan, s: &VgState, lv: &str, r: &mut Row) {
    match tessera_engine::bbr::usage(scan, s, lv) {
        Ok(Some(b)) => {
            r.insert("bbr_relocated", b.relocated.to_string());
            r.insert("bbr_pool", format!("{}/{}", b.used, b.pool));
            let state = if b.damaged > 0 {
                "repair"
            } else if b.used >= b.pool {
                "full"
            } else {
                "ok"
            };
            r.insert("bbr_state", state.to_string());
        }
        Ok(None) => {}
        Err(e) => {
            r.insert("bbr_state", format!("error: {e}"));
        }
    }
}

/// Renders rows as lvm2 does: a table with aligned columns, or JSON.
fn render(kind: Kind, rows: &[Row], fields: &[&Field], opts: &Options) -> String {
    if opts.json {
        let items: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for f in fields {
                    m.insert(
                        f.name.to_string(),
                        Value::String(r.get(f.name).cloned().unwrap_or_default()),
                    );
                }
                Value::Object(m)
            })
            .collect();
        let mut report = Map::new();
        report.insert(kind.json_key().to_string(), Value::Array(items));
        let root = serde_json::json!({ "report": [Value::Object(report)] });
        return serde_json::to_string_pretty(&root).unwrap_or_default() + "\n";
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            fields
                .iter()
                .map(|f| r.get(f.name).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let mut out = String::new();
    if let Some(sep) = &opts.separator {
        if opts.headings {
            out += &format!(
                "  {}\n",
                fields
                    .iter()
                    .map(|f| f.heading)
                    .collect::<Vec<_>>()
                    .join(sep)
            );
        }
        for row in &cells {
            out += &format!("  {}\n", row.join(sep));
        }
        return out;
    }
    let widths: Vec<usize> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let head = if opts.headings { f.heading.len() } else { 0 };
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(head)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let parts: Vec<String> = values
            .iter()
            .zip(fields)
            .zip(&widths)
            .map(|((v, f), &w)| {
                if f.numeric {
                    format!("{v:>w$}")
                } else {
                    format!("{v:<w$}")
                }
            })
            .collect();
        format!("  {}\n", parts.join(" ").trim_end())
    };
    if opts.headings {
        out += &line(fields.iter().map(|f| f.heading).collect());
    }
    for row in &cells {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn pv_list(scan: &Scan, opts: &Options) -> Result<String> {
    let fields = resolve(Kind::Pv, opts.fields.as_deref())?;
    Ok(render(Kind::Pv, &pv_rows(scan, &opts.units), &fields, opts))
}

pub fn vg_list(scan: &Scan, names: &[String], opts: &Options) -> Result<String> {
    let fields = resolve(Kind::Vg, opts.fields.as_deref())?;
    for n in names {
        if scan.vg(n).is_none() {
            bail!("volume group '{n}' not found");
        }
    }
    let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
    let rows: Vec<Row> = vg_rows(scan, &opts.units)
        .into_iter()
        .filter(|r| {
            wanted.is_empty()
                || r.get("vg_name")
                    .is_some_and(|n| wanted.contains(n.as_str()))
        })
        .collect();
    Ok(render(Kind::Vg, &rows, &fields, opts))
}

pub fn lv_list(
    scan: &Scan,
    vg: Option<&str>,
    all: bool,
    segments: bool,
    opts: &Options,
) -> Result<String> {
    if let Some(v) = vg {
        if scan.vg(v).is_none() {
            bail!("volume group '{v}' not found");
        }
    }
    let kind = if segments { Kind::Seg } else { Kind::Lv };
    let fields = resolve(kind, opts.fields.as_deref())?;
    // Usage is read from the pools' metadata and the snapshots' stores only when shown.
    let usage = fields
        .iter()
        .any(|f| {
            matches!(f.name, "data_percent" | "metadata_percent" | "snap_percent")
                || f.name.starts_with("bbr_")
        });
    Ok(render(
        kind,
        &lv_rows(scan, &opts.units, vg, all, segments, usage),
        &fields,
        opts,
    ))
}
