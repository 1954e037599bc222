//! The TalosEtcdRestore controller: thin. It resolves the backup and the control plane (a client
//! certificate with os:admin), then runs [`teb_core::restore`], the same code as the `restore` command.
//! A restore runs once and is never retried by itself: Ready and Failed are final unless the spec
//! changes, and a restore interrupted by an operator restart is reported, not repeated blindly.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use teb_api::conditions::{self, Conditions, FAILED, Phase, READY, RESTORE_REASONS, Reason};
use teb_api::{RestoreMemberStatus, TalosEtcdBackup, TalosEtcdRestore, TalosEtcdRestoreStatus};
use teb_core::restore;
use teb_pipeline::{Identity, Storage};
use teb_talos::Target;

use super::{Context, now, patch_status};
use crate::Error;
use crate::resolve::Resolver;

/// What a reconcile of a restore does, decided from the object alone ([`decide`]).
#[derive(Debug, PartialEq)]
enum Step {
    /// Ready or Failed for this generation: final.
    Finished,
    /// Started for this generation but never finished: an operator restart cut it off.
    Interrupted,
    /// New, or its spec changed since it finished: restore.
    Run,
}

fn decide(restore: &TalosEtcdRestore) -> Step {
    let previous = restore.status.clone().unwrap_or_default();
    let this_generation = previous.observed_generation == restore.metadata.generation;
    let finished =
        conditions::is_true(&previous.conditions, READY) || conditions::is_true(&previous.conditions, FAILED);
    match (this_generation, finished, previous.start_time.is_some()) {
        (true, true, _) => Step::Finished,
        (true, false, true) => Step::Interrupted,
        _ => Step::Run,
    }
}

/// The longest `spec.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub(super) async fn reconcile(cached: Arc<TalosEtcdRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api = Api::<TalosEtcdRestore>::namespaced(ctx.client.clone(), &namespace);
    let Some(restore) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    match decide(&restore) {
        Step::Finished => return Ok(Action::await_change()),
        Step::Interrupted => {
            // What it did on the node is unknown.
            let message = "The operator restarted while this restore ran; it is not repeated by itself. Check etcd \
                           on the node (talosctl etcd status); to restore again, delete this TalosEtcdRestore and \
                           create it anew";
            let previous = restore.status.clone().unwrap_or_default();
            return fail(&api, &restore, &ctx, previous, conditions::RESTORE_FAILED, message.to_owned()).await;
        }
        Step::Run => {}
    }
    let generation = restore.metadata.generation;
    let mut status = TalosEtcdRestoreStatus { observed_generation: generation, ..Default::default() };
    status.start_time = Some(now());
    let result = crate::isolate(run(&api, &restore, &ctx, &mut status)).await;
    match result {
        Ok(()) => Ok(Action::await_change()),
        Err(error) if error.restore_refused().is_some() => {
            let message = error.restore_refused().unwrap_or_default().to_owned();
            fail(&api, &restore, &ctx, status, conditions::RESTORE_REFUSED, message).await
        }
        Err(error) => fail(&api, &restore, &ctx, status, conditions::RESTORE_FAILED, error.to_string()).await,
    }
}

