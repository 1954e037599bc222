//! The specification's example YAML, verbatim, for tests and the demo.

/// The region of the specification's example bucket: the test S3 server creates `my-etcd-backups`
/// there, and refuses requests signed for another region as AWS does.
pub const SPEC_REGION: &str = "us-west-2";

/// "1. Create S3 Credentials Secret". The test S3 server accepts exactly these keys.
pub const SECRET_YAML: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: my-s3-credentials
  namespace: default
type: Opaque
stringData:
  accessKeyID: "YOUR_ACCESS_KEY_ID"
  secretAccessKey: "YOUR_SECRET_ACCESS_KEY"
"#;

/// "2. Create TalosEtcdBackup Resource".
pub const BACKUP_YAML: &str = r#"apiVersion: talos.alperen.cloud/v1alpha1
kind: TalosEtcdBackup
metadata:
  name: my-backup
spec:
  talosControlPlaneRef:
    name: my-controlplane
  backupStorage:
    s3:
      bucket: my-etcd-backups
      region: us-west-2
      accessKeyID:
        name: my-s3-credentials
        key: accessKeyID
      secretAccessKey:
        name: my-s3-credentials
        key: secretAccessKey
"#;

/// [`BACKUP_YAML`] named `name`, with `s3_fields` (lines indented six spaces, such as the
/// `endpoint:` and `insecureSkipTLSVerify:` of "Using S3-Compatible Storage") added under `s3:`.
pub fn backup_yaml(name: &str, s3_fields: &str) -> String {
    BACKUP_YAML
        .replace("name: my-backup", &format!("name: {name}"))
        .replace("      region: us-west-2\n", &format!("      region: us-west-2\n{s3_fields}"))
}

/// The `endpoint:` line of "Using S3-Compatible Storage".
pub fn endpoint_field(endpoint: &str) -> String {
    format!("      endpoint: {endpoint}\n")
}

/// A TalosEtcdBackupSchedule as the upstream operator documents it, verbatim: it must apply and run
/// unchanged.
pub const SCHEDULE_YAML: &str = r#"apiVersion: talos.alperen.cloud/v1alpha1
kind: TalosEtcdBackupSchedule
metadata:
  name: daily-backup
spec:
  schedule: "0 2 * * *"
  retention: 7
  paused: false
  backupTemplate:
    spec:
      talosControlPlaneRef:
        name: my-controlplane
      backupStorage:
        s3:
          bucket: my-etcd-backups
          region: us-west-2
          accessKeyID:
            name: my-s3-credentials
            key: accessKeyID
          secretAccessKey:
            name: my-s3-credentials
            key: secretAccessKey
"#;

/// [`SCHEDULE_YAML`] named `name`, running on `schedule`, with `spec_fields` (lines indented two
/// spaces) added to the spec and `s3_fields` (indented ten) under the template's `s3:`.
pub fn schedule_yaml(name: &str, schedule: &str, spec_fields: &str, s3_fields: &str) -> String {
    SCHEDULE_YAML
        .replace("name: daily-backup", &format!("name: {name}"))
        .replace("  schedule: \"0 2 * * *\"\n", &format!("  schedule: \"{schedule}\"\n{spec_fields}"))
        .replace("          region: us-west-2\n", &format!("          region: us-west-2\n{s3_fields}"))
}
