//! The store's promise under crashes, through the real daemon: every write it
//! acknowledged is there after a `kill -9` at random moments and at each named
//! failpoint (before the log append, before and after its fsync, after sled
//! applied the group, at a checkpoint, in a compaction sweep, in the middle of
//! reopening sled, during start-up replay); a torn log tail is cut, and a sled directory that is damaged is
//! rebuilt from the checkpoint and the log, at start or with `maestrod repair`.
//!
//! The daemon under test is built with the `failpoints` feature:
//! `FAILPOINTS=name=N*off->return` lets a point pass N times, then the process
//! kills itself with SIGKILL there.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use maestro_shared::v1::{
    self, memory_service_client::MemoryServiceClient, project_service_client::ProjectServiceClient,
    system_service_client::SystemServiceClient,
};
use maestro_tests::{Daemon, binary};

/// Small log segments and checkpoints, so a test's writes trim the log and
/// rebuilds start from a checkpoint taken mid-run, not the first one; and
/// sled reopened every few hundred writes, so crashes also meet reopens.
const STORE_ARGS: [&str; 6] =
    ["--checkpoint-bytes", "65536", "--wal-segment-bytes", "16384", "--sled-reopen-ops", "2000"];
const WRITERS: usize = 8;
const KEYS: u64 = 40;

type Key = (String, String);

/// What may be stored under each key (None: nothing): the value of its last
/// acknowledged write, or of a write that was in flight when the daemon died.
#[derive(Default)]
struct Expected {
    allowed: HashMap<Key, HashSet<Option<u64>>>,
    acknowledged: usize,
}

/// One writer's account of a run: the last value acknowledged per key, and
/// the write it was waiting for when the daemon went away.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Key, u64>,
    in_flight: Option<(Key, u64)>,
    count: usize,
}

impl Expected {
    fn record(&mut self, ledgers: Vec<Ledger>) {
        for ledger in ledgers {
            self.acknowledged += ledger.count;
            for (key, value) in ledger.acked {
                self.allowed.insert(key, HashSet::from([Some(value)]));
            }
            if let Some((key, value)) = ledger.in_flight {
                self.allowed.entry(key).or_insert_with(|| HashSet::from([None])).insert(Some(value));
            }
        }
    }

    /// Reads every key back: each holds an allowed value. What is read is
    /// the truth from now on.
    async fn verify(&mut self, daemon: &Daemon, when: &str) {
        let mut memory = MemoryServiceClient::new(daemon.channel().await.unwrap());
        for ((agent, key), allowed) in &mut self.allowed {
            let request = v1::GetMemoryRequest { project_id: "crash".into(), agent: agent.clone(), key: key.clone() };
            let stored = match memory.get_memory(request).await {
                Ok(entry) => Some(entry.into_inner().value.parse::<u64>().unwrap()),
                Err(status) if status.code() == tonic::Code::NotFound => None,
                Err(status) => panic!("{when}: reading {agent}/{key}: {status:?}"),
            };
            assert!(allowed.contains(&stored), "{when}: {agent}/{key} holds {stored:?}, expected one of {allowed:?}");
            *allowed = HashSet::from([stored]);
        }
    }
}

/// Writes from `WRITERS` connections (each its own agent, cycling over
/// `KEYS` keys) until the daemon stops answering, or `limit` writes each.
/// Values are unique: `round * 1e6 + i`.
async fn write(daemon: &Daemon, round: u64, limit: Option<u64>) -> Vec<Ledger> {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let channel = daemon.channel().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut memory = MemoryServiceClient::new(channel);
            let mut ledger = Ledger::default();
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..limit.unwrap_or(u64::MAX) {
                assert!(Instant::now() < deadline, "round {round}: the daemon never went down");
                let key = (format!("w{writer}"), format!("k{}", i % KEYS));
                let value = round * 1_000_000 + i;
                ledger.in_flight = Some((key.clone(), value));
                let request = v1::PutMemoryRequest {
                    project_id: "crash".into(),
                    agent: key.0.clone(),
                    key: key.1.clone(),
                    value: value.to_string(),
                    ..Default::default()
                };
                if memory.put_memory(request).await.is_err() {
                    return ledger;
                }
                ledger.in_flight = None;
                ledger.acked.insert(key, value);
                ledger.count += 1;
            }
            ledger
        }));
    }
    let mut ledgers = Vec::new();
    for task in tasks {
        ledgers.push(task.await.unwrap());
    }
    ledgers
}