async fn run(
    api: &Api<TalosEtcdRestore>,
    restore: &TalosEtcdRestore,
    ctx: &Context,
    status: &mut TalosEtcdRestoreStatus,
) -> Result<(), Error> {
    let wait = timeout(restore.spec.timeout.as_deref())?;
    let (talos, storage, key, identities) = resolve_restore(restore, ctx).await?;
    let settings = &ctx.config.settings;
    // Every control-plane node the control plane names (its endpoints, before spec.endpoints
    // replaces them, or its talosconfig's nodes) is checked before anything changes.
    let nodes: Vec<String> = if talos.nodes.is_empty() {
        talos.endpoints.iter().filter_map(|e| teb_talos::endpoint_host(e)).collect()
    } else {
        talos.nodes.clone()
    };
    let mut talos = talos;
    if !restore.spec.endpoints.is_empty() {
        talos.endpoints = restore.spec.endpoints.clone();
    }
    let node = restore.spec.node.as_deref();
    let checks =
        restore::Checks { nodes: &nodes, acknowledged_lost: &restore.spec.acknowledge_lost, identities: &identities };
    let (client, plan) = restore::plan(&talos, &storage, &key, node, &checks, settings).await?;
    status.node = Some(plan.node_label.clone());
    status.key = Some(key.clone());
    if plan.refusal().is_none() {
        let message = format!("Restoring {key} ({} bytes) onto node {}", plan.size, plan.node_label);
        set_phase(status, Phase::InProgress, &message);
        patch_status(api, &restore.name_any(), status).await?;
        ctx.event(restore, EventType::Normal, "RestoreStarted", message).await;
    }
    if plan.format.age && identities.is_empty() {
        return Err(Error::Spec(format!(
            "{key} is encrypted with age: set spec.decryption.age.identitySecretRef to a Secret key holding the \
             AGE-SECRET-KEY-1… of one of its recipients"
        )));
    }
    let restored = restore::restore(&client, &plan, &storage, &identities, settings, wait, &|_| {}).await?;
    status.sha256 = Some(restored.checked.sha256.clone());
    status.size = Some(restored.checked.size as i64);
    status.member_id = Some(format!("{:x}", restored.member_id));
    status.members = restored.others.iter().map(member_status).collect();
    status.completion_time = Some(now());
    let joined = restored.others.iter().filter(|n| matches!(n.state, restore::MemberState::Joined { .. })).count();
    let message = format!(
        "Restored {key} ({} bytes, SHA-256 verified) onto node {}: etcd member {:x} is up ({:.1} s); {joined} of {} \
         other control-plane nodes joined (status.members)",
        restored.checked.size,
        plan.node_label,
        restored.member_id,
        restored.seconds,
        restored.others.len()
    );
    set_phase(status, Phase::Succeeded, &message);
    patch_status(api, &restore.name_any(), status).await?;
    tracing::info!(name = %restore.name_any(), %key, node = %plan.node_label, "restore succeeded");
    ctx.event(restore, EventType::Normal, "RestoreSucceeded", message).await;
    // Nodes whose etcd gave up (or still waits) need a hand: say which, with the command.
    let stuck: Vec<String> = restored
        .others
        .iter()
        .filter(|n| matches!(n.state, restore::MemberState::Failed { .. } | restore::MemberState::Waiting { .. }))
        .filter_map(|n| n.advice().map(|advice| format!("{}: {advice}", n.node)))
        .collect();
    if !stuck.is_empty() {
        ctx.event(restore, EventType::Warning, "MembersNotJoined", stuck.join("; ")).await;
    }
    Ok(())
}

/// `spec.timeout` (the schema admits hours, minutes and seconds only), or `None` for the default.
fn timeout(spec: Option<&str>) -> Result<Option<Duration>, Error> {
    let Some(text) = spec else { return Ok(None) };
    let invalid =
        |why: &str| Error::Spec(format!("spec.timeout {text:?} {why}: write it like 20m or 1h30m, at most 24h"));
    let signed: jiff::SignedDuration = text.parse().map_err(|_| invalid("is not a duration"))?;
    let wait = Duration::try_from(signed).map_err(|_| invalid("is negative"))?;
    if wait.is_zero() || wait > MAX_TIMEOUT {
        return Err(invalid("is out of range"));
    }
    Ok(Some(wait))
}

fn member_status(node: &restore::NodeAfter) -> RestoreMemberStatus {
    let member_id = match node.state {
        restore::MemberState::Joined { member_id } | restore::MemberState::Joining { member_id } => {
            Some(format!("{member_id:x}"))
        }
        _ => None,
    };
    RestoreMemberStatus {
        node: node.node.clone(),
        member: node.member.clone(),
        state: node.state.label().to_owned(),
        member_id,
        message: node.advice(),
    }
}

/// The Talos target (a client certificate with os:admin), the bucket, the key to restore and the age
/// identities that decrypt it: `spec.decryption`'s, else those the named backup verifies with.
async fn resolve_restore(
    restore: &TalosEtcdRestore,
    ctx: &Context,
) -> Result<(Target, Storage, String, Vec<Identity>), Error> {
    let namespace = restore.namespace().unwrap_or_default();
    let mut resolver = Resolver::new(&ctx.client, &namespace, ctx.config.settings.request_timeout);
    let spec = &restore.spec;
    let mut identity = spec.decryption.as_ref().map(|d| d.age.identity_secret_ref.clone());
    let (storage, key) = match (&spec.backup_ref, &spec.backup_storage, &spec.key) {
        (Some(reference), None, None) => {
            let backup = Api::<TalosEtcdBackup>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&reference.name)
                .await?
                .ok_or_else(|| {
                    Error::Spec(format!("spec.backupRef: TalosEtcdBackup {:?} not found", reference.name))
                })?;
            let verifying = backup.spec.encryption.as_ref().and_then(|e| e.age.identity_secret_ref.clone());
            identity = identity.or(verifying);
            let status = backup.status.unwrap_or_default();
            let key = status.filename.filter(|_| conditions::is_true(&status.conditions, READY)).ok_or_else(|| {
                Error::Spec(format!("spec.backupRef: TalosEtcdBackup {:?} is not Ready", reference.name))
            })?;
            (backup.spec.backup_storage, key)
        }
        (None, Some(storage), Some(key)) => (storage.clone(), key.clone()),
        _ => {
            return Err(Error::Spec(
                "set spec.backupRef (a TalosEtcdBackup), or spec.backupStorage and spec.key, not both".into(),
            ));
        }
    };
    let talos = resolver
        .talos(
            &spec.talos_control_plane_ref.name,
            spec.talosconfig_secret_ref.as_ref(),
            ctx.config.cert_validity,
            teb_talos::ROLE_ADMIN,
        )
        .await?;
    let storage = resolver.storage(&storage, "spec.").await?;
    let identities = match &identity {
        Some(reference) => {
            let path = "spec.decryption.age.identitySecretRef";
            teb_api::validate::object_name(&reference.name).map_err(|r| Error::Spec(format!("{path}.name: {r}")))?;
            teb_api::validate::secret_key(&reference.key).map_err(|r| Error::Spec(format!("{path}.key: {r}")))?;
            resolver.identities(reference).await?
        }
        None => Vec::new(),
    };
    Ok((talos, storage, key, identities))
}

