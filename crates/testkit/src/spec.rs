//! The specification's example YAML, verbatim, for tests and the demo (the backup read from
//! docs/specification.md itself).

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

/// docs/specification.md, the user's specification: its examples must work unchanged.
const SPECIFICATION: &str = include_str!("../../../docs/specification.md");

/// The first YAML example of the specification that holds `marker`, verbatim.
fn example(marker: &str) -> &'static str {
    SPECIFICATION
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(yaml, _)| yaml))
        .find(|yaml| yaml.contains(marker))
        .unwrap_or_else(|| panic!("docs/specification.md has no YAML example with {marker:?}"))
}

/// "2. Create TalosEtcdBackup Resource", read from the specification.
pub fn backup_yaml_verbatim() -> &'static str {
    example("kind: TalosEtcdBackup\n")
}

/// [`backup_yaml_verbatim`] named `name`, with `s3_fields` (lines indented six spaces, such as the
/// `endpoint:` and `insecureSkipTLSVerify:` of "Using S3-Compatible Storage") added under `s3:`.
pub fn backup_yaml(name: &str, s3_fields: &str) -> String {
    backup_yaml_verbatim()
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_backup_example_is_read_from_the_specification() {
        let yaml = super::backup_yaml_verbatim();
        assert!(yaml.starts_with("apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdBackup\n"), "{yaml}");
        assert!(yaml.ends_with("        key: secretAccessKey\n"), "{yaml}");
        assert!(super::backup_yaml("b", "").contains("  name: b\n"));
    }
}