fn start() -> Daemon {
    let daemon = Daemon::start_with(&STORE_ARGS).unwrap();
    daemon.ctl(&["project", "create", "crash"]).ok();
    daemon
}

/// Restarts with `failpoints` set (empty: none).
fn restart_with(daemon: &mut Daemon, failpoints: &str) -> anyhow::Result<()> {
    if failpoints.is_empty() {
        daemon.set_env(&[]);
    } else {
        daemon.set_env(&[("FAILPOINTS", failpoints)]);
    }
    daemon.restart()
}

/// The daemon ended by killing itself at a failpoint.
fn assert_crashed(daemon: &mut Daemon, point: &str) {
    let status = daemon.wait_for_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("{point}: still running"));
    assert_eq!(status.signal(), Some(9), "{point}: died of SIGKILL at the failpoint: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_crash_at_every_failpoint() {
    let mut daemon = start();
    let mut expected = Expected::default();
    // How often each point passes before it fires (a checkpoint comes every 64 KiB of log).
    let points = [
        ("wal-before-append", 120),
        ("wal-before-fsync", 120),
        ("wal-after-fsync", 120),
        ("store-after-apply", 120),
        ("checkpoint-written", 1),
        // sled closed for a reopen, not yet open again.
        ("sled-reopen-closed", 1),
    ];
    for (round, (point, passes)) in points.into_iter().enumerate() {
        restart_with(&mut daemon, &format!("{point}={passes}*off->return")).unwrap();
        let ledgers = write(&daemon, round as u64 + 1, None).await;
        assert_crashed(&mut daemon, point);
        expected.record(ledgers);
        restart_with(&mut daemon, "").unwrap();
        expected.verify(&daemon, point).await;
    }

    // A crash in the middle of sweeping compacted history: the compaction point
    // was acknowledged, so it holds; the sweep finishes after the restart.
    // (The first step waits 300 ms, so the acknowledgement leaves before the second step dies.)
    restart_with(&mut daemon, "compact-step=1*sleep(300)->return").unwrap();
    let ledgers = write(&daemon, 10, Some(60)).await;
    expected.record(ledgers);
    let mut system = SystemServiceClient::new(daemon.channel().await.unwrap());
    let revision = system.get_info(v1::GetInfoRequest {}).await.unwrap().into_inner().revision;
    let compacted = system.compact(v1::CompactRequest { revision: revision - 5 }).await.unwrap().into_inner();
    assert_eq!(compacted.compact_revision, revision - 5);
    assert_crashed(&mut daemon, "compact-step");
    restart_with(&mut daemon, "").unwrap();
    expected.verify(&daemon, "compact-step").await;
    let mut system = SystemServiceClient::new(daemon.channel().await.unwrap());
    let info = system.get_info(v1::GetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.compact_revision, revision - 5, "the acknowledged compaction point survived");
    assert!(daemon.log().contains("resuming the sweep of compacted history"), "{}", daemon.log());

    // A crash after the log is synced but before sled has the group, then a
    // crash while the restart replays the log into sled, then a clean start.
    restart_with(&mut daemon, "wal-after-fsync=150*off->return").unwrap();
    let ledgers = write(&daemon, 11, None).await;
    assert_crashed(&mut daemon, "wal-after-fsync");
    expected.record(ledgers);
    assert!(restart_with(&mut daemon, "wal-replay-record=return").is_err(), "died while replaying");
    restart_with(&mut daemon, "").unwrap();
    expected.verify(&daemon, "wal-replay-record").await;
    assert!(expected.acknowledged > 500, "{} writes acknowledged in all", expected.acknowledged);
}

