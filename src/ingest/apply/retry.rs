//! Retrying a PostgreSQL phase while its failure is transient: backoff with jitter, consumption
//! paused meanwhile, loud logs when only an operator can end it.

use super::*;

impl Applier {
    /// One PostgreSQL phase with retries on transient errors. `Ok(None)`: saved, fates set, the
    /// part queued for LMDB. `Ok(Some(e))`: a data error to isolate.
    pub(super) async fn save_with_retry<S: Sink>(
        &mut self,
        sink: &S,
        chunk: &mut Chunk,
        applied: &mut Applied,
    ) -> Result<Option<StoreError>, ApplyError> {
        let mut backoff = self.backoff();
        loop {
            // Drop what is no longer ours before each attempt: after a revocation the next owner
            // writes it (the stores' offsets make that exactly-once either way).
            let mut k = 0;
            while k < chunk.items.len() {
                let i = chunk.idx[k];
                if sink.owns(i) {
                    k += 1;
                } else {
                    applied.fates[i] = Fate::Abandoned;
                    chunk.idx.remove(k);
                    chunk.items.remove(k);
                }
            }
            if chunk.items.is_empty() {
                self.recovered(&backoff);
                return Ok(None);
            }
            match self.store.save_postgres(&chunk.items).await {
                Ok(Saved::Refused(refused)) => {
                    // Dead-lettered first (their partitions' offsets will pass them), then the
                    // rest of the chunk is saved again without them.
                    let mut gone: Vec<usize> = refused.iter().map(|(k, _)| *k).collect();
                    let letters = refused
                        .into_iter()
                        .map(|(k, rejection)| (chunk.idx[k], rejection))
                        .collect();
                    self.reject(sink, letters, applied).await?;
                    gone.sort_unstable();
                    for k in gone.into_iter().rev() {
                        chunk.idx.remove(k);
                        chunk.items.remove(k);
                    }
                }
                Ok(Saved::Committed(phase)) => {
                    if phase.outcomes.len() != chunk.items.len() {
                        return Err(ApplyError::Fatal(format!(
                            "internal error: the store returned {} outcomes for {} envelopes",
                            phase.outcomes.len(),
                            chunk.items.len()
                        )));
                    }
                    for ((&i, item), &o) in chunk.idx.iter().zip(&chunk.items).zip(&phase.outcomes)
                    {
                        if o == Outcome::Replay {
                            let h = &item.envelope.header;
                            tracing::warn!(
                                key_id = %mask(&h.key_id),
                                nonce = %mask(&h.nonce),
                                event_type = %h.event_type,
                                position = ?sink.position(i).map(ToString::to_string),
                                "replay caught (seth.caught): (key_id, nonce) already used by another envelope"
                            );
                        }
                        applied.fates[i] = Fate::Done(o);
                    }
                    applied
                        .saved
                        .push((std::mem::take(&mut chunk.items), phase));
                    self.saved_something();
                    self.recovered(&backoff);
                    return Ok(None);
                }
                Err(e) => match e.class() {
                    ErrorClass::Transient => {
                        self.retrying(&e, chunk.items.len());
                        self.back_off(&mut backoff, e.cause(), &mut applied.report)
                            .await?;
                    }
                    ErrorClass::Message => {
                        self.recovered(&backoff);
                        return Ok(Some(e));
                    }
                    ErrorClass::Fatal => {
                        tracing::error!(error = %e, cause = e.cause(), "store write failed and retrying cannot help; stopping without committing");
                        return Err(ApplyError::Fatal(format!("store: {e}")));
                    }
                },
            }
        }
    }

    pub(super) fn backoff(&self) -> Backoff {
        Backoff::new(self.retry.base, self.retry.max)
    }

    /// Says a transient failure is being retried; loudly when only an operator can end it.
    pub(super) fn retrying(&self, e: &StoreError, envelopes: usize) {
        if e.needs_operator() {
            tracing::error!(error = %e, cause = e.cause(), envelopes, "store write failed; retrying the same batch (offsets do not move) until an operator makes room for LMDB");
        } else {
            tracing::warn!(error = %e, cause = e.cause(), envelopes, "store write failed; retrying the same batch (offsets do not move)");
        }
    }

    /// Pauses consumption and waits before the next attempt; `Aborted` on a hard stop, `Fatal`
    /// once the attempts allowed are spent.
    pub(super) async fn back_off(
        &mut self,
        backoff: &mut Backoff,
        cause: &'static str,
        report: &mut IngestReport,
    ) -> Result<(), ApplyError> {
        if self
            .retry
            .attempts
            .is_some_and(|max| backoff.attempts() + 1 >= max)
        {
            return Err(ApplyError::Fatal(format!(
                "still failing after {} attempts ({cause})",
                backoff.attempts() + 1
            )));
        }
        report.retries += 1;
        metrics::counter!(names::RETRIES, "cause" => cause).increment(1);
        if let Some(pause) = &self.pause {
            pause.set(PauseFlags::RETRYING, true);
            metrics::gauge!(names::PAUSED).set(1.0);
        }
        let delay = backoff.next_delay(&mut self.rng);
        tokio::select! {
            _ = self.abort.cancelled() => Err(ApplyError::Aborted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    pub(super) fn recovered(&self, backoff: &Backoff) {
        if backoff.attempts() > 0 {
            if let Some(pause) = &self.pause {
                pause.set(PauseFlags::RETRYING, false);
                metrics::gauge!(names::PAUSED).set(0.0);
            }
            tracing::info!(
                attempts = backoff.attempts(),
                "recovered after retries; resuming"
            );
        }
    }
}
