//! The Landlock rules of a command: its view (`layout`) as kernel rules —
//! read only what the view shows, write only in the workspace, the run's
//! temp dir and `/dev/shm`, use the view's devices — and, where the kernel
//! has scopes, no signals and no abstract Unix sockets outside the sandbox.
//! Inside a private root this is a second fence; without one it is the fence.

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
    path_beneath_rules,
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
