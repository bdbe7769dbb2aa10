//! Property tests: random operation sequences run against each backend (sled,
//! and etcd with the `etcd` feature) and against a plain in-memory model of the
//! same semantics (revisions, per-key metadata and author, conditional writes,
//! history reads, compaction, watch replay).
//!
//! The model counts revisions from 0; a backend's revisions are the model's plus
//! the revision it stood at when the case began (etcd's are global to the
//! cluster, and one cluster serves every case).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;

use super::sled_store::{SledOptions, SledStore};
use super::store::{Compare, EventKind, Op, RangeRequest, Revision, Store, StoreError, Txn, TxnResponse};

const KEYS: [&str; 6] = ["a", "a/b", "a/c", "b", "b/a", "c"];
const PREFIXES: [&str; 4] = ["", "a", "a/", "b"];

#[derive(Debug, Clone)]
enum Action {
    Put(usize, u8),
    Delete(usize),
    DeletePrefix(usize),
    /// A put conditional on the key's mod revision; `true` uses the right one.
    CasPut(usize, u8, bool),
    /// Two puts in one transaction.
    PutTwo(usize, usize, u8),
    /// Compact a fraction (in percent) of the retained history.
    Compact(u8),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Action::Put(k, v)),
        2 => (0..KEYS.len()).prop_map(Action::Delete),
        1 => (0..PREFIXES.len()).prop_map(Action::DeletePrefix),
        3 => (0..KEYS.len(), any::<u8>(), any::<bool>()).prop_map(|(k, v, ok)| Action::CasPut(k, v, ok)),
        2 => (0..KEYS.len(), 0..KEYS.len(), any::<u8>()).prop_map(|(a, b, v)| Action::PutTwo(a, b, v)),
        1 => (0u8..=100).prop_map(Action::Compact),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKv {
    value: Vec<u8>,
    create: Revision,
    modified: Revision,
    version: u64,
    /// Who wrote this value (each action is made by one of three authors).
    author: String,
}

type State = BTreeMap<String, ModelKv>;

/// (kind, key, value, revision) of one event.
type ModelEvent = (EventKind, String, Vec<u8>, Revision);

#[derive(Default)]
struct Model {
    revision: Revision,
    compacted: Revision,
    /// `states[r]`: the state after revision r.
    states: Vec<State>,
    events: Vec<ModelEvent>,
}

impl Model {
    fn new() -> Self {
        Model { states: vec![State::new()], ..Model::default() }
    }

    fn current(&self) -> &State {
        self.states.last().expect("state 0 exists")
    }

    /// Applies puts (`Some`) and deletes (`None`) as one revision if anything changes.
    fn apply(&mut self, author: &str, changes: Vec<(String, Option<Vec<u8>>)>) -> Revision {
        let next = self.revision + 1;
        let mut state = self.current().clone();
        let mut events = Vec::new();
        for (key, change) in changes {
            match change {
                Some(value) => {
                    let previous = state.get(&key);
                    let kv = ModelKv {
                        value: value.clone(),
                        create: previous.map_or(next, |p| p.create),
                        modified: next,
                        version: previous.map_or(0, |p| p.version) + 1,
                        author: author.to_string(),
                    };
                    state.insert(key.clone(), kv);
                    events.push((EventKind::Put, key, value, next));
                }
                None => {
                    if state.remove(&key).is_some() {
                        events.push((EventKind::Delete, key, Vec::new(), next));
                    }
                }
            }
        }
        if events.is_empty() {
            return self.revision;
        }
        self.revision = next;
        self.states.push(state);
        self.events.extend(events);
        self.revision
    }
}

/// The backend's keys in the model's revisions (`base` is where the case began).
fn as_state(kvs: &[super::store::KeyValue], base: Revision) -> State {
    kvs.iter()
        .map(|kv| {
            let key = String::from_utf8(kv.key.clone()).unwrap();
            (
                key,
                ModelKv {
                    value: kv.value.clone(),
                    create: kv.create_revision - base,
                    modified: kv.mod_revision - base,
                    version: kv.version,
                    author: kv.modified_by.clone(),
                },
            )
        })
        .collect()
}

