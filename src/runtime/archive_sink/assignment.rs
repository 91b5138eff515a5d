//! Partitions assigned to and revoked from the sink: a new owner starts at
//! the committed offset with its marks, and cuts where a recorded cut says.

use super::*;

impl Sink<'_> {
    pub(super) fn handle_events(
        &mut self,
        consumer: &BaseConsumer<StageContext>,
    ) -> Result<(), RuntimeError> {
        let events: Vec<Event> = match consumer.context().events.lock() {
            Ok(mut ev) => std::mem::take(&mut *ev),
            Err(_) => return Err(RuntimeError::Stage("archive", "poisoned lock".into())),
        };
        for ev in events {
            match ev {
                Event::Revoked(parts) => {
                    tracing::info!(stage = "archive", partitions = ?parts, "partitions revoked");
                    for (t, p) in parts {
                        let k: (Arc<str>, i32) = (Arc::from(t.as_str()), p);
                        if let Some(part) = self.parts.remove(&k) {
                            self.writer.discard_source(&part.key());
                        }
                    }
                }
                Event::Assigned(parts) => {
                    self.assign(consumer, &parts)?;
                    tracing::info!(stage = "archive", partitions = ?parts, "partitions assigned");
                }
            }
        }
        Ok(())
    }

    pub(super) fn assign(
        &mut self,
        consumer: &BaseConsumer<StageContext>,
        parts: &[(String, i32)],
    ) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        let committed = in_place(self.shared, "archive", "read committed offsets", || {
            let got = consumer
                .committed_offsets(tpl.clone(), CALL_TIMEOUT)
                .map_err(|e| kafka("read committed offsets", e))?;
            crate::runtime::takeover::answered(&got)?;
            Ok(got)
        })?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            let meta = e.metadata();
            let (marks, cut) = match decode_meta(meta) {
                Some(m) => m,
                None => {
                    if !meta.is_empty() {
                        tracing::warn!(
                            stage = "archive",
                            topic = e.topic(),
                            partition = e.partition(),
                            metadata = meta,
                            "committed offset metadata not the archive sink's: ignored"
                        );
                    }
                    (Marks::default(), None)
                }
            };
            let forced_end = match (offset, cut) {
                (Some(o), Some(c)) if c > o => Some(c),
                _ => None,
            };
            if let Some(end) = forced_end {
                tracing::info!(
                    stage = "archive",
                    topic = e.topic(),
                    partition = e.partition(),
                    from = offset,
                    end,
                    "a previous owner cut a segment here: writing it again, cut at the same record"
                );
            }
            self.gen += 1;
            let topic: Arc<str> = Arc::from(e.topic());
            let part = Part {
                topic: topic.clone(),
                partition: e.partition(),
                gen: self.gen,
                durable: offset,
                durable_marks: marks.clone(),
                committed: offset.map(|o| (o, forced_end)),
                commit_retry_at: None,
                marks,
                forced_end,
                open_start: None,
                open_first_ts: None,
                last: None,
                queue: VecDeque::new(),
                uploading: false,
                paused: false,
            };
            // A partition assigned again (after a failed attempt) starts afresh.
            self.writer.discard_source(&part.key());
            self.parts.insert((topic, e.partition()), part);
        }
        Ok(())
    }
}
