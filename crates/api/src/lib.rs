//! Custom resource types of talos-etcd-backup (group `talos.alperen.cloud`, version `v1alpha1`) and the
//! helpers that keep their status conditions consistent. No I/O lives here.

mod backup;
pub mod conditions;
mod controlplane;
mod restore;
mod schedule;
pub mod validate;

pub use backup::{
    AgeEncryption, AzureStorage, Backend, BackupContents, BackupStorage, Compression, DNS_SUBDOMAIN, DeletionPolicy,
    Encryption, GcsStorage, ObjectLock, ObjectLockMode, RecoveryKitPolicy, ResourceObjects, S3ChecksumAlgorithm,
    S3Storage, SECRET_KEY, SecretKeyRef, TalosControlPlaneRef, TalosEtcdBackup, TalosEtcdBackupSpec,
    TalosEtcdBackupStatus, UploadRecord,
};
pub use controlplane::{BundleConfig, TalosControlPlane, TalosControlPlaneSpec, TalosControlPlaneStatus};
pub use restore::{
    AgeDecryption, BackupRef, Decryption, RestoreMemberStatus, TalosEtcdRestore, TalosEtcdRestoreSpec,
    TalosEtcdRestoreStatus,
};
pub use schedule::{
    BackupTemplate, ConcurrencyPolicy, IMPORTED_LABEL, SCHEDULE_LABEL, SCHEDULE_UID_ANNOTATION,
    SCHEDULED_AT_ANNOTATION, TalosEtcdBackupSchedule, TalosEtcdBackupScheduleSpec, TalosEtcdBackupScheduleStatus,
};

/// The CRDs of this project as one multi-document YAML stream, as `talos-etcd-backup crds` prints it.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    [TalosEtcdBackup::crd(), TalosEtcdBackupSchedule::crd(), TalosEtcdRestore::crd(), TalosControlPlane::crd()]
        .iter()
        .map(|crd| {
            let yaml = serde_yaml::to_string(crd).expect("CRD types always serialize");
            format!("---\n{yaml}")
        })
        .collect()
}
