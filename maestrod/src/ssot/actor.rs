//! Who makes a change: the authenticated user of an API call, a loop
//! (`loop-3`) for what the loop and its agents write, or the daemon itself
//! (`maestrod`) for maintenance. The API layer and the loop runner set it for
//! the task they run; the store records it with each revision it commits, and
//! reads return it as `modified_by`.

use std::future::Future;

tokio::task_local! {
    static ACTOR: String;
}

/// The actor of changes made by the daemon's own maintenance.
pub const DAEMON: &str = "maestrod";

/// Runs `future` with `actor` as the author of the changes it makes.
pub async fn scope<F: Future>(actor: String, future: F) -> F::Output {
    ACTOR.scope(actor, future).await
}

/// The actor of the current task, if one was set.
pub fn current() -> Option<String> {
    ACTOR.try_with(Clone::clone).ok()
}

/// The actor of the current task, or the daemon.
pub fn current_or_daemon() -> String {
    current().unwrap_or_else(|| DAEMON.to_string())
}
