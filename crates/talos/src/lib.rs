//! A client for the Talos machine API, limited to what an etcd backup needs: reading talosconfig files
//! and secrets bundles, minting a short-lived `os:etcd:backup` client certificate, choosing a healthy
//! etcd member and streaming its snapshot.

mod client;
mod config;
mod error;
mod mint;

pub use client::{
    ChosenNode, ETCD_DATA_PATH, MemberRole, RecoverPart, ServiceState, TalosClient, endpoint_host, url_host,
};
pub use config::{
    Credentials, SecretsBundle, TalosContext, Talosconfig, Target, gen_config_problems, normalize_key_pem,
};
pub use error::Error;
pub use mint::{MintedClient, mint_client_certificate};

/// Generated from the trimmed Talos protos in `proto/` (wire-compatible with apid).
pub mod proto {
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod common {
        tonic::include_proto!("common");
    }
    pub mod machine {
        tonic::include_proto!("machine");
    }
}

/// The port apid listens on.
pub const DEFAULT_PORT: u16 = 50000;

/// The only role the operator asks for: snapshot and etcd status, nothing else.
pub const ROLE_ETCD_BACKUP: &str = "os:etcd:backup";
/// The role EtcdRecover and Bootstrap need: a restore's client certificate carries it.
pub const ROLE_ADMIN: &str = "os:admin";
