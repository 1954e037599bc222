//! talos-etcd-backup: the controller, the one-shot `snapshot` command and the glue between the
//! Kubernetes-free crates (`teb-talos`, `teb-pipeline`) and Kubernetes.

pub mod controllers;
mod error;
pub mod finalizer;
pub mod health;
pub mod kit_files;
pub mod leader;
pub mod metrics;
pub mod resolve;

pub use error::{Error, isolate};