/// A small deterministic generator, so a failing run can be repeated.
fn pauses(seed: u64) -> impl Iterator<Item = Duration> {
    let mut state = seed | 1;
    std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some(Duration::from_millis(80 + state % 500))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_at_random_moments_and_a_torn_log_tail() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("pauses seeded with {seed}");
    let mut daemon = start();
    let mut expected = Expected::default();
    for (round, pause) in pauses(seed).take(6).enumerate() {
        let writing = write(&daemon, round as u64 + 1, None);
        let pid = nix::unistd::Pid::from_raw(daemon.pid().unwrap() as i32);
        let killing = async {
            tokio::time::sleep(pause).await;
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        };
        let (ledgers, ()) = tokio::join!(writing, killing);
        expected.record(ledgers);
        if round == 3 {
            // The process died in the middle of an append: half a frame at the end.
            let wal = daemon.data_dir().join("wal");
            let mut segments: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).collect();
            segments.sort();
            let newest = segments.last().unwrap();
            let mut file = std::fs::OpenOptions::new().append(true).open(newest).unwrap();
            std::io::Write::write_all(&mut file, &[200, 1, 0, 0, 7, 7, 7, 7, 1, 2, 3]).unwrap();
        }
        restart_with(&mut daemon, "").unwrap();
        expected.verify(&daemon, &format!("kill -9 after {pause:?}")).await;
        if round == 3 {
            assert!(daemon.log().contains("ends in a torn record"), "{}", daemon.log());
        }
    }
    // Not vacuous: writes were acknowledged before the kills (how many depends on the machine's load).
    assert!(expected.acknowledged > 50, "{} writes acknowledged in all", expected.acknowledged);
}

/// A power cut loses what was not synced. The log's acknowledged records are
/// synced; sled's writes are not promised to be (its flush does not sync).
/// Emulated: an image of sled's directory copied while the daemon writes
/// (sled as it stood at some moment, possibly in the middle of a write)
/// replaces the directory after a `kill -9`, so sled comes back behind the
/// log (replayed), or behind the oldest log segment or damaged, its files
/// copied at different moments (rebuilt). Every acknowledged write is there
/// after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sled_losing_what_it_had_not_synced() {
    let mut daemon = start();
    let mut expected = Expected::default();
    let (mut replayed, mut rebuilt) = (0, 0);
    // How long writes go on before the image is taken, then after it until the kill.
    for (round, (before, after)) in [(300, 400), (150, 1500), (600, 100), (200, 3000)].into_iter().enumerate() {
        let writing = write(&daemon, round as u64 + 1, None);
        let pid = nix::unistd::Pid::from_raw(daemon.pid().unwrap() as i32);
        let (store, image) = (daemon.data_dir().join("store"), daemon.data_dir().join("store.image"));
        let imaging = async {
            tokio::time::sleep(Duration::from_millis(before)).await;
            let (store, image) = (store.clone(), image.clone());
            tokio::task::spawn_blocking(move || copy_dir(&store, &image)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(after)).await;
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        };
        let (ledgers, ()) = tokio::join!(writing, imaging);
        expected.record(ledgers);
        daemon.wait_for_exit(Duration::from_secs(10)).expect("killed");
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::rename(&image, &store).unwrap();
        let log_before = daemon.log().len();
        restart_with(&mut daemon, "").unwrap();
        let log = daemon.log()[log_before..].to_string();
        if log.contains("rebuilding it from") {
            rebuilt += 1;
        } else if log.contains("replayed the write-ahead log into the store") {
            replayed += 1;
        }
        expected.verify(&daemon, &format!("sled's image {before} ms in, killed {after} ms later")).await;
    }
    eprintln!("sled's image was caught up from the log {replayed} times, rebuilt {rebuilt} times");
    assert!(replayed + rebuilt >= 3, "sled came back behind the log in {} of 4 rounds", replayed + rebuilt);
    assert!(expected.acknowledged > 100, "{} writes acknowledged in all", expected.acknowledged);
}

