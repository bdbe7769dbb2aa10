//! `maestro.v1.WatchService`: a project's committed changes from any retained revision.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use maestro_shared::v1::{self, watch_service_server::WatchService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::{IntoStatus, store_status};
use crate::ssot::store::{Event, EventKind};
use crate::ssot::{Ssot, keys, validate};

pub(crate) struct Watch(pub(crate) Arc<Ssot>);

/// Bookkeeping records (`_meta/…`) are internal; watchers see resources only.
const INTERNAL: &str = "_meta/";

fn wire_event(project: &str, event: Event) -> Option<v1::WatchEvent> {
    let key = String::from_utf8_lossy(&event.kv.key).into_owned();
    let path = keys::resource_path(project, &key);
    if path.starts_with(INTERNAL) {
        return None;
    }
    Some(v1::WatchEvent {
        r#type: match event.kind {
            EventKind::Put => v1::EventType::Put,
            EventKind::Delete => v1::EventType::Delete,
        } as i32,
        key: convert::resource_path(path),
        value_json: String::from_utf8_lossy(&event.kv.value).into_owned(),
        mod_revision: event.kv.mod_revision,
        create_revision: event.kv.create_revision,
        version: event.kv.version,
    })
}

/// Most bytes of events in one message, well below gRPC's 4 MiB default
/// limit: a watcher that fell behind, or a revision that changed many large
/// resources, gets several messages, never one too big to read.
const MESSAGE_BYTES: usize = 2 << 20;

/// Splits one batch (events in revision order, covering through `revision`)
/// into messages of at most `limit` bytes of events (one event larger than
/// that travels alone). Each message's `revision` is the newest revision it
/// completes: after any message, resuming from its `revision + 1` misses
/// nothing (a revision split across messages is sent again whole).
fn split(events: Vec<v1::WatchEvent>, revision: u64, limit: usize) -> Vec<v1::WatchResponse> {
    use prost::Message;
    let mut messages: Vec<Vec<v1::WatchEvent>> = Vec::new();
    let mut size = 0;
    for event in events {
        let len = event.encoded_len() + 8;
        match messages.last_mut() {
            Some(current) if size + len <= limit => current.push(event),
            _ => {
                messages.push(vec![event]);
                size = 0;
            }
        }
        size += len;
    }
    let firsts: Vec<Option<u64>> = messages.iter().skip(1).map(|m| m.first().map(|e| e.mod_revision)).collect();
    messages
        .into_iter()
        .enumerate()
        .map(|(i, events)| {
            let last = events.last().map_or(revision, |e| e.mod_revision);
            let covered = match firsts.get(i) {
                None => revision,
                // The next message continues this revision: only the one before it is complete.
                Some(Some(next)) if *next == last => last - 1,
                Some(_) => last,
            };
            v1::WatchResponse { events, revision: covered, start_revision: 0 }
        })
        .collect()
}

#[tonic::async_trait]
impl WatchService for Watch {
    type WatchStream = BoxStream<'static, Result<v1::WatchResponse, Status>>;

    async fn watch(&self, request: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        self.0.get_project(&r.project_id).await.status()?;
        validate::text("prefix", &r.prefix, 1024, false).status()?;
        let prefix = keys::in_project(&r.project_id, &r.prefix);
        // The start is pinned here, so the first message says exactly where events begin
        // (a remote store's own "next revision" would be decided a round trip later).
        let current = self.0.store().current_revision().await.map_err(|e| store_status(&e))?;
        let start = if r.start_revision == 0 { current + 1 } else { r.start_revision };
        let events = self.0.store().watch(prefix.into_bytes(), start).map_err(|e| store_status(&e))?;
        // The first message confirms the watch and says where it starts.
        let hello = v1::WatchResponse { events: Vec::new(), revision: start - 1, start_revision: start };
        let project = r.project_id;
        let stream = futures::stream::once(async move { Ok(hello) }).chain(events.flat_map(move |batch| {
            let items = match batch {
                Ok(batch) => {
                    let events: Vec<_> = batch.events.into_iter().filter_map(|e| wire_event(&project, e)).collect();
                    split(events, batch.revision, MESSAGE_BYTES).into_iter().map(Ok).collect()
                }
                Err(error) => vec![Err(store_status(&error))],
            };
            futures::stream::iter(items)
        }));
        Ok(Response::new(stream.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, bytes: usize) -> v1::WatchEvent {
        v1::WatchEvent { mod_revision: revision, value_json: "x".repeat(bytes), ..Default::default() }
    }

    #[test]
    fn big_batches_become_messages_under_the_limit() {
        // Revision 7 holds three large events, 8 one small, 9 one huge, 10 two small.
        let events = || vec![event(7, 400), event(7, 400), event(7, 400), event(8, 10), event(9, 2000), event(10, 10)];
        let messages = split(events(), 12, 1000);
        let shape: Vec<Vec<u64>> = messages.iter().map(|m| m.events.iter().map(|e| e.mod_revision).collect()).collect();
        assert_eq!(shape, [vec![7, 7], vec![7, 8], vec![9], vec![10]], "revision 7 is split to stay under the limit");
        assert_eq!(messages.iter().map(|m| m.events.len()).sum::<usize>(), 6, "nothing lost");
        for m in &messages {
            let bytes: usize = m.events.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= 1000 || m.events.len() == 1, "over the limit only as one event: {bytes}");
        }
        let revisions: Vec<u64> = messages.iter().map(|m| m.revision).collect();
        assert_eq!(revisions, [6, 8, 9, 12], "each says what it completes; the first leaves revision 7 open");
        assert_eq!(split(events(), 12, 1 << 20).len(), 1, "a small batch stays one message");
        assert!(split(Vec::new(), 3, 1000).is_empty(), "no events, no message");
    }

    #[test]
    fn resuming_after_any_message_misses_nothing() {
        let events: Vec<_> = (0..40).map(|i| event(5 + i / 7, 90 + (i as usize % 5) * 40)).collect();
        let messages = split(events.clone(), 20, 500);
        for (i, message) in messages.iter().enumerate() {
            // What a watcher has after message i, plus a fresh watch from revision + 1.
            let mut got: Vec<_> = messages[..=i].iter().flat_map(|m| m.events.clone()).collect();
            got.retain(|e| e.mod_revision <= message.revision);
            got.extend(events.iter().filter(|e| e.mod_revision > message.revision).cloned());
            assert_eq!(got, events, "resuming after message {i} (revision {})", message.revision);
        }
    }
}