async fn fail(
    api: &Api<TalosEtcdRestore>,
    restore: &TalosEtcdRestore,
    ctx: &Context,
    mut status: TalosEtcdRestoreStatus,
    reason: Reason,
    message: String,
) -> Result<Action, Error> {
    status.completion_time = Some(now());
    status.observed_generation = restore.metadata.generation;
    set_phase(&mut status, Phase::Failed(reason), &message);
    patch_status(api, &restore.name_any(), &status).await?;
    tracing::warn!(name = %restore.name_any(), %message, "restore failed");
    ctx.event(restore, EventType::Warning, reason.as_str(), message).await;
    Ok(Action::await_change())
}

fn set_phase(status: &mut TalosEtcdRestoreStatus, phase: Phase, message: &str) {
    let generation = status.observed_generation;
    Conditions::new(&mut status.conditions, generation, now()).set_phase(phase, &RESTORE_REASONS, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A restore of generation `generation` whose status describes `observed`: started or not, in
    /// `phase`.
    fn restore(generation: i64, observed: i64, started: bool, phase: Option<Phase>) -> TalosEtcdRestore {
        let spec = serde_json::json!({"talosControlPlaneRef": {"name": "cp"}, "backupRef": {"name": "b"}});
        let mut restore = TalosEtcdRestore::new("r", serde_json::from_value(spec).unwrap());
        restore.metadata.generation = Some(generation);
        let mut status = TalosEtcdRestoreStatus { observed_generation: Some(observed), ..Default::default() };
        status.start_time = started.then_some(Time(jiff::Timestamp::UNIX_EPOCH));
        if let Some(phase) = phase {
            let at = Time(jiff::Timestamp::UNIX_EPOCH);
            Conditions::new(&mut status.conditions, Some(observed), at).set_phase(phase, &RESTORE_REASONS, "m");
        }
        restore.status = Some(status);
        restore
    }

    #[test]
    fn the_timeout_is_checked() {
        assert_eq!(timeout(None).unwrap(), None);
        assert_eq!(timeout(Some("1h30m")).unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(timeout(Some("90s")).unwrap(), Some(Duration::from_secs(90)));
        for bad in ["0s", "25h", "5x"] {
            let error = timeout(Some(bad)).unwrap_err().to_string();
            assert!(error.contains("spec.timeout") && error.contains("1h30m"), "{bad}: {error}");
        }
    }

    #[test]
    fn decide_covers_every_state() {
        let failed = Some(Phase::Failed(conditions::RESTORE_FAILED));
        let refused = Some(Phase::Failed(conditions::RESTORE_REFUSED));
        // New: run. A restore is never retried by itself: Ready and Failed are final for their generation.
        assert_eq!(decide(&restore(1, 0, false, None)), Step::Run);
        assert_eq!(decide(&restore(1, 1, false, None)), Step::Run);
        for phase in [Some(Phase::Succeeded), failed, refused] {
            assert_eq!(decide(&restore(1, 1, true, phase)), Step::Finished, "{phase:?}");
            // A changed spec runs again.
            assert_eq!(decide(&restore(2, 1, true, phase)), Step::Run, "{phase:?}");
        }
        // Started and never finished: a restart cut it off, reported rather than repeated.
        assert_eq!(decide(&restore(1, 1, true, None)), Step::Interrupted);
        assert_eq!(decide(&restore(1, 1, true, Some(Phase::InProgress))), Step::Interrupted);
        assert_eq!(decide(&restore(2, 1, true, Some(Phase::InProgress))), Step::Run);
    }
}
