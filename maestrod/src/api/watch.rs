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

#[tonic::async_trait]
impl WatchService for Watch {
    type WatchStream = BoxStream<'static, Result<v1::WatchResponse, Status>>;

    async fn watch(&self, request: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        self.0.get_project(&r.project_id).await.status()?;
        validate::text("prefix", &r.prefix, 1024, false).status()?;
        let prefix = keys::in_project(&r.project_id, &r.prefix);
        let current = self.0.store().status().revision;
        let events = self.0.store().watch(prefix.into_bytes(), r.start_revision).map_err(|e| store_status(&e))?;
        let start = if r.start_revision == 0 { current + 1 } else { r.start_revision };
        // The first message confirms the watch and says where it starts.
        let hello = v1::WatchResponse { events: Vec::new(), revision: start - 1, start_revision: start };
        let project = r.project_id;
        let stream = futures::stream::once(async move { Ok(hello) }).chain(events.filter_map(move |batch| {
            let item = match batch {
                Ok(batch) => {
                    let events: Vec<_> = batch.events.into_iter().filter_map(|e| wire_event(&project, e)).collect();
                    (!events.is_empty()).then_some(Ok(v1::WatchResponse {
                        events,
                        revision: batch.revision,
                        start_revision: 0,
                    }))
                }
                Err(error) => Some(Err(store_status(&error))),
            };
            futures::future::ready(item)
        }));
        Ok(Response::new(stream.boxed()))
    }
}
