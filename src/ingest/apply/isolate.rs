//! Isolating the message a database error is about: the chunk is split, left half first, until
//! the message is alone, and a refusal is dead-lettered `store_rejected` only once another message
//! of the batch was tried and passed (otherwise the cause is the database's: stop).

use super::*;

impl Applier {
    /// Saves the valid items; a database error caused by the data of one message (not a
    /// transient one) splits the chunk until that message is alone, then it is dead-lettered.
    pub(super) async fn save_isolating<S: Sink>(
        &mut self,
        sink: &S,
        chunk: Chunk,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        // Depth-first, left half first: items are saved in consumption order, so a partition's
        // applied offset never passes a message that is still undecided.
        let mut stack = vec![chunk];
        while let Some(mut chunk) = stack.pop() {
            match self.save_with_retry(sink, &mut chunk, applied).await? {
                None => {}
                Some(e) if chunk.items.len() == 1 => {
                    // A witness: the next message still to save. Refused the same way, the cause
                    // is the database's.
                    let witness = stack.last().and_then(|c| c.items.first()).cloned();
                    self.refusal_is_the_messages(&e, witness).await?;
                    let i = chunk.idx[0];
                    match sink.position(i) {
                        Some(p) => {
                            tracing::warn!(position = %p, error = %e, "the database refuses this message; dead-lettering it")
                        }
                        None => {
                            tracing::warn!(id = %chunk.items[0].envelope.header.id, error = %e, "the database refuses this message")
                        }
                    }
                    let refusal = Rejection::new(Reason::StoreRejected, e.to_string());
                    self.reject(sink, vec![(i, refusal)], applied).await?;
                }
                Some(_) => {
                    let mid = chunk.items.len() / 2;
                    let right = Chunk {
                        idx: chunk.idx.split_off(mid),
                        items: chunk.items.split_off(mid),
                    };
                    stack.push(right);
                    stack.push(chunk);
                }
            }
        }
        Ok(())
    }

    /// Stops ([`ApplyError::Fatal`]) unless the database's refusal `e` of one message is that
    /// message's own: another message (`witness`) must not fail the same way in a rolled-back
    /// transaction, and no more than [`MAX_SAME_STORE_REFUSALS`] messages in a row may be refused
    /// for the same cause.
    pub(super) async fn refusal_is_the_messages(
        &mut self,
        e: &StoreError,
        witness: Option<Item>,
    ) -> Result<(), ApplyError> {
        let cause = e.to_string();
        let systemic = |why: &str| {
            tracing::error!(error = %e, "{why}; stopping without committing");
            ApplyError::Fatal(format!(
                "the database refuses every message the same way ({why}): {e} — not a message's \
                 fault (a constraint added, a sequence reset?); nothing was dead-lettered for it or committed"
            ))
        };
        if let Some(witness) = witness {
            match self.store.probe(std::slice::from_ref(&witness)).await {
                Err(w) if w.to_string() == cause => {
                    return Err(systemic("another message of the batch fails alike"))
                }
                Ok(()) | Err(_) => {}
            }
        }
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.cause == cause {
            r.in_a_row += 1;
        } else {
            r.cause = cause;
            r.in_a_row = 1;
        }
        if r.in_a_row >= MAX_SAME_STORE_REFUSALS {
            return Err(systemic(&format!(
                "{} messages in a row refused for this cause",
                r.in_a_row
            )));
        }
        Ok(())
    }

    /// A save went through: the refusals before it were the messages' own.
    pub(super) fn saved_something(&self) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.in_a_row = 0;
    }
}
