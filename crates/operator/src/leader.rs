//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does it:
//! the leader renews the Lease every retry period; another replica takes it over once it has seen no
//! renewal for the lease duration, judged by its own clock since it last saw the Lease change (so
//! clock skew between nodes does not matter). Only the leader runs the controller.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a Lease not renewed stays the holder's.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// Wait between tries to acquire or renew.
    pub retry_period: Duration,
}

/// Waits for the Lease, then runs `work` while holding it. Returns `work`'s result (releasing the
/// Lease, so a standby takes over at once), or an error as soon as the Lease is lost: the caller must
/// then stop, since another replica may already be leading. `ready` turns true once the Lease API
/// answered: a standby is ready too (it must not hold up a PodDisruptionBudget).
pub async fn run_while_leading(
    client: Client,
    settings: LeaseSettings,
    ready: Arc<AtomicBool>,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut elector = Elector { api: Api::namespaced(client, &settings.namespace), settings, observed: None, ready };
    elector.acquire().await;
    tracing::info!(lease = %elector.settings.name, identity = %elector.settings.identity, "leading");
    let result = tokio::select! {
        result = work => result,
        lost = elector.keep() => Err(lost),
    };
    if result.is_ok() {
        elector.release().await;
    }
    result
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<((String, Option<MicroTime>), Instant)>,
    ready: Arc<AtomicBool>,
}

impl Elector {
    async fn acquire(&mut self) {
        let mut waiting_for = String::new();
        loop {
            let attempt = self.try_acquire_or_renew().await;
            if attempt.is_ok() {
                self.ready.store(true, Ordering::SeqCst);
            }
            match attempt {
                Ok(Ok(())) => return,
                Ok(Err(holder)) if holder != waiting_for => {
                    tracing::info!(%holder, "another replica leads; standing by");
                    waiting_for = holder;
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read or take the leader Lease"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews until the Lease is lost; returns why.
    async fn keep(&mut self) -> anyhow::Error {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(Ok(())) => renewed = Instant::now(),
                Ok(Err(holder)) => return anyhow::anyhow!("leadership lost: the Lease is held by {holder:?}"),
                Err(e) if renewed.elapsed() >= self.settings.renew_deadline => {
                    return anyhow::anyhow!(
                        "leadership lost: the Lease could not be renewed for {:?} ({e})",
                        self.settings.renew_deadline
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease; retrying"),
            }
        }
    }

    /// Gives the Lease up so a standby need not wait for it to expire.
    async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.settings.identity.as_str()) {
                spec.holder_identity = None;
                let _ = self.api.replace(&self.settings.name, &PostParams::default(), &lease).await;
            }
        }
    }

    /// `Ok(Ok(()))`: this replica holds the Lease now. `Ok(Err(holder))`: another one does.
    async fn try_acquire_or_renew(&mut self) -> Result<Result<(), String>, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let me = &self.settings.identity;
        let duration_seconds = self.settings.lease_duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.settings.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return taken(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let seen = (holder.clone(), spec.renew_time.clone());
        if self.observed.as_ref().is_none_or(|(last, _)| *last != seen) {
            self.observed = Some((seen, Instant::now()));
        }
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_seconds).max(1) as u64);
        let unchanged_since = self.observed.as_ref().map_or_else(Instant::now, |(_, at)| *at);
        let expired = holder.is_empty() || unchanged_since.elapsed() >= held_for;
        if holder != *me && !expired {
            return Ok(Err(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != *me);
        let renewed = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: Some(me.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: if holder == *me { spec.acquire_time } else { Some(now.clone()) },
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..spec
            }),
        };
        // The replace names the resourceVersion read: if another replica wrote in between, it fails.
        taken(self.api.replace(&self.settings.name, &PostParams::default(), &renewed).await)
    }
}

/// A write of the Lease: done, lost to a concurrent writer (409), or failed.
fn taken(result: Result<Lease, kube::Error>) -> Result<Result<(), String>, kube::Error> {
    match result {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Err("another replica (concurrent write)".into())),
        Err(e) => Err(e),
    }
}
