//! The global allocator both binaries use (mimalloc), and the one setting this project changes.
//!
//! mimalloc 3 returns freed memory to the OS ("purges" it) a second after it became free by
//! default (`purge_delay` 1000 ms in its options.c; its header still says 10). The worker frees
//! whole batches at a time (up to `batch.max_in_flight` × `batch.max_records` envelopes, each with
//! its decoded parts and its COPY rows), so with that delay the pages of several batches stay
//! resident at once: a backlog of 220,000 envelopes (append layout, verification on) peaked at
//! 261–303 MiB of anonymous memory, against 183–213 MiB when freed pages are purged at once (and
//! 204–219 MiB after 10 ms), with the same throughput (README, Performance). So the binaries purge
//! at once, unless the operator set `MIMALLOC_PURGE_DELAY` (mimalloc reads its `MIMALLOC_*`
//! variables when it starts, before `main`, and those win).

/// mimalloc's `mi_option_purge_delay`: its position in mimalloc 3's `mi_option_e` (deprecated
/// options keep their slots, so the numbers do not move); `libmimalloc-sys` does not name it. The
/// unit test below checks the number against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable through which an operator chooses the delay instead.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Applies the allocator settings above; call first in `main`.
pub fn configure() {
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        set_purge_delay_ms(0);
    }
}

/// The purge delay in effect, in milliseconds (-1: never purge).
#[cfg(test)]
fn purge_delay_ms() -> i64 {
    // SAFETY: reading an option by its number has no preconditions; mimalloc initialises its
    // options on first use.
    #[allow(unsafe_code)]
    let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    // c_long is i64 here and i32 on some targets.
    #[allow(clippy::useless_conversion)]
    i64::from(v)
}

fn set_purge_delay_ms(ms: i32) {
    // SAFETY: setting an option has no preconditions and may happen at any time (mimalloc reads
    // the delay each time it schedules a purge).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms.into())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its default (1000 ms in mimalloc 3's
    /// options.c) until set, and what `configure` sets afterwards. (The unit tests run under the
    /// system allocator, but the options live in the linked mimalloc all the same.)
    #[test]
    fn configure_purges_freed_memory_at_once_unless_the_operator_chose() {
        if std::env::var_os(PURGE_DELAY_VAR).is_some() {
            configure();
            assert_ne!(
                purge_delay_ms(),
                0,
                "an operator's MIMALLOC_PURGE_DELAY must win"
            );
            return;
        }
        assert_eq!(
            purge_delay_ms(),
            1000,
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
        );
        configure();
        assert_eq!(purge_delay_ms(), 0);
    }
}
