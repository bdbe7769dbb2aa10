//! The Landlock rules of a command: its view (`layout`) as kernel rules —
//! read only what the view shows, write only in the workspace, the run's
//! temp dir and `/dev/shm`, use the view's devices — and, where the kernel
//! has scopes, no signals and no abstract Unix sockets outside the sandbox.
//! Inside a private root this is a second fence; without one it is the fence.

use std::os::fd::BorrowedFd;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope, path_beneath_rules,
};

use super::layout::View;

/// The Landlock ABI this code is written against; newer kernels are used at this level.
const ABI_VERSION: ABI = ABI::V6;

pub(super) fn ruleset(view: &View) -> Result<RulesetCreated, String> {
    let all = AccessFs::from_all(ABI_VERSION);
    let read = AccessFs::from_read(ABI_VERSION);
    let device = AccessFs::from_write(ABI_VERSION) | AccessFs::ReadFile;
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(view.readable(), read)))
        .and_then(|r| r.add_rules(path_beneath_rules(view.writable(), all)))
        .and_then(|r| r.add_rules(path_beneath_rules(view.devices(), device)))
        .map_err(|e| e.to_string())
}

/// Mounts made in the jailed child after the ruleset (a rule on a mount point
/// does not cover what is mounted on it), with what the command may do there.
pub(super) const CHILD_MOUNTS: [(&std::ffi::CStr, bool); 3] = [(c"/proc", false), (c"/tmp", true), (c"/dev/shm", true)];

/// Adds a rule for a directory the child opened (`writable`: every right; else reading).
/// Called in the jailed child: a system call on a descriptor it owns.
pub(super) fn allow(ruleset: RulesetCreated, dir: BorrowedFd<'_>, writable: bool) -> Result<RulesetCreated, ()> {
    let access = if writable { AccessFs::from_all(ABI_VERSION) } else { AccessFs::from_read(ABI_VERSION) };
    ruleset.add_rule(PathBeneath::new(dir, access)).map_err(drop)
}
