//! Offsets only for durable files: a cut segment's files uploaded off the
//! loop, in order per partition, and the offset committed (with the cut
//! recorded first) once they are durable.

use super::*;

impl Sink<'_> {
    /// Cuts the open segment of `k` at `end` and queues its files.
    pub(super) fn seal(&mut self, k: &(Arc<str>, i32), end: i64) -> Result<(), RuntimeError> {
        let Some(part) = self.parts.get_mut(k) else {
            return Ok(());
        };
        let key = SourceKey {
            source: part.topic.clone(),
            partition: Some(part.partition),
        };
        let files = self
            .writer
            .seal_and_take(&key, end)
            .map_err(RuntimeError::Archive)?;
        let bytes = files.iter().map(|f| f.bytes.len() as u64).sum();
        part.queue.push_back(Sealed {
            start: part.open_start.unwrap_or(end),
            end,
            files,
            marks: part.marks.clone(),
            bytes,
        });
        part.open_start = None;
        part.open_first_ts = None;
        part.forced_end = None;
        Ok(())
    }

    /// Upload results: a completed segment becomes durable.
    pub(super) fn collect(&mut self) -> Result<(), RuntimeError> {
        while let Ok(d) = self.rx.try_recv() {
            let k = (d.topic.clone(), d.partition);
            let Some(part) = self.parts.get_mut(&k) else {
                continue;
            };
            if part.gen != d.gen {
                continue;
            }
            part.uploading = false;
            match d.result {
                Ok(()) => {
                    if let Some(s) = part.queue.pop_front() {
                        let m = &self.shared.metrics;
                        m.archive_files
                            .fetch_add(s.files.len() as u64, Ordering::Relaxed);
                        m.archive_bytes.fetch_add(s.bytes, Ordering::Relaxed);
                        tracing::debug!(
                            stage = "archive",
                            topic = %part.topic,
                            partition = part.partition,
                            from = s.start,
                            end = s.end,
                            files = s.files.len(),
                            bytes = s.bytes,
                            "archive segment durable"
                        );
                        part.durable = Some(s.end);
                        part.durable_marks = s.marks;
                    }
                }
                Err((key, source)) => {
                    return Err(RuntimeError::Archive(ArchiveError::Store { key, source }));
                }
            }
        }
        Ok(())
    }

    /// Per partition: commits what it wants committed, then starts the
    /// upload of its next segment once its cut is committed.
    pub(super) fn advance(
        &mut self,
        consumer: &BaseConsumer<StageContext>,
    ) -> Result<(), RuntimeError> {
        for part in self.parts.values_mut() {
            loop {
                let desired = part.desired();
                if desired.is_some() && desired != part.committed {
                    if part.commit_retry_at.is_some_and(|t| Instant::now() < t) {
                        break;
                    }
                    let Some((offset, cut)) = desired else {
                        break;
                    };
                    match commit(consumer, part, offset, cut) {
                        Ok(()) => {
                            part.committed = desired;
                            part.commit_retry_at = None;
                            self.shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_rebalance() || e.class() == ErrorClass::Retryable => {
                            tracing::debug!(stage = "archive", error = %e, "commit left for later");
                            part.commit_retry_at = Some(Instant::now() + COMMIT_RETRY);
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if part.uploading {
                    break;
                }
                let Some(head) = part.queue.front() else {
                    break;
                };
                if part.committed != Some((part.durable.unwrap_or(head.start), Some(head.end))) {
                    break;
                }
                if head.files.is_empty() {
                    // Nothing to upload: durable at once.
                    if let Some(s) = part.queue.pop_front() {
                        part.durable = Some(s.end);
                        part.durable_marks = s.marks;
                    }
                    continue;
                }
                part.uploading = true;
                let files = head.files.clone();
                let done = Done {
                    topic: part.topic.clone(),
                    partition: part.partition,
                    gen: part.gen,
                    result: Ok(()),
                };
                let tx = self.tx.clone();
                let store = self.store.clone();
                let retry = self.shared.cfg.archive.retry;
                let metrics = self.shared.metrics.clone();
                self.shared.io.spawn(async move {
                    let result = upload(&store, files, retry, move || metrics.has_fatal()).await;
                    let _ = tx.send(Done { result, ..done });
                });
                break;
            }
        }
        Ok(())
    }
}

/// Commits `offset` of `part` with the metadata of its marks as of
/// `offset` and the cut `cut`.
pub(super) fn commit(
    consumer: &BaseConsumer<StageContext>,
    part: &Part,
    offset: i64,
    cut: Option<i64>,
) -> Result<(), RuntimeError> {
    // The marks as of `offset`: those of the durable offset, or, before
    // anything is durable, those restored at assignment.
    let meta = encode_meta(&part.durable_marks, cut);
    if meta.len() > META_MAX_BYTES {
        tracing::warn!(
            stage = "archive",
            topic = %part.topic,
            partition = part.partition,
            bytes = meta.len(),
            "archive offset metadata above the broker's default bound (offset.metadata.max.bytes)"
        );
    }
    let mut tpl = TopicPartitionList::new();
    let mut e = tpl.add_partition(&part.topic, part.partition);
    e.set_offset(Offset::Offset(offset))
        .map_err(|e| kafka("commit", e))?;
    e.set_metadata(meta);
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| kafka("commit offsets", e))
}

/// Uploads `files` in order; a retryable error is retried with the backoff
/// of `[archive.retry]` (no bound on attempts: the partition waits, paused
/// by `[archive.uploads]`) until `give_up` says the instance is stopping
/// with a fatal error.
pub(super) async fn upload(
    store: &Store,
    files: Vec<SealedFile>,
    retry: crate::archive::RetryPolicy,
    give_up: impl Fn() -> bool,
) -> Result<(), (String, StoreError)> {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(retry.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(retry.max_backoff_ms))
        .with_factor(2.0)
        .without_max_times();
    for f in files {
        let key = f.key.clone();
        let started = std::time::Instant::now();
        let put = || store.put(&f.key, f.bytes.clone());
        put.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &StoreError| e.is_retryable() && !give_up())
            .notify(|e: &StoreError, wait: Duration| {
                tracing::warn!(key = %key, ?wait, error = %e, "archive upload failed; retrying");
            })
            .await
            .map_err(|e| (f.key.clone(), e))?;
        crate::runtime::observe::upload(started.elapsed());
    }
    Ok(())
}
