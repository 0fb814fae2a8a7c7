//! dmsetup's verbs on the daemon's mapped devices, and how a device leaves service.

use super::*;

impl Daemon {
    pub(super) fn dm(&self, request: Request) -> Result<Reply> {
        let mut volumes = self.lock();
        let get = |volumes: &BTreeMap<String, Volume>, name: &str| {
            volumes.get(name).map(|v| v.device.clone()).ok_or_else(|| {
                DaemonError::Refused(format!(
                    "no mapped device '{name}' (tessera dm ls lists them)"
                ))
            })
        };
        // The layers under served devices (a snapshot stack's, a thin pool's) answer the
        // verbs that leave them running: table, status and message.
        let get_any = |volumes: &BTreeMap<String, Volume>, name: &str| {
            get(volumes, name).or_else(|e| {
                volumes
                    .values()
                    .flat_map(|v| v.layers.iter())
                    .chain(self.pools().values().flat_map(|p| p.layers()))
                    .find(|l| l.name() == name)
                    .cloned()
                    .ok_or(e)
            })
        };
        match request {
            Request::DmLs => {
                let mut text = String::new();
                let mut list = Vec::new();
                for (name, v) in volumes.iter() {
                    let state = if v.device.is_suspended() {
                        "suspended"
                    } else {
                        "live"
                    };
                    let size = v.device.size_sectors();
                    text.push_str(&format!(
                        "{name}\t({size} sectors, {state}, export {})\n",
                        v.export
                    ));
                    list.push(json!({
                        "name": name, "size_sectors": size, "state": state,
                        "export": v.export,
                    }));
                }
                if text.is_empty() {
                    text.push_str("No devices found\n");
                }
                Ok(Reply::ok(text, json!(list)))
            }
            Request::DmCreate { name, table } => {
                check_device_name(&name)?;
                if volumes.contains_key(&name) || self.exports.get(&name).is_some() {
                    refuse!("a device or export named '{name}' exists already");
                }
                let table = parse_table(&name, &table)?;
                let device = Arc::new(MappedDevice::new(name.clone(), self.registry.clone()));
                device.load(&table, &|arg| self.resolve(&volumes, &name, arg))?;
                device.resume()?;
                let size = device.size_sectors();
                self.serve(
                    &mut volumes,
                    name.clone(),
                    format!("mapped device {name}"),
                    Volume {
                        device,
                        export: name.clone(),
                        lv: None,
                        records: None,
                        read_only: self.read_only,
                        claim: None,
                        layers: Vec::new(),
                    },
                )?;
                Ok(Reply::ok(
                    format!("Created {name} ({size} sectors), exported as {name}\n"),
                    json!({"name": name, "size_sectors": size}),
                ))
            }
            Request::DmLoad { name, table } => {
                let device = get(&volumes, &name)?;
                let table = parse_table(&name, &table)?;
                device.load(&table, &|arg| self.resolve(&volumes, &name, arg))?;
                Ok(Reply::ok(
                    format!("Loaded an inactive table into {name}; resume makes it live\n"),
                    json!(null),
                ))
            }
            Request::DmSuspend { name } => {
                get(&volumes, &name)?.suspend();
                Ok(Reply::ok("", json!(null)))
            }
            Request::DmResume { name } => {
                let device = get(&volumes, &name)?;
                device.resume()?;
                Ok(Reply::ok(
                    "",
                    json!({"size_sectors": device.size_sectors()}),
                ))
            }
            Request::DmRemove { name } => {
                let device = get(&volumes, &name)?;
                if let Some(user) = volumes.iter().find(|(other, v)| {
                    *other != &name
                        && v.device.table().is_some_and(|t| {
                            t.rows().iter().any(|r| names_device(&r.args(), &name))
                        })
                }) {
                    refuse!("{name} is in use by the table of {}", user.0);
                }
                let volume = volumes.remove(&name).expect("present");
                self.exports.remove(&volume.export);
                retire(&device);
                Ok(Reply::ok("", json!(null)))
            }
            Request::DmTable { name, inactive } => {
                let device = get_any(&volumes, &name)?;
                let table = if inactive {
                    device.inactive_table()
                } else {
                    device.table()
                };
                let text = table.map(|t| t.to_string()).unwrap_or_default();
                Ok(Reply::ok(text.clone(), json!(text)))
            }
            Request::DmStatus { name } => {
                let status = get_any(&volumes, &name)?.status();
                Ok(Reply::ok(status.clone(), json!(status)))
            }
            Request::DmMessage {
                name,
                sector,
                message,
            } => {
                let device = get_any(&volumes, &name)?;
                let args: Vec<&str> = message.iter().map(String::as_str).collect();
                let answer = device.message(sector, &args)?;
                Ok(Reply::ok(answer.clone(), json!(answer)))
            }
            Request::Version
            | Request::Lv(_)
            | Request::Serves { .. }
            | Request::MdAssemble { .. }
            | Request::MdStop { .. }
            | Request::MdReload { .. }
            | Request::LuksOpen { .. }
            | Request::LuksClose { .. }
            | Request::Show
            | Request::PvMove { .. }
            | Request::PvMoveStatus { .. } => {
                unreachable!("handled by the caller")
            }
        }
    }

    /// A table argument as a device: a mapped device of this daemon by name (or
    /// /dev/mapper/NAME), else a file or block device path.
    pub(super) fn resolve(
        &self,
        volumes: &BTreeMap<String, Volume>,
        loading: &str,
        arg: &str,
    ) -> Result<SharedDevice, BlockError> {
        let name = arg.strip_prefix("/dev/mapper/").unwrap_or(arg);
        if name == loading {
            return Err(BlockError::Open {
                device: arg.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a device cannot map onto itself",
                ),
            });
        }
        if let Some(v) = volumes.get(name) {
            return Ok(v.device.clone());
        }
        let device = FileDevice::open(
            arg,
            OpenOptions {
                read_only: self.read_only,
                ..OpenOptions::default()
            },
        )?;
        Ok(Arc::new(device))
    }
}

/// Points a device that leaves service at the error target: clients that still hold it
/// get I/O errors instead of writing into extents the VG may give to another LV.
pub(super) fn retire(device: &MappedDevice) {
    device.suspend();
    let size = device.size_sectors().max(1);
    if let Ok(table) = Table::parse(&format!("0 {size} error")) {
        let _ = device.load(&table, &|arg| {
            Err(BlockError::Open {
                device: arg.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no devices"),
            })
        });
    }
    let _ = device.resume();
}

pub(super) fn parse_table(name: &str, text: &str) -> Result<Table> {
    Table::parse(text).map_err(|e| DaemonError::Refused(format!("table for {name}: {e}")))
}

/// Whether a table row's arguments name the device `name`.
pub(super) fn names_device(args: &[String], name: &str) -> bool {
    args.iter()
        .any(|a| a == name || a.strip_prefix("/dev/mapper/") == Some(name))
}

/// Device names as device-mapper takes them: 1 to 127 bytes, printable, no '/'.
pub(super) fn check_device_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 127 {
        refuse!("device name '{name}' must be 1 to 127 bytes long");
    }
    if name == "." || name == ".." {
        refuse!("'{name}' cannot name a device");
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || c.is_control() || c.is_whitespace())
    {
        refuse!("device name '{name}' holds {c:?}; names are printable, without '/' or blanks");
    }
    Ok(())
}
