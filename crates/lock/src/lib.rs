//! Locking of shared volume groups, as lvm2's lvmlockd does it with sanlock: leases on the
//! shared storage itself (delta leases for host ids, disk-paxos leases for resources), held
//! through the sanlock daemon that runs on every host.
//!
//! [`sanlock`] speaks the daemon's Unix-socket protocol (what libsanlock_client sends);
//! [`ondisk`] reads the lease records the daemon writes, so that a host can say who holds
//! a lease without joining the lockspace.

pub mod ondisk;
pub mod sanlock;

pub use ondisk::{DeltaLease, LeaderRecord, LeaseOwners, OndiskError};
pub use sanlock::{Client, Disk, Lockspace, Registration, Resource, SanlockError};
