use bytes::Bytes;
use shardraft::log::{DiskLog, GroupId, LogConfig, LogIdentity, LogStore, WriteBatch};
use shardraft::raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        data: Bytes::from(data.to_string()),
    }
}

#[test]
fn smoke() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smoke");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = LogConfig {
        data_dir: dir.clone(),
        segment_bytes: 64 * 1024,
        flush_bytes_max: 16 * 1024,
        pending_bytes_max: 1 << 20,
        ..LogConfig::default()
    };
    let identity = LogIdentity {
        cluster_id: 1,
        node_id: 1,
        shard: 0,
    };
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    let c2 = config.clone();
    ex.run(async move {
        let log = DiskLog::open(&c2, identity).await.unwrap();
        let mut last = Default::default();
        for i in 1..=500u64 {
            let mut b = WriteBatch::new();
            b.append(
                GroupId(((i - 1) % 3) as u32),
                vec![entry(
                    (i - 1) / 3 + 1,
                    1,
                    &format!("value-{i}-{}", "x".repeat(100)),
                )],
            );
            if i % 3 == 0 {
                b.set_hard_state(
                    GroupId(0),
                    HardState {
                        term: Term(1),
                        vote: Some(NodeId(2)),
                        commit: LogIndex(1),
                    },
                );
            }
            last = log.submit(b).unwrap();
        }
        let d = log
            .wait_durable(shardraft::log::BatchNumber(0))
            .await
            .unwrap();
        println!("durable {d:?} last {last:?} stats {:?}", log.stats());
        log.close().await.unwrap();
        println!("segments {:?}", log.segment_paths());
    });
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let log = DiskLog::open(&config, identity).await.unwrap();
        for g in log.group_ids() {
            println!("{g}: {:?}", log.group_state(g));
        }
        let es = log
            .read(GroupId(1), LogIndex(1)..LogIndex(168), u64::MAX)
            .await
            .unwrap();
        assert_eq!(es.len(), 167);
        assert!(es[5].data.starts_with(b"value-17-"), "{:?}", es[5]);
        log.close().await.unwrap();
    });
}
