//! The use cases of talos-etcd-backup, with no Kubernetes in them: back up ([`backup`]), list,
//! verify and delete ([`catalog`]), restore ([`restore`]), and the recovery kit kept with each
//! backup ([`kit`]). Each takes plain values and a
//! [`Storage`](teb_pipeline::Storage) handle built once by its caller, and returns a report or an
//! [`Error`]. The command line and the controllers call the same functions.

pub mod backup;
pub mod catalog;
mod error;
pub mod kit;
pub mod restore;

pub use backup::{BackupPlan, KEY_PREFIX, KitSource, Outcome, Settings};
pub use error::Error;