/// What a finished case left, to be compared after a reopen.
struct Outcome {
    base: Revision,
    state: State,
    status: super::store::StoreStatus,
}

async fn run(store: &dyn Store, actions: Vec<Action>) -> Result<Outcome, TestCaseError> {
    let start = store.status();
    let base = start.revision;
    let at = |revision: Revision| base + revision;
    let mut model = Model::new();
    for (n, action) in actions.into_iter().enumerate() {
        let author = format!("author-{}", n % 3);
        let txn = || Txn { actor: Some(author.clone()), ..Txn::new() };
        match action {
            Action::Put(k, v) => {
                let got = store.txn(txn().then(Op::put(KEYS[k], vec![v]))).await.unwrap();
                let want = model.apply(&author, vec![(KEYS[k].into(), Some(vec![v]))]);
                prop_assert_eq!(got, TxnResponse::Committed { revision: at(want) });
            }
            Action::Delete(k) => {
                let got = store.txn(txn().then(Op::delete(KEYS[k]))).await.unwrap();
                let want = model.apply(&author, vec![(KEYS[k].into(), None)]);
                prop_assert_eq!(got, TxnResponse::Committed { revision: at(want) });
            }
            Action::DeletePrefix(p) => {
                let prefix = PREFIXES[p];
                let got = store.txn(txn().then(Op::delete_prefix(prefix))).await.unwrap();
                let doomed: Vec<_> =
                    model.current().keys().filter(|k| k.starts_with(prefix)).map(|k| (k.clone(), None)).collect();
                let want = model.apply(&author, doomed);
                prop_assert_eq!(got, TxnResponse::Committed { revision: at(want) });
            }
            Action::CasPut(k, v, right) => {
                let actual = model.current().get(KEYS[k]).map_or(0, |kv| at(kv.modified));
                let expected = if right { actual } else { actual + 7 };
                let txn = txn().when(Compare::mod_revision(KEYS[k], expected)).then(Op::put(KEYS[k], vec![v]));
                let got = store.txn(txn).await.unwrap();
                if right {
                    let want = model.apply(&author, vec![(KEYS[k].into(), Some(vec![v]))]);
                    prop_assert_eq!(got, TxnResponse::Committed { revision: at(want) });
                } else {
                    prop_assert_eq!(
                        got,
                        TxnResponse::CompareFailed {
                            index: 0,
                            key: KEYS[k].as_bytes().to_vec(),
                            current_mod_revision: actual
                        }
                    );
                }
            }
            Action::PutTwo(a, b, v) => {
                let txn = txn().then(Op::put(KEYS[a], vec![v])).then(Op::put(KEYS[b], vec![v, 1]));
                let got = store.txn(txn).await;
                if a == b {
                    prop_assert!(matches!(got, Err(StoreError::InvalidArgument(_))), "{got:?}");
                } else {
                    let changes = vec![(KEYS[a].into(), Some(vec![v])), (KEYS[b].into(), Some(vec![v, 1]))];
                    let want = model.apply(&author, changes);
                    prop_assert_eq!(got.unwrap(), TxnResponse::Committed { revision: at(want) });
                }
            }
            Action::Compact(percent) => {
                let target = model.compacted + (model.revision - model.compacted) * u64::from(percent) / 100;
                if target > model.compacted {
                    prop_assert_eq!(store.compact(at(target)).await.unwrap(), at(target));
                    model.compacted = target;
                }
            }
        }
    }

    let status = store.status();
    prop_assert_eq!(status.revision, at(model.revision));
    let compacted = if model.compacted > 0 { at(model.compacted) } else { start.compact_revision };
    prop_assert_eq!(status.compact_revision, compacted);
    let now = store.range(RangeRequest::prefix("")).await.unwrap();
    prop_assert_eq!(as_state(&now.kvs, base), model.current().clone());

    // Every retained revision reads exactly as it was; older ones are refused.
    for revision in 1..=model.revision {
        let read = store.range(RangeRequest::prefix("").at(at(revision))).await;
        if revision < model.compacted {
            prop_assert!(matches!(read, Err(StoreError::Compacted { .. })), "{revision}: {read:?}");
        } else {
            prop_assert_eq!(
                as_state(&read.unwrap().kvs, base),
                model.states[revision as usize].clone(),
                "at {}",
                revision
            );
        }
    }
    // Single-key history reads too.
    for key in KEYS {
        for revision in model.compacted.max(1)..=model.revision {
            let read = store.range(RangeRequest::key(key).at(at(revision))).await.unwrap();
            let want = model.states[revision as usize].get(key).cloned();
            prop_assert_eq!(as_state(&read.kvs, base).remove(key), want);
        }
    }

    // Watch replay from the oldest retained revision and from the middle.
    let oldest = model.compacted.max(1);
    for start in [oldest, (oldest + model.revision) / 2 + 1] {
        for prefix in ["", "a/"] {
            let want: Vec<ModelEvent> =
                model.events.iter().filter(|e| e.3 >= start && e.1.starts_with(prefix)).cloned().collect();
            let mut stream = store.watch(prefix.as_bytes().to_vec(), at(start)).unwrap();
            let mut got: Vec<ModelEvent> = Vec::new();
            while got.len() < want.len() {
                let batch = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
                let Ok(batch) = batch else {
                    return Err(TestCaseError::fail(format!(
                        "watch {prefix:?} from {start} (compacted {}): got {got:?}, wanted {want:?}",
                        model.compacted
                    )));
                };
                let batch = batch.expect("stream open").unwrap();
                got.extend(
                    batch
                        .events
                        .into_iter()
                        .map(|e| (e.kind, String::from_utf8(e.kv.key).unwrap(), e.kv.value, e.kv.mod_revision - base)),
                );
            }
            prop_assert_eq!(&got, &want, "watch {:?} from {}", prefix, start);
            let extra = tokio::time::timeout(Duration::from_millis(10), stream.next()).await;
            prop_assert!(extra.is_err(), "unexpected extra watch message {extra:?}");
        }
    }
    if model.compacted > 1 {
        let refused = store.watch(Vec::new(), at(model.compacted) - 1);
        prop_assert!(
            matches!(refused, Err(StoreError::Compacted { .. })),
            "watch below the compaction point was accepted"
        );
    }
    Ok(Outcome { base, state: model.current().clone(), status })
}

