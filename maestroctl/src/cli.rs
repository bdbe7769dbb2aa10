//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCandidates;

#[derive(Debug, Parser)]
#[command(
    name = "maestroctl",
    version,
    about = "Drive a Maestro daemon: projects, requirements, contracts, log, memory, locks, snapshots",
    after_help = "With no command, maestroctl reads commands one per line: an interactive REPL on a terminal, \
        a script otherwise.\n\nExamples:\
        \n  maestroctl run --demo\
        \n  maestroctl run \"Build a to-do REST API\"\
        \n  maestroctl -p todo req list -o json",
    args_override_self = true
)]
pub struct Cli {
    /// maestrod address: http://HOST:PORT, https://HOST:PORT or unix:/PATH
    /// [default: the current context's, else your own maestrod on
    /// ~/.maestro/maestrod.sock, started for you when none answers].
    #[arg(long, global = true, env = "MAESTRO_SERVER")]
    pub(crate) server: Option<String>,
    /// PEM CA certificates that sign an https:// server's certificate [default: the system's].
    #[arg(long, global = true, env = "MAESTRO_CA_FILE", value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// A client certificate for a server that asks for one (mutual TLS); needs --tls-key.
    #[arg(long, global = true, env = "MAESTRO_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, global = true, env = "MAESTRO_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Output format: aligned tables for people, JSON or YAML for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table, env = "MAESTRO_OUTPUT")]
    pub(crate) output: Output,
    /// Colour: on terminals unless NO_COLOR is set or TERM=dumb (auto), always, never.
    #[arg(long, global = true, value_enum, default_value_t = crate::color::ColorChoice::Auto, env = "MAESTRO_COLOR")]
    pub(crate) color: crate::color::ColorChoice,
    /// The token maestrod knows you by [default: for the local daemon, its admin
    /// token in ~/.maestro/data/admin.token].
    #[arg(long, global = true, env = "MAESTRO_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The project to act on (for every command but `project` and `info`).
    #[arg(long, short = 'p', global = true, env = "MAESTRO_PROJECT", add = ArgValueCandidates::new(crate::complete::projects))]
    pub(crate) project: Option<String>,
    /// Without one: the REPL.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The arguments as clap reads them. In `config get|set|unset|edit`, a bare
/// `--project` names the project folder's file (the and the README's
/// spelling), not a project id as it does everywhere else: it becomes
/// `--project-file` there.
pub(crate) fn normalize<T: Into<std::ffi::OsString>>(args: impl IntoIterator<Item = T>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let at = args
        .windows(2)
        .position(|pair| pair[0] == "config" && ["get", "set", "unset", "edit"].iter().any(|sub| pair[1] == *sub));
    if let Some(at) = at {
        for arg in &mut args[at + 2..] {
            if arg == "--project" {
                *arg = "--project-file".into();
            }
        }
    }
    args
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
    Yaml,
}

impl Output {
    /// The name `--output` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Output::Table => "table",
            Output::Json => "json",
            Output::Yaml => "yaml",
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, show and delete projects.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl project create todo --name \"To-do service\"\
            \n  maestroctl project list\
            \n  maestroctl project show todo -o yaml"
    )]
    Project(ProjectCmd),
    /// The requirements tree.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl req add \"REST API\" --parent R1 --role backend\
            \n  maestroctl req list -o json\
            \n  maestroctl req set-status R2 done"
    )]
    Req(ReqCmd),
    /// The contract registry.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl contract put todo-api --kind openapi --spec-file api.yaml\
            \n  maestroctl contract list\
            \n  maestroctl contract show todo-api -o yaml"
    )]
    Contract(ContractCmd),
    /// The append-only execution log.
    #[command(subcommand, after_help = "Examples:\n  maestroctl log list --agent backend-1\n  maestroctl log verify")]
    Log(LogCmd),
    /// The newest execution-log entries, one line each; `-f` keeps printing
    /// new ones until Ctrl-C (`-o json`: one object per line).
    #[command(after_help = "Examples:\
            \n  maestroctl logs -f\
            \n  maestroctl logs --agent backend-1 -n 50\
            \n  maestroctl logs --loop loop-3 -o json")]
    Logs {
        /// Keep printing new entries.
        #[arg(short, long)]
        follow: bool,
        /// Only this agent's entries (e.g. backend-1).
        #[arg(long, default_value = "")]
        agent: String,
        /// Only entries about this requirement (e.g. R2).
        #[arg(long, default_value = "", add = ArgValueCandidates::new(crate::complete::requirements))]
        requirement: String,
        /// Only this loop's entries (e.g. loop-3).
        #[arg(long = "loop", default_value = "", add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
        /// How many of the newest entries to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Per-agent memory.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl memory put backend-1 framework fastapi\
            \n  maestroctl memory list backend-1"
    )]
    Memory(MemoryCmd),
    /// Leases and locks.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl lock acquire src/api --holder backend-1\
            \n  maestroctl lock list"
    )]
    Lock(LockCmd),
    /// Snapshots of a project's state.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl snapshot create before-auth\
            \n  maestroctl snapshot diff before-auth\
            \n  maestroctl snapshot restore before-auth"
    )]
    Snapshot(SnapshotCmd),
    /// Follow a project's changes until Ctrl-C.
    #[command(after_help = "Examples:\
            \n  maestroctl watch -p todo\
            \n  maestroctl watch --prefix requirements/\
            \n  maestroctl watch --from-revision 120 -o json")]
    Watch {
        /// Only resources under this path, e.g. "requirements/".
        #[arg(long, default_value = "")]
        prefix: String,
        /// Replay from this revision first (default: only new changes).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Daemon version and store revisions.
    #[command(after_help = "Examples:\n  maestroctl info\n  maestroctl info -o json")]
    Info,
    /// A live view of the project (requirements, contracts, log, loops) on a
    /// terminal; otherwise, or with -o, the daemon's state and the project's
    /// summary, printed once.
    #[command(after_help = "Examples:\
            \n  maestroctl status -p todo\
            \n  maestroctl status --readonly\
            \n  maestroctl status -o json")]
    Status {
        /// No approve/retry/abort from the view.
        #[arg(long)]
        readonly: bool,
    },
    /// The harness policy of a project's workspace.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl policy show\
            \n  maestroctl policy check backend write src/api/x.py"
    )]
    Policy(PolicyCmd),
    /// Make PATH (default: here) a Maestro project: writes .maestro/config.yaml
    /// with commented defaults, registers the project, initialises git. Safe to repeat.
    #[command(after_help = "Examples:\n  maestroctl init\n  maestroctl init ~/code/todo")]
    Init { path: Option<PathBuf> },
    /// Run a task: it becomes the root requirement and an AutoLoop works it
    /// until done. Exit code: 0 succeeded, 2 escalated, 3 failed, aborted or
    /// cancelled, 1 usage or connection error, 130 detached by Ctrl-C.
    #[command(after_help = "Examples:\
            \n  maestroctl run \"Build a to-do REST API\"\
            \n  maestroctl run --demo\
            \n  maestroctl run \"Write add(a, b)\" --record .maestro/recordings/add.jsonl --detach")]
    Run(RunArgs),
    /// The scripted demo (`run --demo`): a to-do service built in ./maestro-demo.
    #[command(after_help = "Examples:\
            \n  maestroctl demo\
            \n  maestroctl demo --workspace /tmp/maestro-demo --detach\
            \n  maestroctl demo --cancel-on-exit")]
    Demo {
        #[command(flatten)]
        follow: FollowArgs,
        /// Where to build it (must not exist or be empty) [default: ./maestro-demo].
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Print the loop id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Follow a loop's progress (from its first event unless --from-seq).
    #[command(after_help = "Examples:\
            \n  maestroctl attach loop-3\
            \n  maestroctl attach loop-3 --from-seq 40\
            \n  maestroctl attach loop-3 --cancel-on-exit")]
    Attach {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
        /// Start at this event sequence number.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Loops: list and show.
    #[command(subcommand, after_help = "Examples:\n  maestroctl loop list\n  maestroctl loop show loop-3")]
    Loop(LoopCmd),
    /// Accept an ESCALATED loop's failed epoch as it is.
    #[command(after_help = "Examples:\n  maestroctl approve loop-3")]
    Approve {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
    /// Roll an ESCALATED loop back and plan again with your guidance.
    #[command(after_help = "Examples:\
            \n  maestroctl retry loop-3\
            \n  maestroctl retry loop-3 -g \"keep the SQLite store; only fix the tests\"")]
    Retry {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
        /// What the planner should do differently (goes into the SSOT and the next PLAN).
        #[arg(long, short = 'g', default_value = "")]
        guidance: String,
    },
    /// Stop an ESCALATED loop, its workspace back at the last commit.
    #[command(after_help = "Examples:\n  maestroctl abort loop-3")]
    Abort {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
    /// Stop a loop now: agents stop, the workspace goes back to the last commit.
    #[command(after_help = "Examples:\n  maestroctl cancel loop-3")]
    Cancel {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
    /// Hold a loop at its next phase boundary.
    #[command(after_help = "Examples:\n  maestroctl pause loop-3")]
    Pause {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
    /// Let a paused loop go on.
    #[command(after_help = "Examples:\n  maestroctl resume loop-3")]
    Resume {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
    /// maestroctl's settings and where each comes from (default: show).
    #[command(after_help = "Examples:\
            \n  maestroctl config\
            \n  maestroctl config set output json\
            \n  maestroctl config keys")]
    Config {
        #[command(subcommand)]
        cmd: Option<ConfigCmd>,
    },
    /// Your own local daemon (~/.maestro): start, stop, restart, status, logs.
    /// Only the daemon of your data dir is touched, never another user's.
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl daemon status\
            \n  maestroctl daemon restart\
            \n  maestroctl daemon logs -f"
    )]
    Daemon(DaemonCmd),
    /// The daemon's users: add (prints the token once), list, revoke. Needs the
    /// admin role in the projects concerned (or over the daemon).
    #[command(
        subcommand,
        after_help = "Examples:\
            \n  maestroctl user add alice -p todo --role viewer\
            \n  maestroctl user list\
            \n  maestroctl user revoke alice"
    )]
    User(UserCmd),
    /// Print a shell completion script: `source <(maestroctl completions bash)`
    /// (zsh: into a directory on $fpath as _maestroctl; fish: into
    /// ~/.config/fish/completions/maestroctl.fish).
    #[command(after_help = "Examples:\n  maestroctl completions bash\n  maestroctl completions zsh")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Named servers with their CA and token (in ~/.maestro/contexts.yaml, 0600).
    #[command(after_help = "Examples:\
            \n  maestroctl context add team --server https://maestro.example:7700 --use\
            \n  maestroctl context list\
            \n  maestroctl context use --none")]
    Context {
        #[command(subcommand)]
        cmd: ContextCmd,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DaemonCmd {
    /// Start it (nothing to do when it runs already).
    #[command(after_help = "Examples:\n  maestroctl daemon start")]
    Start,
    /// Stop it: in-flight writes finish and the store is flushed (SIGTERM).
    #[command(after_help = "Examples:\n  maestroctl daemon stop")]
    Stop,
    /// Stop it and start it again; the data stays.
    #[command(after_help = "Examples:\n  maestroctl daemon restart")]
    Restart,
    /// Whether it runs, its pid, socket, data dir and version. Exit 0 running, 3 not running.
    #[command(after_help = "Examples:\n  maestroctl daemon status\n  maestroctl daemon status -o json")]
    Status,
    /// Its log (~/.maestro/maestrod.log).
    #[command(after_help = "Examples:\
            \n  maestroctl daemon logs\
            \n  maestroctl daemon logs -n 200\
            \n  maestroctl daemon logs -f")]
    Logs {
        /// Keep printing what it logs until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user with a role in --project (or in every project with --all);
    /// prints the token on stdout, the only time it is shown.
    #[command(after_help = "Examples:\
            \n  maestroctl user add alice -p todo\
            \n  maestroctl user add bob -p todo --role viewer\
            \n  maestroctl user add ops --role admin --all")]
    Add {
        name: String,
        /// viewer (read, watch), developer (write, run loops) or admin.
        #[arg(long, default_value = "developer")]
        role: String,
        /// The role in every project, and over the daemon itself.
        #[arg(long)]
        all: bool,
    },
    /// The users you manage and their roles (never their tokens).
    #[command(after_help = "Examples:\n  maestroctl user list\n  maestroctl user list -p todo -o json")]
    List,
    /// Remove a user: its token stops working at once.
    #[command(after_help = "Examples:\n  maestroctl user revoke alice")]
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContextCmd {
    /// Add (or replace) a context from --server and, when given, --ca-file,
    /// --token (or MAESTRO_TOKEN), --tls-cert and --tls-key.
    #[command(after_help = "Examples:\
            \n  maestroctl context add team --server https://maestro.example:7700 --ca-file ca.pem --use\
            \n  maestroctl context add staging --server unix:/run/maestro/maestrod.sock")]
    Add {
        name: String,
        /// Make it the current context too.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make NAME the current context: commands without --server use its server,
    /// CA and token. `--none` goes back to the local daemon.
    #[command(after_help = "Examples:\n  maestroctl context use team\n  maestroctl context use --none")]
    Use {
        #[arg(required_unless_present = "none")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        none: bool,
    },
    /// The contexts (tokens never shown).
    #[command(after_help = "Examples:\n  maestroctl context list\n  maestroctl context list -o yaml")]
    List,
    /// Forget a context.
    #[command(after_help = "Examples:\n  maestroctl context remove staging")]
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCmd {
    /// server, project, output and color in effect, with their sources: flag,
    /// env MAESTRO_*, the project folder's .maestro/config.yaml,
    /// ~/.maestro/config.yaml, default.
    #[command(after_help = "Examples:\n  maestroctl config\n  maestroctl config show -o json")]
    Show,
    /// A key's value (exit 1 when it is not set): from ~/.maestro/config.yaml,
    /// or with --project from the project folder's .maestro/config.yaml.
    #[command(after_help = "Examples:\n  maestroctl config get server\n  maestroctl config get --project llm.model")]
    Get {
        key: String,
        #[command(flatten)]
        layer: Layer,
    },
    /// Set a key, checked against what it takes (`maestroctl config keys`
    /// lists them): in ~/.maestro/config.yaml, or with --project in the
    /// project folder's .maestro/config.yaml (comments and layout kept).
    #[command(after_help = "Examples:\
            \n  maestroctl config set output json\
            \n  maestroctl config set --project llm.provider anthropic\
            \n  maestroctl config set --project loop.test_command '[npm, test]'")]
    Set {
        key: String,
        value: String,
        #[command(flatten)]
        layer: Layer,
    },
    /// Remove a key (any key, also a misspelt one, so a broken file can be fixed).
    #[command(after_help = "Examples:\
            \n  maestroctl config unset server\
            \n  maestroctl config unset --project llm.model")]
    Unset {
        key: String,
        #[command(flatten)]
        layer: Layer,
    },
    /// Open the file in $VISUAL or $EDITOR (default vi), then check it.
    #[command(after_help = "Examples:\n  maestroctl config edit\n  maestroctl config edit --project")]
    Edit {
        #[command(flatten)]
        layer: Layer,
    },
    /// Every key of both files: what it takes and what it does.
    #[command(after_help = "Examples:\n  maestroctl config keys\n  maestroctl config keys -o json")]
    Keys,
}

/// Which file a `config` command works on.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct Layer {
    /// The project folder's .maestro/config.yaml (found at or above here)
    /// instead of ~/.maestro/config.yaml. Written `--project`: in config
    /// commands it takes no value (name a project with -p).
    #[arg(long = "project-file", visible_alias = "in-project")]
    pub(crate) project_file: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// What to build, in plain words (optional with --demo).
    pub(crate) task: Option<String>,
    /// Run the scripted demo: no model needed.
    #[arg(long)]
    pub(crate) demo: bool,
    /// The project folder [default: the folder holding .maestro/ at or above
    /// here; for --demo, a new ./maestro-demo].
    #[arg(long)]
    pub(crate) workspace: Option<PathBuf>,
    /// Print the loop id and return at once.
    #[arg(long)]
    pub(crate) detach: bool,
    /// Record every model exchange of the loop to FILE (inside the project folder),
    /// for `llm.provider: replay` with `llm.replay_file`.
    #[arg(long, value_name = "FILE")]
    pub(crate) record: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) follow: FollowArgs,
}

#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct FollowArgs {
    /// Cancel the loop on Ctrl-C instead of detaching from it.
    #[arg(long)]
    pub(crate) cancel_on_exit: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LoopCmd {
    /// The loops of --project (of every project without it).
    #[command(after_help = "Examples:\n  maestroctl loop list\n  maestroctl loop list -p todo --limit 10")]
    List {
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// One loop's state.
    #[command(after_help = "Examples:\n  maestroctl loop show loop-3\n  maestroctl loop show loop-3 -o json")]
    Show {
        #[arg(add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Roles, deny lists, validator rules and sandbox confinement.
    #[command(after_help = "Examples:\n  maestroctl policy show -p todo\n  maestroctl policy show -o yaml")]
    Show,
    /// The harness's decision for one action, without running it: prints
    /// `allow` (exit 0) or `deny: <rule>: <reason>` (exit 1).
    #[command(after_help = "Examples:\
            \n  maestroctl policy check backend write src/api/x.py\
            \n  maestroctl policy check review read .maestro/config.yaml\
            \n  maestroctl policy check test run -- pytest -q")]
    Check {
        /// planning, backend, frontend, test, review, contract-validator, or a configured role.
        role: String,
        #[command(subcommand)]
        action: PolicyAction,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyAction {
    /// Read PATH.
    #[command(after_help = "Examples:\n  maestroctl policy check review read src/api/x.py")]
    Read { path: String },
    /// List the directory PATH.
    #[command(after_help = "Examples:\n  maestroctl policy check frontend list src/")]
    List { path: String },
    /// Write PATH, its content (--content-file) checked by the validators.
    #[command(after_help = "Examples:\
            \n  maestroctl policy check backend write src/api/x.py\
            \n  maestroctl policy check frontend write src/api/x.py --content-file x.py")]
    Write {
        path: String,
        /// The content to validate (default: empty).
        #[arg(long)]
        content_file: Option<PathBuf>,
    },
    /// Delete PATH.
    #[command(after_help = "Examples:\n  maestroctl policy check backend delete .maestro/config.yaml")]
    Delete { path: String },
    /// `run -- ARGV…`
    #[command(after_help = "Examples:\
            \n  maestroctl policy check test run -- pytest -q\
            \n  maestroctl policy check backend run -- curl https://example.com")]
    Run {
        #[arg(last = true, required = true, num_args = 1..)]
        argv: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCmd {
    /// Register a project.
    #[command(after_help = "Examples:\
            \n  maestroctl project create todo\
            \n  maestroctl project create todo --name \"To-do service\" --workspace /srv/todo")]
    Create {
        /// Lowercase letters, digits, '-', '_' and '.'.
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Absolute path of the project's workspace.
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// The projects you can see.
    #[command(after_help = "Examples:\n  maestroctl project list\n  maestroctl project list -o json")]
    List,
    /// One project's details.
    #[command(after_help = "Examples:\n  maestroctl project show todo\n  maestroctl project show todo -o yaml")]
    Show {
        #[arg(add = ArgValueCandidates::new(crate::complete::projects))]
        id: String,
    },
    /// Delete the project and all of its data (asks first; --yes does not).
    #[command(after_help = "Examples:\n  maestroctl project delete todo\n  maestroctl project delete todo --yes")]
    Delete {
        #[arg(add = ArgValueCandidates::new(crate::complete::projects))]
        id: String,
        #[arg(long, default_value = "")]
        etag: String,
        /// Do not ask (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReqStatus {
    Pending,
    Claimed,
    InProgress,
    Done,
    Failed,
    Blocked,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReqCmd {
    /// Add a requirement.
    #[command(after_help = "Examples:\
            \n  maestroctl req add \"REST API\" --parent R1 --role backend\
            \n  maestroctl req add \"Delete a to-do\" --parent R1 --accept \"returns 204\" --depends-on R2")]
    Add {
        title: String,
        #[arg(long, default_value = "", add = ArgValueCandidates::new(crate::complete::requirements))]
        parent: String,
        #[arg(long, short = 'd', default_value = "")]
        description: String,
        /// Role hint: backend, frontend, test, review, planning, ...
        #[arg(long, default_value = "")]
        role: String,
        /// An acceptance criterion (repeatable).
        #[arg(long = "accept")]
        acceptance: Vec<String>,
        /// A requirement this one depends on (repeatable).
        #[arg(long = "depends-on", add = ArgValueCandidates::new(crate::complete::requirements))]
        depends_on: Vec<String>,
    },
    /// List requirements as a tree.
    #[command(after_help = "Examples:\
            \n  maestroctl req list\
            \n  maestroctl req list --status pending\
            \n  maestroctl req list --revision 42 -o json")]
    List {
        #[arg(long, value_enum)]
        status: Option<ReqStatus>,
        /// Read as of this store revision.
        #[arg(long, default_value_t = 0)]
        revision: u64,
    },
    /// Requirements ready to be claimed (PENDING, dependencies DONE).
    #[command(after_help = "Examples:\n  maestroctl req ready\n  maestroctl req ready -p todo -o json")]
    Ready,
    /// One requirement.
    #[command(after_help = "Examples:\n  maestroctl req show R2\n  maestroctl req show R2 -o yaml")]
    Show {
        #[arg(add = ArgValueCandidates::new(crate::complete::requirements))]
        id: String,
    },
    /// Move a requirement along its state machine.
    #[command(after_help = "Examples:\
            \n  maestroctl req set-status R2 in-progress --assignee backend-1\
            \n  maestroctl req set-status R2 blocked --reason \"waiting for todo-api\"\
            \n  maestroctl req set-status R2 done")]
    SetStatus {
        #[arg(add = ArgValueCandidates::new(crate::complete::requirements))]
        id: String,
        #[arg(value_enum)]
        status: ReqStatus,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = "")]
        assignee: String,
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// Add or remove dependencies.
    #[command(after_help = "Examples:\n  maestroctl req depend R3 --on R2\n  maestroctl req depend R3 --remove R2")]
    Depend {
        #[arg(add = ArgValueCandidates::new(crate::complete::requirements))]
        id: String,
        /// Make ID depend on these (repeatable).
        #[arg(long = "on")]
        add: Vec<String>,
        /// Drop these dependencies (repeatable).
        #[arg(long)]
        remove: Vec<String>,
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// Delete a requirement.
    #[command(after_help = "Examples:\n  maestroctl req delete R3")]
    Delete {
        #[arg(add = ArgValueCandidates::new(crate::complete::requirements))]
        id: String,
        #[arg(long, default_value = "")]
        etag: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ContractKind {
    Openapi,
    Protobuf,
    JsonSchema,
    FunctionSignature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ContractStatus {
    Draft,
    Proposed,
    Accepted,
    Violated,
    Deprecated,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContractCmd {
    /// Store a new version of a contract.
    #[command(after_help = "Examples:\
            \n  maestroctl contract put todo-api --kind openapi --spec-file api.yaml --owner backend-1\
            \n  maestroctl contract put todo-api --kind openapi --spec-file api.yaml --status proposed")]
    Put {
        name: String,
        #[arg(long, value_enum)]
        kind: ContractKind,
        /// File holding the spec ("-" for standard input).
        #[arg(long, conflicts_with = "spec")]
        spec_file: Option<PathBuf>,
        /// The spec inline.
        #[arg(long)]
        spec: Option<String>,
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long = "consumer")]
        consumers: Vec<String>,
        /// Initial status: draft or proposed.
        #[arg(long, value_enum, default_value_t = ContractStatus::Draft)]
        status: ContractStatus,
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// The latest version of each contract.
    #[command(after_help = "Examples:\n  maestroctl contract list\n  maestroctl contract list -o json")]
    List,
    /// One version of a contract, with its spec.
    #[command(after_help = "Examples:\
            \n  maestroctl contract show todo-api\
            \n  maestroctl contract show todo-api --version 2 -o yaml")]
    Show {
        name: String,
        /// A specific version (default: the latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Every version of one contract.
    #[command(after_help = "Examples:\n  maestroctl contract versions todo-api")]
    Versions { name: String },
    /// Change a contract version's status.
    #[command(after_help = "Examples:\
            \n  maestroctl contract set-status todo-api accepted\
            \n  maestroctl contract set-status todo-api violated --version 2 --reason \"GET /todos returns 500\"")]
    SetStatus {
        name: String,
        #[arg(value_enum)]
        status: ContractStatus,
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogCmd {
    /// Log entries, oldest first.
    #[command(after_help = "Examples:\
            \n  maestroctl log list --agent backend-1\
            \n  maestroctl log list --loop loop-3 --limit 50\
            \n  maestroctl log list --from 100 -o json")]
    List {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long = "loop", default_value = "", add = ArgValueCandidates::new(crate::complete::loops))]
        loop_id: String,
        /// At most this many entries (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Check the hash chain; exits 1 if it is broken.
    #[command(after_help = "Examples:\n  maestroctl log verify -p todo")]
    Verify,
    /// Append an entry (for scripts and annotations).
    #[command(after_help = "Examples:\
            \n  maestroctl log append note --agent human --target R2 --detail \"checked by hand\"")]
    Append {
        action: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value = "")]
        outcome: String,
        #[arg(long, default_value = "")]
        detail: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemoryCmd {
    /// Store a value under an agent's key.
    #[command(after_help = "Examples:\
            \n  maestroctl memory put backend-1 framework fastapi\
            \n  maestroctl memory put backend-1 scratch \"half done\" --ttl 3600")]
    Put {
        agent: String,
        key: String,
        value: String,
        /// Seconds until the entry expires (0: never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// An agent's value for a key.
    #[command(after_help = "Examples:\n  maestroctl memory get backend-1 framework")]
    Get { agent: String, key: String },
    /// Memory entries (of every agent without AGENT).
    #[command(after_help = "Examples:\n  maestroctl memory list\n  maestroctl memory list backend-1 -o json")]
    List {
        /// Only this agent's entries.
        agent: Option<String>,
    },
    /// Remove an agent's key.
    #[command(after_help = "Examples:\n  maestroctl memory delete backend-1 scratch")]
    Delete { agent: String, key: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LockCmd {
    /// Take a lock (with a new lease unless --lease is given).
    #[command(after_help = "Examples:\
            \n  maestroctl lock acquire src/api --holder backend-1\
            \n  maestroctl lock acquire src/api --holder backend-1 --ttl 60")]
    Acquire {
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long, default_value_t = 30)]
        ttl: u64,
        #[arg(long, default_value_t = 0)]
        lease: u64,
    },
    /// Release a lock held under a lease.
    #[command(after_help = "Examples:\n  maestroctl lock release src/api --lease 7587")]
    Release {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    /// The locks held and their leases.
    #[command(after_help = "Examples:\n  maestroctl lock list\n  maestroctl lock list -o json")]
    List,
    /// Extend a lease by its TTL.
    #[command(after_help = "Examples:\n  maestroctl lock keep-alive 7587")]
    KeepAlive { lease: u64 },
    /// Revoke a lease, releasing its locks.
    #[command(after_help = "Examples:\n  maestroctl lock revoke 7587")]
    Revoke { lease: u64 },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Take a snapshot of the project's state.
    #[command(after_help = "Examples:\
            \n  maestroctl snapshot create before-auth\
            \n  maestroctl snapshot create before-auth --git-commit 3f2a1c9 --description \"before auth work\"")]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        git_commit: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The project's snapshots.
    #[command(after_help = "Examples:\n  maestroctl snapshot list")]
    List,
    /// What changed from one snapshot to another (or to now).
    #[command(after_help = "Examples:\
            \n  maestroctl snapshot diff before-auth\
            \n  maestroctl snapshot diff before-auth after-auth")]
    Diff { from: String, to: Option<String> },
    /// Make a snapshot's requirements, contracts and memory current again
    /// (asks first; --yes does not).
    #[command(after_help = "Examples:\
            \n  maestroctl snapshot restore before-auth\
            \n  maestroctl snapshot restore before-auth --yes")]
    Restore {
        name: String,
        /// Do not ask (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Delete a snapshot.
    #[command(after_help = "Examples:\n  maestroctl snapshot delete before-auth")]
    Delete { name: String },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command says what it does in one line and shows how it is used,
    /// and every example it shows is a command line maestroctl accepts.
    #[test]
    fn every_command_has_a_description_and_examples_that_parse() {
        fn walk(command: &clap::Command, path: &str, problems: &mut Vec<String>, examples: &mut usize) {
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none_or(|about| about.to_string().trim().is_empty()) {
                    problems.push(format!("{name}: no description"));
                }
                let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                if !after.contains("Examples:\n  maestroctl ") {
                    problems.push(format!("{name}: no examples in --help"));
                }
                for line in after.lines().filter_map(|l| l.strip_prefix("  ")).filter(|l| l.starts_with("maestroctl")) {
                    *examples += 1;
                    let words = shlex::split(line).unwrap_or_default();
                    if let Err(error) = Cli::command().try_get_matches_from(normalize(words)) {
                        problems.push(format!("{name}: example `{line}` does not parse: {}", error.kind()));
                    }
                }
                walk(sub, &name, problems, examples);
            }
        }
        let mut problems = Vec::new();
        let mut examples = 0;
        walk(&Cli::command(), "maestroctl", &mut problems, &mut examples);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(examples > 60, "only {examples} examples");
    }

    #[test]
    fn a_bare_project_flag_in_config_names_the_file() {
        let args = normalize(["maestroctl", "config", "set", "--project", "llm.model", "m"]);
        assert_eq!(args[3], "--project-file");
        let args = normalize(["maestroctl", "--project", "todo", "req", "list"]);
        assert_eq!(args[1], "--project", "elsewhere it is the project id");
    }
}
