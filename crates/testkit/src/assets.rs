//! Where the etcd, kube-apiserver and kube-controller-manager binaries come from: `KUBEBUILDER_ASSETS` (the envtest
//! convention), else the cache that `scripts/setup-test-assets.sh` fills (and runs to fill, once).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct Assets {
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    /// etcd 3.5's offline tool (`snapshot restore` / `status`, as Talos's recovery runs them).
    pub etcdutl: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

/// The binaries, setting them up on first use.
pub fn assets() -> anyhow::Result<&'static Assets> {
    static ASSETS: OnceLock<Result<Assets, String>> = OnceLock::new();
    ASSETS.get_or_init(|| locate().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn locate() -> anyhow::Result<Assets> {
    let dir = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(dir) if ["kube-apiserver", "kube-controller-manager"].iter().all(|b| Path::new(&dir).join(b).exists()) => {
            PathBuf::from(dir)
        }
        _ => run_setup_script()?,
    };
    let tool = |name: &str| {
        [dir.join(name), Path::new("/usr/bin").join(name)]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| anyhow::anyhow!("{name} not found in {} nor /usr/bin", dir.display()))
    };
    let etcd = dir.join("etcd");
    // Printed once per test binary: the test log says which etcd every restore ran on.
    if let Ok(output) = std::process::Command::new(&etcd).arg("--version").output() {
        let version = String::from_utf8_lossy(&output.stdout);
        eprintln!("teb-testkit: {}", version.lines().next().unwrap_or("etcd version unknown"));
    }
    Ok(Assets {
        etcd,
        etcdctl: tool("etcdctl")?,
        etcdutl: tool("etcdutl")?,
        kube_apiserver: dir.join("kube-apiserver"),
        kube_controller_manager: dir.join("kube-controller-manager"),
    })
}

/// Azurite's blob service (`azurite-blob`), which the setup script installs with npm into its cache
/// folder, whatever `KUBEBUILDER_ASSETS` says.
pub fn azurite_blob() -> anyhow::Result<PathBuf> {
    let binary = cache_dir()?.join("azurite/node_modules/.bin/azurite-blob");
    if !binary.exists() {
        run_setup_script()?;
    }
    anyhow::ensure!(binary.exists(), "{} is missing after scripts/setup-test-assets.sh", binary.display());
    Ok(binary)
}

/// The setup script's cache folder, as it finds it.
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    Ok(match std::env::var_os("TEB_ASSETS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .ok_or_else(|| anyhow::anyhow!("neither TEB_ASSETS_CACHE, XDG_CACHE_HOME nor HOME is set"))?
            .join("talos-etcd-backup/assets"),
    })
}

pub(crate) fn run_setup_script() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup-test-assets.sh");
    let output = std::process::Command::new("bash").arg(&script).output()?;
    if !output.status.success() {
        anyhow::bail!(
            "{} failed ({}); set KUBEBUILDER_ASSETS to a folder holding etcd, kube-apiserver and kube-controller-manager instead:\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let dir = stdout.lines().last().unwrap_or_default().trim();
    anyhow::ensure!(!dir.is_empty(), "{} printed no folder", script.display());
    Ok(PathBuf::from(dir))
}