async fn run_on_sled(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
    let outcome = run(store.as_ref(), actions).await?;
    store.close().await;
    drop(store);

    // Everything survives a reopen. sled's background flusher lets go of the
    // directory's file lock a moment after the last handle is dropped: a
    // reopen in the same process waits for it (another process is never
    // made to wait: a daemon's own lock file refuses it at once).
    let mut tries = 0;
    let reopened = loop {
        match SledStore::open(dir.path(), SledOptions::default()) {
            Ok(store) => break store,
            Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let after = reopened.range(RangeRequest::prefix("")).await.unwrap();
    prop_assert_eq!(as_state(&after.kvs, outcome.base), outcome.state);
    prop_assert_eq!(reopened.status(), outcome.status);
    reopened.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(actions in proptest::collection::vec(action(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run_on_sled(actions))?;
    }
}

/// The same cases on etcd: one private server, a fresh prefix per case, and a
/// second client (another daemon) that reads what the first one wrote.
#[cfg(feature = "etcd")]
#[test]
fn etcd_store_matches_the_model() {
    use super::etcd_store::local::LocalEtcd;
    use proptest::test_runner::{Config, TestRunner};

    let etcd = LocalEtcd::start().expect("etcd starts");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let strategy = proptest::collection::vec(action(), 1..40);
    let result = runner.run(&strategy, |actions| {
        runtime.block_on(async {
            let prefix = format!("model-{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let store = etcd.connect(&prefix).await.expect("connect");
            let outcome = run(&store, actions).await?;
            store.close().await;
            let other = etcd.connect(&prefix).await.expect("connect again");
            let after = other.range(RangeRequest::prefix("")).await.unwrap();
            prop_assert_eq!(as_state(&after.kvs, outcome.base), outcome.state);
            prop_assert!(other.status().revision >= outcome.status.revision);
            // etcd cannot tell a compaction at its first (empty) revision from none: 2 reads as 0.
            let point = |c: Revision| if c <= 2 { 0 } else { c };
            prop_assert_eq!(point(other.status().compact_revision), point(outcome.status.compact_revision));
            other.close().await;
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
