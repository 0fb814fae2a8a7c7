//! `pv move` of a VG the daemon serves, online. The plan is committed as offline (lvm2's
//! pvmove0, the LVs LOCKED on it); the served LVs are then reloaded over the source as
//! `MovingPv` mirrors it (writes to the areas being moved reach both sides under region
//! locks, reads come from the source), each with one suspend and resume; the copy runs
//! through it with its checkpoints (`tessera_engine::pvmove::online`); the final metadata is committed and each LV reloaded
//! once more, now on the destinations. Clients see no error, and no pause longer than a
//! table swap.

use std::time::Instant;

use tessera_engine::pvmove::{settled_state, MoveLimits, MoveProgress};

use super::*;

/// Where a served move is, for `pv move`'s progress bar.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(super) struct MoveStatus {
    pub source: String,
    pub done_extents: u64,
    pub total_extents: u64,
    pub extent_bytes: u64,
    pub resumed_at_extents: u64,
    pub copied_extents: u64,
    pub checkpoints: u64,
    pub finished: bool,
    pub error: Option<String>,
    pub seconds: f64,
}

impl Daemon {
    fn moves(&self) -> MutexGuard<'_, BTreeMap<String, MoveStatus>> {
        self.moves.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves PV `source` (or resumes the move in progress in a VG the daemon serves when
    /// None) while its LVs stay served; returns when the move has finished.
    pub(super) fn pv_move(
        &self,
        source: Option<&str>,
        dests: &[String],
        lv: Option<&str>,
        limits: MoveLimits,
    ) -> Result<Reply> {
        if self.read_only {
            refuse!("the daemon serves read-only; it moves nothing");
        }
        let vg = match source {
            Some(source) => {
                let scan = self.engine.scan_with(true)?;
                let Some(pv) = scan.pvs.iter().find(|p| p.path == source) else {
                    refuse!("{source} is not a PV this daemon serves");
                };
                let Some(vg) = pv.vg_name.clone() else {
                    refuse!("{source} belongs to no VG");
                };
                if !self.serves_vg(&vg) {
                    return Ok(Reply {
                        code: Some(NOT_SERVED.into()),
                        ..Reply::error(format!("this daemon does not serve VG '{vg}'"))
                    });
                }
                let moving = self.engine.pv_moves()?;
                if moving.iter().any(|(v, _)| *v == vg) {
                    if !dests.is_empty() || lv.is_some() {
                        refuse!("a move is in progress in VG '{vg}'; resume it without destinations or LV");
                    }
                } else {
                    refuse_stacked_lvs(&scan, &vg)?;
                    let lv = lv.map(|n| n.rsplit_once('/').map_or(n, |(_, l)| l));
                    self.engine.pv_move_start_with(source, dests, lv, false)?;
                }
                vg
            }
            None => {
                let moving = self.engine.pv_moves()?;
                let Some((vg, _)) = moving.into_iter().find(|(v, _)| self.serves_vg(v)) else {
                    refuse!("no move is in progress in a VG this daemon serves");
                };
                refuse_stacked_lvs(&self.engine.scan_with(true)?, &vg)?;
                vg
            }
        };
        self.run_tracked(vg, limits)
    }

    /// Runs VG `vg`'s move with its status kept for `pv_move_status`.
    fn run_tracked(&self, vg: String, limits: MoveLimits) -> Result<Reply> {
        if self
            .moves()
            .get(&vg)
            .is_some_and(|m| !m.finished && m.error.is_none())
        {
            refuse!("a move in VG '{vg}' is running already");
        }
        self.moves().insert(vg.clone(), MoveStatus::default());
        let result = self.run_move(&vg, limits);
        let mut moves = self.moves();
        let status = moves.entry(vg.clone()).or_default();
        match result {
            Ok(()) => {
                status.finished = true;
                Ok(Reply::ok(
                    format!(
                        "  {}: moved {} extents in VG {vg} online ({} copied by this run, {} were \
                         moved before it; {} checkpoints, {:.1} s).\n",
                        status.source,
                        status.total_extents,
                        status.copied_extents,
                        status.resumed_at_extents,
                        status.checkpoints,
                        status.seconds
                    ),
                    json!(status.clone()),
                ))
            }
            Err(e) => {
                status.error = Some(e.chain());
                Err(e)
            }
        }
    }

    /// Where the moves of VG `vg` (or of every VG) are.
    /// Finishes in the background every move that `start` found cut short (its LVs already
    /// served over the source's stand-in), as lvm2's lvmpolld resumes a pvmove when its VG
    /// is activated. A VG whose move cannot run online keeps its LVs on the stand-in, so
    /// their writes still reach both sides, until `pv move` finishes it offline.
    pub fn resume_moves(self: &Arc<Self>) {
        if self.read_only {
            return;
        }
        let Ok(moves) = self.engine.pv_moves() else {
            return;
        };
        for (vg, _) in moves {
            if !self.serves_vg(&vg) {
                continue;
            }
            let daemon = self.clone();
            std::thread::spawn(move || {
                let resumed = daemon
                    .engine
                    .scan_with(true)
                    .map_err(DaemonError::from)
                    .and_then(|scan| refuse_stacked_lvs(&scan, &vg))
                    .and_then(|()| daemon.run_tracked(vg.clone(), MoveLimits::default()));
                match resumed {
                    Ok(reply) => eprint!("tessera: resumed a move cut short:\n{}", reply.output),
                    Err(e) => eprintln!(
                        "tessera: warning: VG '{vg}': the move cut short did not resume: {}",
                        e.chain()
                    ),
                }
            });
        }
    }

    pub(super) fn pv_move_status(&self, vg: Option<&str>) -> Result<Reply> {
        let moves = self.moves();
        let picked: BTreeMap<&String, &MoveStatus> = moves
            .iter()
            .filter(|(k, _)| vg.is_none_or(|v| v == *k))
            .collect();
        Ok(Reply::ok("", json!(picked)))
    }

    /// Whether a move runs in VG `vg` now (LV changes wait for it).
    pub(super) fn move_running(&self, vg: &str) -> bool {
        self.moves()
            .get(vg)
            .is_some_and(|m| !m.finished && m.error.is_none())
    }

    fn serves_vg(&self, vg: &str) -> bool {
        self.lock()
            .values()
            .any(|v| v.lv.as_ref().is_some_and(|l| l.vg == vg))
    }

    fn run_move(&self, vg: &str, limits: MoveLimits) -> Result<()> {
        let started = Instant::now();
        let (path, moving) = self.engine.pv_move_source(vg)?;
        let moving = Arc::new(moving);
        self.engine
            .overlay_device(&path, Some(moving.clone() as SharedDevice));
        // The LVs now write through the mirrored source.
        let through = self.reload_vg(vg);
        let report = through.and_then(|()| {
            let mut progress = |p: &MoveProgress| {
                let mut moves = self.moves();
                let s = moves.entry(vg.to_string()).or_default();
                s.source = p.source.clone();
                s.done_extents = p.done_extents;
                s.total_extents = p.total_extents;
                s.extent_bytes = p.extent_bytes;
            };
            Ok(self.engine.pv_move_run_with(
                vg,
                limits,
                &mut progress,
                &|| false,
                Some(moving.as_ref()),
            )?)
        });
        // A move that stopped keeps the LVs on the mirrored source, so that writes keep
        // reaching both sides of what its checkpoints count as copied; `pv move` resumes it.
        let report = report?;
        // Finished: the LVs go to plain tables on the destinations; until each is reloaded
        // its writes still reach both sides.
        let reloaded = self.reload_vg_with(vg, Some(&path));
        self.engine.overlay_device(&path, None);
        reloaded?;
        let mut moves = self.moves();
        let s = moves.entry(vg.to_string()).or_default();
        s.resumed_at_extents = report.resumed_at_extents;
        s.copied_extents = report.copied_extents;
        s.checkpoints = report.checkpoints;
        s.seconds = started.elapsed().as_secs_f64();
        if !report.finished {
            refuse!("the move in VG '{vg}' stopped before its end");
        }
        Ok(())
    }

    fn reload_vg(&self, vg: &str) -> Result<()> {
        self.reload_vg_with(vg, None)
    }

    /// Reloads every plain and raid LV of VG `vg` the daemon serves from the metadata as it
    /// is now (where the data lies, for a VG mid-move), one suspend and resume each; with
    /// `without`, the device of that name taken as itself rather than its stand-in.
    fn reload_vg_with(&self, vg: &str, without: Option<&str>) -> Result<()> {
        let mut volumes = self.lock();
        if let Some(path) = without {
            self.engine.overlay_device(path, None);
        }
        let scan = self.engine.scan_with(true)?;
        let Some(state) = scan.vg(vg) else {
            refuse!("VG '{vg}' is gone from the daemon's devices");
        };
        let state = settled_state(state)?;
        for volume in volumes.values_mut() {
            let Some(lv_ref) = volume.lv.as_ref().filter(|l| l.vg == vg) else {
                continue;
            };
            let Some(lv) =
                state.vg.lvs.iter().find(|l| {
                    l.id.to_string() == lv_ref.lv_id && (l.is_plain() || l.raid().is_some())
                })
            else {
                continue;
            };
            let device = &volume.device;
            device.suspend();
            let loaded = activate::load_lv(&scan, &state, &lv.name, device);
            let resumed = device.resume();
            loaded?;
            resumed?;
        }
        Ok(())
    }
}

/// Snapshots and thin pools are served through layers the online move does not reload
/// over its stand-in: their writes would reach only the source and be lost with it. Until
/// they are, such a VG is moved offline.
fn refuse_stacked_lvs(scan: &Scan, vg: &str) -> Result<()> {
    let Some(state) = scan.vg(vg) else {
        return Ok(());
    };
    let vg_meta = &state.vg;
    let stacked: Vec<&str> = vg_meta
        .lvs
        .iter()
        .filter(|l| {
            l.snapshot().is_some()
                || l.thin_pool().is_some()
                || l.thin().is_some()
                || vg_meta.is_origin(&l.name)
        })
        .map(|l| l.name.as_str())
        .collect();
    if !stacked.is_empty() {
        refuse!(
            "VG '{vg}' holds snapshots or thin volumes ({}); an online move does not carry \
             their writes yet: stop serving the VG and run `tessera pv move` offline",
            stacked.join(", ")
        );
    }
    Ok(())
}
