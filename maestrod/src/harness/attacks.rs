//! The attack corpus, through the real entry point and the real sandbox:
//! an agent's test file (`attack_script.py`) runs through an allowed command
//! (`python3 -m unittest`) and tries to get out — git hooks and config, the
//! project's config, reads outside the workspace, the daemon's process and
//! port, sockets, ptrace, mount, namespaces, TIOCSTI, keys, BPF,
//! capabilities, survivors. Every attempt must fail, and nothing outside may
//! change (hashes before and after). CI runs this as root and, through a
//! helper, as `nobody` (a daemon that is not root).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::budget::{Budget, BudgetConfig};
use super::executor::{ActionContext, ActionOutput, Harness};
use super::gate::{Action, Gate};
use super::rollback::GitWorkspace;
use super::sandbox::{Limits, LocalSandbox, SandboxProvider};
use crate::ssot::Ssot;
use crate::ssot::sled_store::{SledOptions, SledStore};

const SCRIPT: &str = include_str!("attack_script.py");

/// path (relative to `root`) → content, for every file below `root` (links as their target).
fn fingerprint(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, std::fs::read_link(&path).unwrap().display().to_string().into_bytes());
            } else if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(path);
            } else if meta.is_file() {
                out.insert(rel, std::fs::read(&path).unwrap());
            } else {
                out.insert(rel, b"(special)".to_vec());
            }
        }
    }
    out
}

/// Everything that arrives on the listeners the sandbox must not reach.
#[derive(Default)]
struct Arrivals(Mutex<Vec<String>>);

impl Arrivals {
    fn add(&self, what: String) {
        self.0.lock().unwrap().push(what);
    }
}

fn listen(arrivals: &Arc<Arrivals>, unix_path: &Path, abstract_name: &str) -> (u16, u16) {
    use std::os::linux::net::SocketAddrExt;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unix = std::os::unix::net::UnixListener::bind(unix_path).unwrap();
    let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
    let abstract_socket = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    let ports = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let a = arrivals.clone();
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            a.add(format!("tcp connection from {:?}", stream.peer_addr()));
        }
    });
    let a = arrivals.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buffer) {
            a.add(format!("udp datagram ({n} bytes) from {from}"));
        }
    });
    for listener in [unix, abstract_socket] {
        let a = arrivals.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                a.add(format!("unix connection: {text:?}"));
            }
        });
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_an_agent_wrote_and_ran_gets_nowhere() {
    let sandbox = LocalSandbox::probe();
    let confinement = sandbox.confinement().clone();
    if !confinement.notes.is_empty() {
        assert!(
            std::env::var_os("MAESTRO_ALLOW_WEAK_SANDBOX").is_some(),
            "weaker confinement here: {:?}",
            confinement.notes
        );
        eprintln!("skipped: {:?}", confinement.notes);
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let root = workspace.path();
    GitWorkspace::open_or_init(root).unwrap();
    for dir in ["tests", "src/api/.git/hooks", ".maestro", ".git/hooks", ".git/info"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join(".maestro/config.yaml"), "loop:\n  retries: 1\n").unwrap();
    std::fs::write(root.join("tests/test_attack.py"), SCRIPT).unwrap();
    let secret = |dir: &Path, name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("secret of {name}\n")).unwrap();
        path
    };
    let outside_secret = secret(outside.path(), "outside-secret");
    let data_secret = secret(data.path(), "db-secret");
    let other_secret = secret(other.path(), ".env");
    let unix_socket = outside.path().join("daemon.sock");
    let abstract_name = format!("maestro-attack-{}", std::process::id());
    let survivor = root.join("survived");
    let arrivals = Arc::new(Arrivals::default());
    let (tcp_port, udp_port) = listen(&arrivals, &unix_socket, &abstract_name);
    let targets = serde_json::json!({
        "outside_secret": outside_secret, "outside_dir": outside.path(), "data_secret": data_secret,
        "other_secret": other_secret, "daemon_pid": std::process::id(), "tcp_port": tcp_port,
        "udp_port": udp_port, "unix_socket": unix_socket, "abstract_socket": abstract_name,
        "survivor": survivor,
    });
    std::fs::write(root.join("tests/targets.json"), targets.to_string()).unwrap();
    let protected: Vec<PathBuf> = [".git", ".maestro", "src/api/.git"].iter().map(|p| root.join(p)).collect();
    let before: Vec<_> = protected
        .iter()
        .chain([outside.path().to_path_buf(), data.path().to_path_buf(), other.path().to_path_buf()].iter())
        .map(|p| fingerprint(p))
        .collect();

    let store_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(store_dir.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    ssot.create_project("attack", "", "").await.unwrap();
    let harness = Harness::new(
        Gate::open(root).unwrap(),
        Arc::new(sandbox),
        ssot.clone(),
        "attack",
        Arc::new(Budget::new(BudgetConfig::default())),
        Limits { timeout: Duration::from_secs(60), ..Limits::default() },
    );
    let ctx = ActionContext { loop_id: "loop-1".into(), epoch: 1, agent: "test-1".into(), role: "test".into() };
    let argv = ["python3", "-m", "unittest", "discover", "-s", "tests", "-v"].map(String::from).to_vec();
    let ran = harness.perform(&ctx, Action::RunCommand { argv }, CancellationToken::new()).await.unwrap();
    let ActionOutput::Ran(out) = ran else { panic!("{ran:?}") };
    assert!(out.success(), "the attack script did not run: {out:?}");
    let report: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("report.json")).expect("report.json")).unwrap();
    assert!(report.len() >= 30, "{report:?}");
    let escaped: Vec<String> = report
        .iter()
        .filter(|(_, r)| r["escaped"] == true)
        .map(|(name, r)| format!("{name}: {}", r["detail"]))
        .collect();
    // Judged from outside: what arrived, what survived.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let arrived = arrivals.0.lock().unwrap().clone();
    let after: Vec<_> = protected
        .iter()
        .chain([outside.path().to_path_buf(), data.path().to_path_buf(), other.path().to_path_buf()].iter())
        .map(|p| fingerprint(p))
        .collect();
    let changed: Vec<String> = protected
        .iter()
        .chain([outside.path().to_path_buf(), data.path().to_path_buf(), other.path().to_path_buf()].iter())
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(p, _)| p.display().to_string())
        .collect();
    let details: Vec<String> = report.iter().map(|(name, r)| format!("  {name}: {}", r["detail"])).collect();
    assert!(
        escaped.is_empty() && arrived.is_empty() && changed.is_empty() && !survivor.exists(),
        "escaped: {escaped:#?}\narrived: {arrived:#?}\nchanged: {changed:#?}\nsurvivor: {}\nevery attempt:\n{}\nlayers: {:?}",
        survivor.exists(),
        details.join("\n"),
        confinement.layers,
    );
    // These are refused by the seccomp filter itself, not by chance (no terminal, no target).
    for case in ["TIOCSTI", "ptrace", "mount", "unshare user namespace", "chroot", "vsock"] {
        let detail = report[case]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("Operation not permitted"), "{case}: {detail}");
    }
    // The run is in the execution log.
    let log = ssot.list_log("attack", 0, "", "", 100, "").await.unwrap().items;
    assert!(log.iter().any(|e| e.value.body.action == "run_command" && e.value.body.agent == "test-1"));
}
