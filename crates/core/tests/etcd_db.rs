//! The offline reader against real etcd databases: a snapshot of a three-member cluster (members
//! named and addressed as Talos starts them) reads back the members `etcdctl member list` shows.

use std::process::Command;

use teb_core::etcd_db::{EtcdDb, Scan};
use teb_testkit::etcd::{EtcdCluster, EtcdOptions};

/// `etcdctl member list` as (id, name, peer URLs).
fn member_list(endpoint: &str) -> Vec<(u64, String, Vec<String>)> {
    let assets = teb_testkit::assets::assets().unwrap();
    let output = Command::new(&assets.etcdctl)
        .args([&format!("--endpoints={endpoint}"), "member", "list", "-w", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut members: Vec<_> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let urls = m["peerURLs"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
            (m["ID"].as_u64().unwrap(), m["name"].as_str().unwrap_or_default().to_owned(), urls)
        })
        .collect();
    members.sort();
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_names_every_member_of_its_cluster() {
    let members: Vec<(String, String)> = (1..=3).map(|i| (format!("cp-{i}"), format!("127.0.10.{i}"))).collect();
    let cluster = EtcdCluster::start(3, &EtcdOptions { members, ..Default::default() }).await.unwrap();
    // Enough keys for a tree of several pages, so that the members bucket is found past branch pages.
    for i in 0..3000 {
        cluster.put(format!("/registry/configmaps/ns/cm-{i:05}").as_bytes(), &[b'x'; 200]).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.db");
    let endpoint = cluster.members[1].client_url.clone();
    let assets = teb_testkit::assets::assets().unwrap();
    let saved = Command::new(&assets.etcdctl)
        .args([&format!("--endpoints={endpoint}"), "snapshot", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let expected = member_list(&endpoint);
    assert_eq!(expected.len(), 3);

    // Walked from the meta page, and scanned in one pass.
    let bytes = std::fs::read(&file).unwrap();
    let db = EtcdDb::open(bytes.as_slice()).await.unwrap();
    let mut scan = Scan::new(());
    bytes.chunks(7777).for_each(|c| scan.update(c));
    let scanned = scan.finish().unwrap().0;
    for read in [db.members().await.unwrap(), scanned.members] {
        let mut found: Vec<_> = read.iter().map(|m| (m.id, m.name.clone(), m.peer_urls.clone())).collect();
        found.sort();
        assert_eq!(found, expected);
        let mut hosts: Vec<_> = read.iter().filter_map(|m| m.peer_host()).collect();
        hosts.sort();
        assert_eq!(hosts, ["127.0.10.1", "127.0.10.2", "127.0.10.3"]);
    }
    let mut keys = 0usize;
    assert!(db.for_each(b"key", &mut |_, _| keys += 1).await.unwrap());
    assert!(keys >= 3000, "every revision of the key bucket is walked: {keys}");
    assert!(!db.for_each(b"no-such-bucket", &mut |_, _| {}).await.unwrap());

    // A damaged database says so instead of naming fewer members.
    let mut damaged = bytes.clone();
    damaged.truncate(bytes.len() / 2);
    let result = match EtcdDb::open(damaged.as_slice()).await {
        Ok(db) => db.members().await.map(|m| m.len()),
        Err(e) => Err(e),
    };
    assert!(result.is_err() || result == Ok(3), "{result:?}");
}