/// A power cut, emulated by a filesystem that loses what was not synced
/// (`maestro_tests::lossy_fs`, through FUSE): the daemon's whole data
/// directory (log, checkpoints, sled, lock) lives on it. After a `kill -9`
/// each file goes back to what its last `fsync` made durable plus some of the
/// writes after it, in order, the last one possibly torn; each directory to
/// the names its last sync made durable. Every acknowledged write is there
/// after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut_that_loses_what_was_not_synced() {
    use maestro_tests::lossy_fs::LossyFs;
    if !LossyFs::available() {
        assert!(
            std::env::var_os("MAESTRO_E2E_REQUIRE_FUSE").is_none(),
            "MAESTRO_E2E_REQUIRE_FUSE is set, but mounting FUSE needs root and /dev/fuse"
        );
        eprintln!("skipped: the power-cut filesystem needs root and /dev/fuse (CI has them)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let fs = LossyFs::default();
    let mut mount = Some(fs.mount(&data).expect("mounting the power-cut filesystem"));
    let mut daemon = Daemon::start_in(Some(&data), &STORE_ARGS, &[]).unwrap();
    daemon.ctl(&["project", "create", "crash"]).ok();
    let mut expected = Expected::default();
    let mut lost_writes = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % (below as u64 + 1)) as usize
    };
    // How long writes go on before the cut, and how much of what was not synced survives it.
    for (round, (millis, survives)) in
        [(400, "nothing"), (1500, "half"), (250, "all but a torn end"), (900, "some")].into_iter().enumerate()
    {
        let writing = write(&daemon, round as u64 + 1, None);
        let pid = nix::unistd::Pid::from_raw(daemon.pid().unwrap() as i32);
        let cut = async {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        };
        let (ledgers, ()) = tokio::join!(writing, cut);
        expected.record(ledgers);
        daemon.wait_for_exit(Duration::from_secs(10)).expect("killed");
        // Unmounted first: the kernel must not keep pages of what the cut takes.
        mount.take().unwrap().umount_and_join().unwrap();
        let lost = match survives {
            "nothing" => fs.power_cut(|_| 0, |n| n),
            "half" => fs.power_cut(|n| n / 2, |n| n),
            "all but a torn end" => fs.power_cut(|n| n, |n| n / 3),
            _ => fs.power_cut(&mut random, |n| n / 2),
        };
        eprintln!("round {round}: {millis} ms of writes, {survives} of the unsynced kept: lost {lost:?}");
        lost_writes += lost.writes;
        mount = Some(fs.mount(&data).unwrap());
        let log_before = daemon.log().len();
        restart_with(&mut daemon, "")
            .unwrap_or_else(|e| panic!("round {round}: no restart after the power cut: {e:#}"));
        eprintln!(
            "{}",
            daemon.log()[log_before..]
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("rebuil") || l.contains("replayed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        expected.verify(&daemon, &format!("power cut {round} ({survives} of the unsynced kept)")).await;
    }
    daemon.kill9();
    assert!(fs.syncs() > 100, "the daemon synced {} times", fs.syncs());
    assert!(lost_writes > 0, "the power cuts took nothing: the test proves nothing");
    assert!(expected.acknowledged > 100, "{} writes acknowledged in all", expected.acknowledged);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // A file sled removed meanwhile is one the image did not need.
            let _ = std::fs::copy(entry.path(), &target);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sled_directory_is_rebuilt_at_start_and_by_maestrod_repair() {
    let mut daemon = start();
    let mut expected = Expected::default();
    let ledgers = write(&daemon, 1, Some(300)).await;
    expected.record(ledgers);
    let checkpoints = std::fs::read_dir(daemon.data_dir().join("checkpoints")).unwrap().count();
    assert!(checkpoints >= 2, "checkpoints were taken as the log grew ({checkpoints})");

    // Repair refuses while the daemon holds the data directory.
    let data_dir = daemon.data_dir().to_path_buf();
    let repair = || {
        std::process::Command::new(binary("e2e-maestrod"))
            .arg("repair")
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap()
    };
    let refused = repair();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by another maestrod"), "{refused:?}");

    // Every file of sled's directory overwritten: the daemon rebuilds it and says so.
    daemon.kill9();
    let store = daemon.data_dir().join("store");
    for entry in walk(&store) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5; len.max(512)]).unwrap();
    }
    // A crash in the middle of the rebuild (the new copy built, not yet in place) changes nothing.
    assert!(restart_with(&mut daemon, "rebuild-before-swap=return").is_err(), "died while rebuilding");
    assert!(daemon.data_dir().join("store.rebuilding").exists());
    restart_with(&mut daemon, "").unwrap();
    assert!(
        daemon.log().contains("rebuilding it from its newest checkpoint and the write-ahead log"),
        "{}",
        daemon.log()
    );
    expected.verify(&daemon, "damaged sled directory").await;
    let ledgers = write(&daemon, 2, Some(100)).await;
    expected.record(ledgers);

    // The explicit repair, on a stopped daemon: one line of what it did, the old directory kept.
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(200));
    let repaired = repair();
    assert_eq!(repaired.status.code(), Some(0), "{}", String::from_utf8_lossy(&repaired.stderr));
    let out = String::from_utf8_lossy(&repaired.stdout);
    assert!(out.starts_with("store rebuilt at revision") && out.contains("the old store is in"), "{out}");
    restart_with(&mut daemon, "").unwrap();
    expected.verify(&daemon, "maestrod repair").await;
    let projects = ProjectServiceClient::new(daemon.channel().await.unwrap())
        .list_projects(v1::ListProjectsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(projects.projects.iter().any(|p| p.id == "crash"));
}

