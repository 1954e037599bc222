//! One backup attempt, whole, behind a small port: recovery of what an interrupted attempt left, the
//! intent recorded before any upload exists, the upload recorded before its first part, the stream,
//! the recovery kit. The caller keeps the [`Record`] durable ([`Journal`]): the controller in the
//! backup's status, the command line in memory (it aborts on a signal instead of crashing unseen).

use std::future::Future;

use teb_pipeline::{Storage, UploadRef};

use super::{
    BackupPlan, Outcome, Settings, adopt_interrupted, complete_with_kit, find_stored, first_free_key, prepare, stem,
    store_accounts,
};
use crate::Error;
use crate::catalog;

/// What an attempt has recorded: the key it writes to (before any upload exists there) and the uploads
/// it started and has not finished. What a crashed attempt saved is what the next one recovers from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<String>,
    pub uploads: Vec<UploadRef>,
}

/// Where an attempt keeps its [`Record`]. The attempt changes the record, then saves it where a crash
/// must find it: the intent before the upload is created, the upload before its first part. What it
/// changes afterwards (an upload completed or aborted) the caller saves with the attempt's result.
pub trait Journal: Send {
    fn record(&mut self) -> &mut Record;
    /// A new attempt begins (no interrupted attempt's snapshot was adopted), for the caller to count
    /// it; its intent is saved next.
    fn begin(&mut self) {}
    /// Makes the record durable; the attempt goes on only once it is.
    fn save(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The journal of a process that cannot crash unseen (the command line aborts on a signal): memory.
#[derive(Debug, Default)]
pub struct MemoryJournal(pub Record);

impl Journal for MemoryJournal {
    fn record(&mut self) -> &mut Record {
        &mut self.0
    }

    async fn save(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// What [`recover`] found of the last attempt.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The snapshot it stored whole (its upload completed, its result never recorded), for the next
    /// attempt to adopt ([`Attempt::run`]).
    pub interrupted: Option<Outcome>,
    /// Recorded uploads the store would not abort now: they stay recorded, to be tried again.
    pub not_aborted: Vec<(UploadRef, Error)>,
}

/// Clears what the last attempt left: aborts the uploads it recorded, and those at its key it started
/// but never recorded (found by listing: S3, GCS); finds the snapshot it stored whole, recognised as
/// `owner`'s (the command line has no owner, and never resumes). Saves the record when that changed it.
pub async fn recover(storage: &Storage, owner: Option<&str>, journal: &mut impl Journal) -> Result<Recovered, Error> {
    let before = journal.record().clone();
    let mut recovered = Recovered::default();
    if let (Some(key), Some(owner)) = (&before.key, owner) {
        match find_stored(storage, key, owner).await {
            Ok(found) => recovered.interrupted = found,
            Err(error) => tracing::warn!(%key, %error, "cannot look for an interrupted attempt's snapshot"),
        }
    }
    recovered.not_aborted = catalog::abort_uploads(storage, &before.uploads).await;
    journal.record().uploads = recovered.not_aborted.iter().map(|(upload, _)| upload.clone()).collect();
    if let Some(key) = &before.key {
        // Listing needs a permission a backup does not: without it, the bucket's lifecycle rule takes them.
        match catalog::abort_unrecorded(storage, key, &journal.record().uploads).await {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(?keys, "aborted uploads an interrupted attempt did not record")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%key, %error,
                "cannot list the unfinished uploads of an interrupted attempt: the bucket's lifecycle rule removes any"),
        }
    }
    if *journal.record() != before {
        journal.save().await?;
    }
    Ok(recovered)
}

/// One attempt's settings: what is backed up and how, and how keys are shared.
pub struct Attempt<'a> {
    pub plan: &'a BackupPlan,
    pub settings: &'a Settings,
    /// Grants a key's stem to this attempt ([`super::KeyClaims`] in the operator; any on the command line).
    pub claim: &'a (dyn Fn(&str) -> bool + Sync),
    pub progress: &'a (dyn Fn(u64) + Send + Sync),
}

impl Attempt<'_> {
    /// Adopts the `interrupted` attempt's snapshot when its kit is there or can be stored now; else
    /// stores a new backup at the first free key from `key` (a snapshot and the kit it is to have,
    /// or nothing). The record names the key before the upload exists, and the upload before its
    /// first part; the upload leaves it once completed or aborted.
    pub async fn run(
        &self,
        key: &str,
        interrupted: Option<Outcome>,
        journal: &mut impl Journal,
    ) -> Result<Outcome, Error> {
        let mut not_adopted = None;
        if let Some(outcome) = interrupted {
            let key = outcome.report.key.clone();
            match adopt_interrupted(self.plan, outcome).await {
                Ok(outcome) => return Ok(store_accounts(self.plan, outcome).await),
                // Not a backup without its kit: the snapshot is gone (unless locked); this attempt stores
                // both, under another key (a locked snapshot keeps its own).
                Err(error) => {
                    tracing::warn!(%key, %error, "the interrupted attempt's kit cannot be stored; backing up again");
                    not_adopted = Some(stem(&key).to_owned());
                }
            }
        }
        let claim = |candidate: &str| not_adopted.as_deref() != Some(candidate) && (self.claim)(candidate);
        let key = first_free_key(key, &claim)
            .ok_or_else(|| Error::Key(format!("no free key after {key}: 100 backups share its second")))?;
        journal.begin();
        journal.record().key = Some(key.clone());
        journal.save().await?;
        let prepared = prepare(self.plan, &key, self.settings).await?;
        let upload = prepared.upload.clone();
        journal.record().uploads.push(upload.clone());
        if let Err(error) = journal.save().await {
            prepared.abandon().await;
            journal.record().uploads.retain(|u| *u != upload);
            return Err(error);
        }
        let streamed = prepared.stream(self.progress).await;
        // Completed, or aborted by the pipeline; an abort the store refused stays recorded, to be retried.
        if streamed.is_ok() || self.plan.storage.abort_upload(&upload).await.is_ok() {
            journal.record().uploads.retain(|u| *u != upload);
        }
        let outcome = complete_with_kit(self.plan, streamed?).await?;
        Ok(store_accounts(self.plan, outcome).await)
    }
}
