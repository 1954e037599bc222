//! TalosEtcdBackupSchedule: runs on time, retention, concurrency, upstream YAML, and deletions that
//! never cascade to a snapshot.

use super::*;
use kube::ResourceExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_on_time_prunes_to_retention_caps_failures_and_pauses() {
    let scenario = Scenario::one_control_plane("e2e-schedule").await;
    scenario.apply(&scenario.schedule_yaml("every4s", "@every 4s", "")).await;
    // Keep 2; the upstream `retention` field.
    let patch = serde_json::json!({"spec": {"retention": 2}});
    scenario.schedules().patch("every4s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // Its template names a control plane that does not exist: every backup fails.
    let failing = scenario.schedule_yaml("failing", "@every 3s", "  failedBackupsHistoryLimit: 2\n");
    scenario.apply(&failing.replace("name: my-controlplane", "name: no-such-controlplane")).await;

    // Runs on time: each backup is created within 2 s of its scheduled time, 4 s apart.
    let mut seen: std::collections::BTreeMap<String, (jiff::Timestamp, jiff::Timestamp)> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let schedule_uid = scenario.schedules().get("every4s").await.unwrap().metadata.uid.unwrap();
    while seen.len() < 5 {
        for b in scenario.backups_of("every4s").await {
            let created = b.metadata.creation_timestamp.as_ref().unwrap().0;
            seen.entry(b.metadata.name.clone().unwrap()).or_insert((scheduled_at(&b), created));
            assert_eq!(
                b.spec.deletion_policy,
                Some(teb_api::DeletionPolicy::Delete),
                "schedules' backups go with their objects"
            );
            // Grouped by label and the schedule's UID, never owned: no cascade may reach them.
            assert!(b.metadata.owner_references.is_none(), "{:?}", b.metadata.owner_references);
            assert_eq!(b.metadata.annotations.as_ref().unwrap()[SCHEDULE_UID_ANNOTATION], schedule_uid);
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} runs in 60 s: {seen:?}", seen.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let times: Vec<jiff::Timestamp> = seen.values().map(|(at, _)| *at).collect();
    for (name, (at, created)) in &seen {
        assert_eq!(name, &format!("every4s-{}", at.strftime("%Y%m%d%H%M%S")));
        let late = created.duration_since(*at).as_secs_f64();
        assert!((-1.0..=2.0).contains(&late), "{name} created {late} s after its time");
    }
    for pair in times.windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]).as_secs(), 4, "{times:?}");
    }

    // Retention: 2 Ready backups stay (plus at most one running); the pruned ones' objects are gone,
    // the kept ones' are intact.
    let kept = scenario
        .eventually(30, "retention to prune to 2", || async {
            let list = scenario.backups_of("every4s").await;
            let ready: Vec<TalosEtcdBackup> = list.iter().filter(|b| is_ready(b)).cloned().collect();
            let others = list.len() - ready.len();
            (ready.len() == 2 && others <= 1 && seen.len() >= 5).then_some(ready)
        })
        .await;
    for b in &kept {
        let status = b.status.as_ref().unwrap();
        let key = status.filename.clone().unwrap();
        let (bytes, _) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
        assert_eq!(bytes.len() as i64, status.size.unwrap());
        let sha = hex::encode(sha2::Sha256::digest(&bytes[..bytes.len() - 32]));
        assert_eq!(Some(sha.as_str()), status.sha256.as_deref(), "kept snapshot {key} changed");
    }
    scenario
        .eventually(30, "the bucket to hold exactly the live backups' objects", || async {
            let keys = |list: Vec<TalosEtcdBackup>| -> Vec<String> {
                list.into_iter().filter_map(|b| b.status).flat_map(|s| teb_testkit::backup_objects(&s)).collect()
            };
            let before = keys(scenario.backups_of("every4s").await);
            let mut objects: Vec<String> =
                scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
            let after = keys(scenario.backups_of("every4s").await);
            objects.sort();
            let mut live = before.clone();
            live.sort();
            (before == after && objects == live).then_some(())
        })
        .await;
    let status = scenario.schedule_status("every4s").await;
    assert!(kept.iter().any(|b| b.metadata.name == status.last_successful_backup), "{status:?}");
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "ScheduleActive".into()));
    assert_eq!(schedule_condition(&status, teb_api::conditions::STALE), ("False".into(), "RecentBackup".into()));
    let (last, next) = (status.last_schedule_time.unwrap().0, status.next_schedule_time.unwrap().0);
    assert_eq!(next.duration_since(last).as_secs(), 4);

    // Failed backups are capped at failedBackupsHistoryLimit, and the schedule goes stale.
    let failing = scenario
        .eventually(30, "failed backups capped and the schedule stale", || async {
            let list = scenario.backups_of("failing").await;
            let status = scenario.schedule_status("failing").await;
            let stale = status.conditions.iter().any(|c| c.type_ == "Stale" && c.status == "True");
            let created = status.last_schedule_time.is_some();
            (stale && created && list.iter().filter(|b| is_failed(b)).count() == 2 && list.len() <= 3).then_some(status)
        })
        .await;
    assert_eq!(schedule_condition(&failing, teb_api::conditions::STALE), ("True".into(), "NoRecentBackup".into()));

    // Paused: no new backups, no next time.
    let patch = serde_json::json!({"spec": {"paused": true}});
    scenario.schedules().patch("every4s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let paused_at = jiff::Timestamp::now();
    let status = scenario
        .eventually(10, "the pause to show", || async {
            let status = scenario.schedule_status("every4s").await;
            (status.next_schedule_time.is_none()).then_some(status)
        })
        .await;
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "SchedulePaused".into()));
    tokio::time::sleep(Duration::from_secs(9)).await;
    let after: Vec<TalosEtcdBackup> =
        scenario.backups_of("every4s").await.into_iter().filter(|b| scheduled_at(b) > paused_at).collect();
    assert!(after.is_empty(), "backups created while paused: {after:?}");

    let text = scrape(scenario.metrics.clone()).await;
    let count = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    assert!(count("teb_schedule_runs_total{outcome=\"created\"}") >= 9, "{text}");
    assert!(count("teb_backups_pruned_total") >= 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_loses_its_objects_is_flagged_and_its_last_good_backup_kept() {
    let scenario = Scenario::one_control_plane("e2e-dropped").await;
    for i in 0..400 {
        let key = format!("/registry/configmaps/team-a/cm-{i}");
        scenario.emulator.etcd().put(key.as_bytes(), b"{}").await.unwrap();
    }
    scenario.apply(&scenario.schedule_yaml("every3s", "@every 3s", "")).await;
    let patch = serde_json::json!({"spec": {"retention": 2}});
    scenario.schedules().patch("every3s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let objects = |b: &TalosEtcdBackup| b.status.as_ref().and_then(|s| s.contents.as_ref()).map_or(0, |c| c.objects);
    let flagged = |b: &TalosEtcdBackup| {
        b.status
            .as_ref()
            .is_some_and(|s| teb_api::conditions::is_true(&s.conditions, teb_api::conditions::OBJECTS_DROPPED))
    };
    // Good backups first: each counts the 400 ConfigMaps (and what the emulator's etcd holds besides).
    let good = scenario
        .eventually(30, "two good backups", || async {
            let ready: Vec<TalosEtcdBackup> =
                scenario.backups_of("every3s").await.into_iter().filter(|b| is_ready(b) && objects(b) >= 400).collect();
            (ready.len() >= 2).then(|| ready.into_iter().max_by_key(scheduled_at).unwrap())
        })
        .await;
    assert!(!flagged(&good), "{:?}", good.status);

    // The control plane loses its objects: backups from now on are flagged, and however many come,
    // retention keeps the last good one (the newest good backup when the deletion happened, or one
    // taken while it was under way).
    assert_eq!(scenario.emulator.etcd().delete_prefix("/registry/configmaps/").unwrap(), 400);
    let (kept, suspects) = scenario
        .eventually(60, "three flagged backups, retention at work", || async {
            let ready: Vec<TalosEtcdBackup> =
                scenario.backups_of("every3s").await.into_iter().filter(is_ready).collect();
            let (suspects, good): (Vec<_>, Vec<_>) = ready.into_iter().partition(|b| flagged(b));
            let pruned_past_good = suspects.len() >= 2 && good.len() == 1;
            let seen = scenario.schedule_status("every3s").await.last_schedule_time.is_some();
            (seen && pruned_past_good && suspects.iter().all(|b| objects(b) < 400)).then_some((good, suspects))
        })
        .await;
    let kept = &kept[0];
    assert!(objects(kept) >= 400, "the kept one is good: {:?}", kept.status);
    assert!(scheduled_at(kept) >= scheduled_at(&good));
    let message = |b: &TalosEtcdBackup| {
        let status = b.status.as_ref().unwrap();
        status.conditions.iter().find(|c| c.type_ == teb_api::conditions::OBJECTS_DROPPED).unwrap().message.clone()
    };
    for suspect in &suspects {
        let text = message(suspect);
        assert!(text.contains(&format!("holds {} Kubernetes objects", objects(suspect))), "{text}");
        assert!(text.contains("fewer than 50% of the"), "{text}");
    }
    // Its snapshot is intact in the bucket.
    scenario.assert_stored(&teb_testkit::backup_objects(kept.status.as_ref().unwrap())).await;

    // The Warning event names both counts; the metric counts the flagged backups.
    let events: Api<Event> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let warnings: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ObjectsDropped"))
        .filter_map(|e| e.note)
        .collect();
    assert!(!warnings.is_empty());
    assert!(warnings.iter().all(|w| w.contains(" Kubernetes objects, fewer than 50% of the ")), "{warnings:?}");
    let text = scrape(scenario.metrics.clone()).await;
    let line = text.lines().find(|l| l.starts_with("teb_backups_objects_dropped_total{")).unwrap_or_default();
    let dropped: u64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(dropped >= 2, "{text}");
    assert!(text.contains("teb_backup_objects{"), "{text}");
    eprintln!(
        "kept {} ({} objects); flagged: {:?}",
        kept.name_any(),
        objects(kept),
        suspects.iter().map(|b| (b.name_any(), objects(b))).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_runs_while_one_is_running_and_a_restart_takes_one_missed_run() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let mut scenario = Scenario::start_with("e2e-forbid", options, false, test_config()).await;
    for i in 0..64 {
        scenario
            .emulator
            .etcd()
            .put(format!("/registry/configmaps/big-{i}").as_bytes(), &[b'x'; 16 * 1024])
            .await
            .unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    // A backup takes about 8 s at 150 kB/s; the schedule fires every 2 s.
    scenario.emulator.faults.limit_bandwidth(150_000);
    scenario.apply(&scenario.schedule_yaml("slow", "@every 2s", "")).await;
    let done = scenario
        .eventually(60, "two slow backups to finish", || async {
            let list = scenario.backups_of("slow").await;
            let running = list.iter().filter(|b| !is_ready(b) && !is_failed(b)).count();
            assert!(running <= 1, "Forbid let {running} backups run at once");
            (list.iter().filter(|b| is_ready(b)).count() >= 2).then_some(list)
        })
        .await;
    // Their running windows do not overlap, and runs were skipped meanwhile.
    let windows: Vec<(jiff::Timestamp, jiff::Timestamp)> = done
        .iter()
        .filter(|b| is_ready(b))
        .map(|b| {
            let s = b.status.as_ref().unwrap();
            (s.start_time.as_ref().unwrap().0, s.completion_time.as_ref().unwrap().0)
        })
        .collect();
    assert!(windows[0].1 <= windows[1].0, "{windows:?}");
    assert!(windows[0].1.duration_since(windows[0].0).as_secs() >= 4, "the backup was not slow: {windows:?}");
    scenario.expect_event(None, "RunSkipped").await;
    let patch = serde_json::json!({"spec": {"paused": true}});
    scenario.schedules().patch("slow", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    scenario.emulator.faults.clear();

    // The operator is down for several runs of two schedules: the one without a deadline takes the
    // latest missed run once, the one with a 1 s deadline skips it.
    scenario.apply(&scenario.schedule_yaml("catch-up", "@every 3s", "")).await;
    scenario.apply(&scenario.schedule_yaml("strict", "@every 6s", "  startingDeadlineSeconds: 1\n")).await;
    scenario
        .eventually(20, "both schedules to run once", || async {
            // Recorded in the status, not only created: the restart reads lastScheduleTime.
            let a = scenario.schedule_status("catch-up").await.last_schedule_time.is_some();
            let b = scenario.schedule_status("strict").await.last_schedule_time.is_some();
            (a && b).then_some(())
        })
        .await;
    scenario.controller.abort();
    let stopped = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Restart 2 s after one of strict's scheduled times, so that its latest missed run is 2 to 6 s
    // late when the restarted operator looks (it starts in well under 4 s).
    let strict_last = scenario.schedule_status("strict").await.last_schedule_time.unwrap().0;
    let since = jiff::Timestamp::now().duration_since(strict_last).as_secs_f64();
    let wait = 6.0 - (since - 2.0).rem_euclid(6.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let before: Vec<String> =
        scenario.backups_of("catch-up").await.into_iter().filter_map(|b| b.metadata.name).collect();
    let restarted = jiff::Timestamp::now();
    scenario.restart_controller().await;
    let taken = scenario
        .eventually(10, "the missed run", || async {
            let list = scenario.backups_of("catch-up").await;
            let new: Vec<TalosEtcdBackup> =
                list.into_iter().filter(|b| !before.contains(b.metadata.name.as_ref().unwrap())).collect();
            (!new.is_empty()).then_some(new)
        })
        .await;
    // Exactly one backup for the runs missed while down, for the latest of them (the restarted
    // operator may read the clock a scheduled time after `restarted`).
    let taken_created = taken[0].metadata.creation_timestamp.as_ref().unwrap().0;
    let missed: Vec<jiff::Timestamp> = scenario
        .backups_of("catch-up")
        .await
        .iter()
        .map(scheduled_at)
        .filter(|at| *at > stopped && *at <= taken_created)
        .collect();
    assert_eq!(missed, vec![scheduled_at(&taken[0])], "runs missed while down");
    assert!(taken_created.duration_since(missed[0]).as_secs_f64() < 3.0, "not the latest missed run: {missed:?}");
    let strict_missed = scenario
        .backups_of("strict")
        .await
        .iter()
        .map(scheduled_at)
        .filter(|at| *at > stopped && *at <= restarted)
        .count();
    assert_eq!(strict_missed, 0, "a run later than startingDeadlineSeconds was taken");
    scenario
        .eventually(10, "a MissedSchedule event", || async {
            scenario.event_reasons().await.contains(&"MissedSchedule".to_owned()).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_schedule_yaml_applies_unchanged_invalid_ones_say_why_and_deletion_keeps_backups() {
    let scenario = Scenario::one_control_plane("e2e-schedule-api").await;

    // The upstream operator's documented example, verbatim: the API server takes it (a dry run: with
    // no endpoint it would reach AWS), and with the S3 endpoint added it runs daily at 02:00 UTC.
    let verbatim: TalosEtcdBackupSchedule = serde_yaml::from_str(teb_testkit::spec::SCHEDULE_YAML).unwrap();
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    scenario.schedules().create(&dry_run, &verbatim).await.expect("the upstream example is valid");
    scenario.apply(&scenario.schedule_yaml("daily-backup", "0 2 * * *", "")).await;
    let status = scenario
        .eventually(20, "the upstream schedule's status", || async {
            let status = scenario.schedule_status("daily-backup").await;
            status.next_schedule_time.is_some().then_some(status)
        })
        .await;
    let next = status.next_schedule_time.as_ref().unwrap().0;
    let expected =
        teb_schedule::Schedule::parse("0 2 * * *", None).unwrap().next_after(jiff::Timestamp::now()).unwrap();
    assert_eq!(next, expected);
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "ScheduleActive".into()));
    assert!(status.last_schedule_time.is_none() && status.active_backups.is_empty(), "{status:?}");

    // The bucket is checked before the first run: a test upload, aborted.
    let storage = |status: &TalosEtcdBackupScheduleStatus| {
        status.conditions.iter().find(|c| c.type_ == "StorageReady").cloned().expect("StorageReady")
    };
    assert_eq!((storage(&status).status.as_str(), storage(&status).reason.as_str()), ("True", "StorageReachable"));
    assert!(status.last_storage_check_time.is_some());
    let wrong = scenario.schedule_yaml("wrong-bucket", "0 2 * * *", "").replace("my-etcd-backups", "no-such-bucket");
    scenario.apply(&wrong).await;
    let status = scenario
        .eventually(20, "the wrong bucket's check", || async {
            let status = scenario.schedule_status("wrong-bucket").await;
            status.last_storage_check_time.is_some().then_some(status)
        })
        .await;
    let failed = storage(&status);
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("False", "StorageUnreachable"));
    assert!(failed.message.starts_with("Bucket \"no-such-bucket\" refused a test upload: "), "{}", failed.message);
    assert!(failed.message.contains("NoSuchBucket"), "{}", failed.message);
    assert!(!failed.message.contains("YOUR_SECRET_ACCESS_KEY"));
    scenario.expect_event(None, "StorageCheckFailed").await;
    assert!(scenario.s3.unfinished_uploads().is_empty(), "the check left an upload");

    // A time zone moves the run.
    scenario.apply(&scenario.schedule_yaml("berlin", "CRON_TZ=Europe/Berlin 0 2 * * *", "")).await;
    let status = scenario
        .eventually(20, "the Berlin schedule's status", || async {
            let status = scenario.schedule_status("berlin").await;
            status.next_schedule_time.is_some().then_some(status)
        })
        .await;
    let local = status.next_schedule_time.unwrap().0.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!((local.hour(), local.minute()), (2, 0));

    // Invalid: a clear condition and event, nothing scheduled.
    for (name, schedule, spec_fields, says) in [
        ("four-fields", "0 2 * *", "", "it has 4 fields, not 5"),
        ("bad-zone", "0 2 * * *", "  timeZone: Mars/Olympus\n", "unknown time zone \"Mars/Olympus\""),
        ("bad-every", "@every 100ms", "", "shorter than 1s"),
    ] {
        scenario.apply(&scenario.schedule_yaml(name, schedule, spec_fields)).await;
        let status = scenario
            .eventually(20, "the invalid schedule's condition", || async {
                let status = scenario.schedule_status(name).await;
                (!status.conditions.is_empty()).then_some(status)
            })
            .await;
        assert_eq!(schedule_condition(&status, READY), ("False".into(), "InvalidSchedule".into()));
        assert_eq!(schedule_condition(&status, FAILED), ("True".into(), "InvalidSchedule".into()));
        let message = &status.conditions.iter().find(|c| c.type_ == FAILED).unwrap().message;
        assert!(message.starts_with("Invalid spec.schedule: ") && message.contains(says), "{message}");
        assert!(status.next_schedule_time.is_none());
    }
    scenario.expect_event(None, "InvalidSchedule").await;
    // The CRD refuses what its schema can check.
    let refused = apply_yaml(
        &scenario.admin,
        &scenario.schedule_yaml("zero", "@every 1s", "  retention: 0\n"),
        Some(&scenario.ns),
    )
    .await;
    assert!(format!("{:#}", refused.unwrap_err()).contains("retention"));

    // Deleting a schedule keeps its backups and their snapshots, no longer owned.
    scenario.apply(&scenario.schedule_yaml("short-lived", "@every 2s", "")).await;
    let ready = scenario
        .eventually(30, "a backup of short-lived", || async {
            scenario.backups_of("short-lived").await.into_iter().find(is_ready)
        })
        .await;
    let key = ready.status.as_ref().unwrap().filename.clone().unwrap();
    scenario.schedules().delete("short-lived", &Default::default()).await.unwrap();
    scenario
        .eventually(20, "the schedule to be gone", || async {
            scenario.schedules().get_opt("short-lived").await.unwrap().is_none().then_some(())
        })
        .await;
    let kept = scenario.backups_of("short-lived").await;
    assert!(!kept.is_empty());
    for b in &kept {
        assert!(b.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()), "still owned: {b:?}");
    }
    assert!(scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == key));
}

/// Deleting a schedule with foreground, background or orphan propagation, with the operator running or
/// stopped, deletes no snapshot: backups carry no owner reference, and one that still has the owner
/// reference earlier versions wrote keeps its snapshot when the garbage collector deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schedule_deletion_cascades_to_a_snapshot() {
    use kube::api::{DeleteParams, PropagationPolicy};
    let mut scenario = Scenario::one_control_plane("e2e-cascade").await;
    let propagations = [
        ("fg", PropagationPolicy::Foreground),
        ("bg", PropagationPolicy::Background),
        ("orphan", PropagationPolicy::Orphan),
    ];
    for operator_running in [true, false] {
        let round = if operator_running { "up" } else { "down" };
        let names: Vec<String> = propagations.iter().map(|(p, _)| format!("{p}-{round}")).collect();
        scenario.schedules_with_backups(&names).await;
        for name in &names {
            let backups = scenario.backups_of(name).await;
            assert!(backups.iter().all(|b| b.metadata.owner_references.is_none()), "owned: {backups:?}");
            assert!(backups.iter().all(|b| b.spec.deletion_policy == Some(teb_api::DeletionPolicy::Delete)));
        }
        if !operator_running {
            scenario.controller.abort();
        }
        // The newest backup of each in the shape earlier versions wrote: owned by its schedule.
        let mut keys = Vec::new();
        for name in &names {
            let schedule = scenario.schedules().get(name).await.unwrap();
            let backups = scenario.backups_of(name).await;
            keys.extend(stored_keys(&backups));
            let owner = serde_json::json!({"metadata": {"ownerReferences": [{
                "apiVersion": "talos.alperen.cloud/v1alpha1", "kind": "TalosEtcdBackupSchedule", "name": name,
                "uid": schedule.metadata.uid, "controller": true, "blockOwnerDeletion": true,
            }]}});
            let newest = backups.last().unwrap().metadata.name.clone().unwrap();
            scenario.backups().patch(&newest, &PatchParams::default(), &Patch::Merge(&owner)).await.unwrap();
        }
        assert!(keys.len() >= 6, "{keys:?}");
        for ((_, propagation), name) in propagations.iter().zip(&names) {
            let params = DeleteParams { propagation_policy: Some(propagation.clone()), ..Default::default() };
            scenario.schedules().delete(name, &params).await.unwrap();
        }
        if !operator_running {
            // The garbage collector acts with no operator running: it deletes the owned backup of the
            // foreground and background deletions, and strips the owner reference for the orphan one.
            scenario
                .eventually(60, "the garbage collector's cascade", || async {
                    let mut done = true;
                    for name in &names {
                        let backups = scenario.backups_of(name).await;
                        let newest = backups.iter().max_by_key(|b| b.metadata.name.clone());
                        done &= if name.starts_with("orphan") {
                            backups.iter().all(|b| b.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()))
                        } else {
                            newest.is_some_and(|b| b.metadata.deletion_timestamp.is_some())
                        };
                    }
                    done.then_some(())
                })
                .await;
            scenario.restart_controller().await;
        }
        scenario
            .eventually(60, "the schedules to go and no backup to be left deleting", || async {
                for name in &names {
                    if scenario.schedules().get_opt(name).await.unwrap().is_some()
                        || scenario.backups_of(name).await.iter().any(|b| b.metadata.deletion_timestamp.is_some())
                    {
                        return None;
                    }
                }
                Some(())
            })
            .await;
        scenario.assert_stored(&keys).await;
        if !operator_running {
            scenario.expect_event(None, "SnapshotKept").await;
        }
    }
    assert!(scenario.s3.unfinished_uploads().is_empty(), "{:?}", scenario.s3.unfinished_uploads());
}

/// Deleting the namespace of backups and schedules, with the operator running or stopped, keeps every
/// snapshot, and the namespace goes within a minute (with the operator stopped: of its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_keeps_every_snapshot_and_never_hangs() {
    use k8s_openapi::api::core::v1::Namespace;
    for operator_running in [true, false] {
        let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
        let prefix = if operator_running { "e2e-ns-up" } else { "e2e-ns-down" };
        let mut scenario = Scenario::start_with(prefix, options, false, test_config()).await;
        scenario.control_plane_with_bundle().await;
        scenario.apply(SPEC_SECRET).await;
        let direct = backup_yaml("direct", &endpoint_field(&scenario.s3.endpoint)).replacen(
            "spec:\n",
            "spec:\n  deletionPolicy: Delete\n",
            1,
        );
        scenario.apply(&direct).await;
        scenario.apply(&scenario.schedule_yaml("nightly", "@every 2s", "")).await;
        scenario.wait_finished("direct").await;
        scenario
            .eventually(90, "two successful scheduled backups", || async {
                (scenario.backups_of("nightly").await.iter().filter(|b| is_ready(b)).count() >= 2).then_some(())
            })
            .await;
        if !operator_running {
            // Stopped between backups: one killed mid-upload would leave an upload that only the bucket's
            // lifecycle rule cleans once the credentials Secret is gone (documented).
            let paused = serde_json::json!({"spec": {"paused": true}});
            scenario.schedules().patch("nightly", &PatchParams::default(), &Patch::Merge(&paused)).await.unwrap();
            scenario
                .eventually(60, "no backup running", || async {
                    let all = scenario.backups().list(&ListParams::default()).await.unwrap().items;
                    all.iter().all(|b| is_ready(b) || is_failed(b)).then_some(())
                })
                .await;
            scenario.controller.abort();
        }
        let keys = stored_keys(&scenario.backups().list(&ListParams::default()).await.unwrap().items);
        assert!(keys.len() >= 3, "{keys:?}");
        let namespaces: Api<Namespace> = Api::all(scenario.admin.clone());
        namespaces.delete(&scenario.ns, &Default::default()).await.unwrap();
        if !operator_running {
            // The namespace controller deletes the Secret with the S3 keys; the backups wait for the
            // operator.
            let secrets: Api<Secret> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
            scenario
                .eventually(60, "the Secret to be deleted", || async {
                    secrets.get_opt("my-s3-credentials").await.unwrap().is_none().then_some(())
                })
                .await;
            scenario.restart_controller().await;
        }
        scenario
            .eventually(60, "the namespace to go", || async {
                namespaces.get_opt(&scenario.ns).await.unwrap().is_none().then_some(())
            })
            .await;
        scenario.assert_stored(&keys).await;
        assert!(scenario.s3.unfinished_uploads().is_empty(), "{:?}", scenario.s3.unfinished_uploads());
    }
}

/// The catalog comes back from the bucket. A schedule's backups exist only in the bucket once the
/// management cluster lost its objects (here: their namespace deleted and made again).
/// Re-created with `importExisting`, the schedule imports each snapshot as a TalosEtcdBackup with its
/// true key, size, SHA-256 and time, once; a damaged snapshot becomes one Failed backup naming the
/// problem; a TalosEtcdRestore of an imported backup works; retention then keeps N across imported
/// and new backups, deleting the pruned imported snapshots too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_management_cluster_gets_its_catalog_back_from_the_bucket() {
    use object_store::ObjectStoreExt as _;
    use sha2::Digest as _;
    use std::collections::BTreeMap;
    let scenario = Scenario::one_control_plane("e2e-import").await;
    scenario.emulator.etcd().put(b"/registry/secrets/ns/kept", b"kept").await.unwrap();
    let yaml = |fields: &str| {
        let yaml = scenario.schedule_yaml("nightly", "@every 2s", fields);
        yaml.replace("  retention: 7\n", "").replace("  paused: false\n", "")
    };
    scenario.apply(&yaml("  retention: 10\n")).await;
    scenario
        .eventually(90, "five backups", || async {
            (scenario.backups_of("nightly").await.iter().filter(|b| is_ready(b)).count() >= 5).then_some(())
        })
        .await;
    let patch = serde_json::json!({"spec": {"paused": true}});
    scenario.schedules().patch("nightly", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let originals: BTreeMap<String, TalosEtcdBackupStatus> = scenario
        .eventually(60, "the running backups to finish", || async {
            let backups = scenario.backups_of("nightly").await;
            backups.iter().all(|b| is_ready(b) || is_failed(b)).then(|| {
                backups
                    .iter()
                    .filter(|b| is_ready(b))
                    .map(|b| {
                        let status = b.status.clone().unwrap();
                        (status.filename.clone().unwrap(), status)
                    })
                    .collect()
            })
        })
        .await;
    // The management cluster's objects are lost with their namespace (the bucket keeps the
    // snapshots: deleting a namespace never takes them), then the namespace is made again with its
    // control plane and credentials, as a rebuilt management cluster would have them.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(scenario.admin.clone());
    namespaces.delete(&scenario.ns, &Default::default()).await.unwrap();
    scenario
        .eventually(90, "the namespace to go", || async {
            namespaces.get_opt(&scenario.ns).await.unwrap().is_none().then_some(())
        })
        .await;
    let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": scenario.ns}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    assert!(scenario.backups().list(&ListParams::default()).await.unwrap().items.is_empty());
    let stored = |objects: Vec<(String, u64)>| -> Vec<String> {
        teb_testkit::snapshots(&objects).into_iter().map(|(key, _)| key).collect()
    };
    let kept = stored(scenario.s3.objects("my-etcd-backups").await.unwrap());
    assert!(kept.len() >= 5 && originals.keys().all(|k| kept.contains(k)), "{kept:?} {originals:?}");
    // A snapshot damaged in the bucket: a meta page broken under a recomputed trailer.
    let (bytes, _) = scenario.s3.get("my-etcd-backups", originals.keys().next().unwrap()).await.unwrap();
    let mut db = bytes[..bytes.len() - 32].to_vec();
    db[16] ^= 0xFF;
    db.extend_from_slice(&sha2::Sha256::digest(&db));
    let damaged = "talos-operator-etcd-backups/my-controlplane/etcd-snapshot-2020-01-01T00-00-00Z.db";
    let store = scenario.s3.client("my-etcd-backups").unwrap();
    store.put(&object_store::path::Path::from(damaged), db.into()).await.unwrap();

    // Re-created, paused, importing: every snapshot comes back once, as it was.
    let fields = "  paused: true\n  retention: 10\n  importExisting: true\n";
    scenario.apply(&yaml(fields)).await;
    let imported = scenario
        .eventually(60, "every snapshot imported", || async {
            let backups = scenario.backups_of("nightly").await;
            let done = backups.len() == kept.len() + 1 && backups.iter().all(|b| is_ready(b) || is_failed(b));
            done.then_some(backups)
        })
        .await;
    for backup in &imported {
        assert_eq!(backup.labels().get("talos.alperen.cloud/imported").map(String::as_str), Some("true"));
        let status = backup.status.clone().unwrap();
        let key = backup.spec.import_key.clone().unwrap();
        if key == damaged {
            let failed = condition(&status, FAILED).unwrap();
            assert!(failed.message.contains("not a sound etcd (bbolt) database"), "{}", failed.message);
            assert!(failed.message.contains(damaged), "{}", failed.message);
            continue;
        }
        assert!(is_ready(backup), "{status:?}");
        assert_eq!(status.filename.as_ref(), Some(&key));
        let taken = teb_core::backup::time_of_key(&key).unwrap();
        assert_eq!(status.completion_time.as_ref().unwrap().0, taken, "{key}");
        assert_eq!(scheduled_at(backup), taken);
        if let Some(original) = originals.get(&key) {
            assert_eq!(
                (&status.size, &status.sha256, &status.node),
                (&original.size, &original.sha256, &original.node)
            );
            assert_eq!(
                (&status.state_filename, &status.report_filename, &status.manifest_filename),
                (&original.state_filename, &original.report_filename, &original.manifest_filename)
            );
            assert_eq!(status.contents, original.contents, "counted again, the same");
        }
    }
    // Never twice: another reconcile imports nothing more.
    scenario
        .schedules()
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scenario.backups_of("nightly").await.len(), imported.len());

    // An imported backup restores.
    let newest = imported.iter().filter(|b| is_ready(b)).max_by_key(|b| scheduled_at(b)).unwrap().name_any();
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();
    scenario.emulator.wipe_etcd();
    let restore = format!(
        "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: back\nspec:\n  \
         talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: {newest}\n"
    );
    scenario.apply(&restore).await;
    let restored = scenario.restore_finished("back").await;
    assert!(restored.conditions.iter().any(|c| c.type_ == READY && c.reason == "RestoreSucceeded"), "{restored:?}");
    assert_eq!(scenario.emulator.restored_get("/registry/secrets/ns/kept").await.as_deref(), Some("kept"));

    // Running again: retention keeps 3 successful backups across imported and new ones, and the pruned
    // imported snapshots go with their backups.
    let run = serde_json::json!({"spec": {"paused": false, "retention": 3}});
    scenario.schedules().patch("nightly", &PatchParams::default(), &Patch::Merge(&run)).await.unwrap();
    scenario
        .eventually(90, "retention to keep 3 across imported and new backups", || async {
            let backups = scenario.backups_of("nightly").await;
            let ready: Vec<&TalosEtcdBackup> = backups.iter().filter(|b| is_ready(b)).collect();
            let fresh = ready.iter().filter(|b| b.spec.import_key.is_none()).count();
            let mut keys: Vec<String> = ready.iter().filter_map(|b| b.status.as_ref()?.filename.clone()).collect();
            keys.push(damaged.to_owned());
            keys.sort();
            let mut in_bucket = stored(scenario.s3.objects("my-etcd-backups").await.unwrap());
            in_bucket.sort();
            (ready.len() == 3 && fresh >= 1 && in_bucket == keys).then_some(())
        })
        .await;
    assert!(scenario.event_reasons().await.contains(&"BackupsImported".to_owned()));
}