/// A store in the old format (3) is upgraded at start, through a crash in the
/// middle of the upgrade, and keeps every acknowledged write and its author.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_3_store_is_upgraded_at_start_even_through_a_crash_in_the_middle() {
    let mut daemon = start();
    let mut expected = Expected::default();
    let ledgers = write(&daemon, 1, Some(200)).await;
    expected.record(ledgers);
    let written_by = author(&daemon).await;
    assert!(!written_by.is_empty());
    daemon.terminate().unwrap();
    maestrod::ssot::sled_store::downgrade_to_format(daemon.data_dir(), 3).unwrap();

    // Killed with the converted copy built and checkpointed, not yet in place.
    let data = daemon.data_dir().to_path_buf();
    assert!(restart_with(&mut daemon, "upgrade-before-swap=return").is_err(), "died while upgrading");
    let built = data.join("store.upgraded-from-3");
    assert!(built.is_dir() && data.join("store").is_dir(), "the old store is still in place");
    assert!(data.join("checkpoints.upgrading").is_dir(), "the copy's checkpoint is made beside the old ones");
    assert!(!data.join("checkpoints.format-3").exists(), "the old checkpoints stay until the swap");
    // Killed again between the renames of the swap, which the next start resumes: no store in place.
    assert!(restart_with(&mut daemon, "upgrade-between-renames=return").is_err(), "died while swapping");
    assert!(!data.join("store").exists() && built.is_dir());
    assert!(data.join("checkpoints.format-3").is_dir(), "the old checkpoints are kept aside");
    restart_with(&mut daemon, "").unwrap();
    assert!(daemon.log().contains("store format 3 upgraded to 4"), "{}", daemon.log());
    assert!(daemon.data_dir().join("store.format-3").is_dir());
    expected.verify(&daemon, "upgraded store").await;
    assert_eq!(author(&daemon).await, written_by, "authors survive the upgrade");

    // The upgraded store takes writes, and they survive a kill -9 and a rebuild from its checkpoint.
    let ledgers = write(&daemon, 2, Some(100)).await;
    expected.record(ledgers);
    daemon.kill9();
    std::fs::remove_dir_all(daemon.data_dir().join("store")).unwrap();
    restart_with(&mut daemon, "").unwrap();
    expected.verify(&daemon, "upgraded store rebuilt").await;
}

/// Who last wrote w0/k0.
async fn author(daemon: &Daemon) -> String {
    let request = v1::GetMemoryRequest { project_id: "crash".into(), agent: "w0".into(), key: "k0".into() };
    let entry = MemoryServiceClient::new(daemon.channel().await.unwrap()).get_memory(request).await.unwrap();
    entry.into_inner().meta.unwrap().modified_by
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
