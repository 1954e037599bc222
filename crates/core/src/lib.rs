//! The use cases of talos-etcd-backup, with no Kubernetes in them: back up ([`backup`]), list,
//! verify and delete ([`catalog`]), restore ([`restore`]), the recovery kit kept with each
//! backup ([`kit`]), an offline reader of a snapshot's database ([`etcd_db`]), what it finds inside
//! ([`report`]) and the keys one by one ([`objects`]). Each takes plain values and a
//! [`Storage`](teb_pipeline::Storage) handle built once by its caller, and returns a report or an
//! [`Error`]. The command line and the controllers call the same functions.

pub mod backup;
pub mod catalog;
mod error;
pub mod etcd_db;
pub mod kit;
pub mod kube_object;
pub mod manifest;
pub mod objects;
pub mod report;
pub mod restore;

pub use backup::{BackupPlan, KEY_PREFIX, KitSource, Outcome, Settings};
pub use error::Error;
