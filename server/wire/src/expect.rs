//! What the backend still owes, in order: the replies to the client's messages
//! (forwarded), to the front door's own (swallowed), and the messages the front
//! door answers itself (sent to the client when their turn comes).

use std::collections::VecDeque;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::prepared::Statement;

/// Replies that end a Parse, Bind, Close, Describe, Execute, Sync or Query.
pub(crate) const PARSE: &[u8] = b"1";
pub(crate) const BIND: &[u8] = b"2";
pub(crate) const CLOSE: &[u8] = b"3";
pub(crate) const DESCRIBE: &[u8] = b"Tn";
pub(crate) const EXECUTE: &[u8] = b"CIs";
pub(crate) const READY: &[u8] = b"Z";

/// One thing the backend owes, or the front door must say, in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Replies to a client message, forwarded, up to one whose tag is in `ends`.
    Reply { ends: &'static [u8] },
    /// Replies to a Query the front door sent (session settings, reset):
    /// swallowed, up to its ReadyForQuery.
    Hidden,
    /// Replies to the front door's probe of a backend's session (settings and
    /// what pins it): rows read, the rest swallowed.
    Probe,
    /// A message the front door answers itself.
    Synthetic(Bytes),
    /// The ParseComplete of a named statement's Parse: forwarded if the client
    /// sent it (`visible`), swallowed if the front door did.
    Parse(Arc<Statement>, bool),
    /// The CloseComplete of a Close the front door sent (statement id).
    InjectedClose(u64),
}

impl Expect {
    fn is_sync(&self) -> bool {
        matches!(self, Expect::Reply { ends } if *ends == READY)
    }
}

/// What to do with a backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Forward,
    Swallow,
    /// A ReadyForQuery forwarded, with the transaction status.
    Ready(u8),
    /// An error in reply to the front door's own Query: swallowed.
    HiddenError,
    /// A row of the probe's answer (for the session to read).
    ProbeRow,
    /// The probe's answer is complete.
    ProbeDone,
}

/// A backend message nobody asked for.
#[derive(Debug, thiserror::Error)]
#[error("the server sent '{}' where '{expected}' was due", char::from(*.tag))]
pub(crate) struct Unexpected {
    pub tag: u8,
    pub expected: String,
}

/// What the backend's replies change in what the backend has prepared.
pub(crate) trait Prepared {
    /// The backend does not have statement `id` after all (its Parse was skipped).
    fn lost(&mut self, id: u64);
    /// The backend still has `id` (its Close was skipped).
    fn kept(&mut self, id: u64);
}

/// The queue of what the backend owes.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: VecDeque<Expect>,
    /// The backend reported an error and skips the client's messages until the
    /// next Sync: so does the front door.
    pub skipping: bool,
}

impl Queue {
    pub(crate) fn push(&mut self, expect: Expect) {
        self.items.push_back(expect);
    }

    /// Whether rows the backend sends now go to the client (the front is a
    /// client message's reply, not the front door's own).
    pub(crate) fn forwards_rows(&self) -> bool {
        matches!(self.items.front(), Some(Expect::Reply { .. }))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Moves the front door's own answers that are due now into `out`.
    pub(crate) fn flush_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(_)) = self.items.front() {
            if let Some(Expect::Synthetic(bytes)) = self.items.pop_front() {
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Decides what a backend message is, and moves on.
    pub(crate) fn on_backend(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut impl Prepared,
    ) -> Result<Action, Unexpected> {
        let front = self.items.front();
        let hidden = matches!(front, Some(Expect::Hidden | Expect::Probe));
        match tag {
            b'A' => return Ok(Action::Forward),
            b'N' | b'S' => {
                return Ok(if hidden {
                    Action::Swallow
                } else {
                    Action::Forward
                });
            }
            b'E' => return Ok(self.on_error(prepared)),
            b'G' if matches!(front, Some(Expect::Reply { ends }) if *ends == EXECUTE) => {
                // COPY FROM STDIN by Execute: the server ignores a Sync sent
                // before CopyDone, so it owes no ReadyForQuery for it.
                if let Some(at) = self.items.iter().skip(1).position(Expect::is_sync) {
                    self.items.remove(at + 1);
                }
                return Ok(Action::Forward);
            }
            _ => {}
        }
        let unexpected = |expected: &str| Unexpected {
            tag,
            expected: expected.to_owned(),
        };
        match front {
            Some(Expect::Reply { ends }) => {
                if ends.contains(&tag) {
                    self.items.pop_front();
                }
                if tag == b'Z' {
                    return Ok(Action::Ready(body.first().copied().unwrap_or(b'I')));
                }
                Ok(Action::Forward)
            }
            Some(Expect::Hidden) => {
                if tag == b'Z' {
                    self.items.pop_front();
                }
                Ok(Action::Swallow)
            }
            Some(Expect::Probe) => Ok(match tag {
                b'D' => Action::ProbeRow,
                b'Z' => {
                    self.items.pop_front();
                    Action::ProbeDone
                }
                _ => Action::Swallow,
            }),
            Some(Expect::Parse(statement, visible)) if tag == b'1' => {
                statement.valid.store(true, Ordering::Relaxed);
                let visible = *visible;
                self.items.pop_front();
                Ok(if visible {
                    Action::Forward
                } else {
                    Action::Swallow
                })
            }
            Some(Expect::InjectedClose(_)) if tag == b'3' => {
                self.items.pop_front();
                Ok(Action::Swallow)
            }
            Some(other) => Err(unexpected(&format!("{other:?}"))),
            None => Err(unexpected("nothing")),
        }
    }

    /// An ErrorResponse: in a Query it is one of its replies; in the extended
    /// protocol the server now skips to the next Sync, and what it skipped owes
    /// nothing (a skipped Parse the front door sent was not prepared after all).
    fn on_error(&mut self, prepared: &mut impl Prepared) -> Action {
        match self.items.front() {
            Some(Expect::Hidden | Expect::Probe) => return Action::HiddenError,
            Some(Expect::Reply { ends }) if *ends == READY => return Action::Forward,
            _ => {}
        }
        while let Some(item) = self.items.front() {
            if item.is_sync() {
                return Action::Forward;
            }
            match self.items.pop_front() {
                Some(Expect::Parse(statement, _)) => prepared.lost(statement.id),
                Some(Expect::InjectedClose(id)) => prepared.kept(id),
                _ => {}
            }
        }
        self.skipping = true;
        Action::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Backend {
        lost: Vec<u64>,
        kept: Vec<u64>,
    }

    impl Prepared for Backend {
        fn lost(&mut self, id: u64) {
            self.lost.push(id);
        }
        fn kept(&mut self, id: u64) {
            self.kept.push(id);
        }
    }

    fn run(queue: &mut Queue, replies: &[u8]) -> Vec<Action> {
        let mut backend = Backend::default();
        replies
            .iter()
            .map(|&tag| queue.on_backend(tag, b"I", &mut backend).expect("expected"))
            .collect()
    }

    fn statement(sql: &[u8]) -> Arc<Statement> {
        crate::prepared::PoolStatements::default().get(sql)
    }

    #[test]
    fn injected_parse_is_swallowed_and_synthetic_replies_keep_their_turn() {
        let mut q = Queue::default();
        let s = statement(b"SELECT 1\0\0\0");
        q.push(Expect::Parse(Arc::clone(&s), false));
        q.push(Expect::Reply { ends: BIND });
        q.push(Expect::Reply { ends: EXECUTE });
        q.push(Expect::Synthetic(Bytes::from_static(b"3\0\0\0\x04")));
        q.push(Expect::Reply { ends: READY });
        let actions = run(&mut q, b"12DDC");
        use Action::*;
        assert_eq!(actions, [Swallow, Forward, Forward, Forward, Forward]);
        assert!(s.valid.load(Ordering::Relaxed), "prepared once: valid");
        let mut out = BytesMut::new();
        q.flush_synthetic(&mut out);
        assert_eq!(&out[..], b"3\0\0\0\x04");
        assert_eq!(run(&mut q, b"Z"), [Ready(b'I')]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_mid_pipeline_skips_to_sync() {
        let mut q = Queue::default();
        q.push(Expect::Reply { ends: BIND });
        let s = statement(b"SELECT 7\0\0\0");
        q.push(Expect::Parse(Arc::clone(&s), false));
        q.push(Expect::InjectedClose(3));
        q.push(Expect::Reply { ends: EXECUTE });
        q.push(Expect::Reply { ends: READY });
        q.push(Expect::Reply { ends: PARSE });
        q.push(Expect::Reply { ends: READY });
        let mut backend = Backend::default();
        assert_eq!(
            q.on_backend(b'E', b"", &mut backend).unwrap(),
            Action::Forward
        );
        assert_eq!(backend.lost, [s.id]);
        assert!(!s.valid.load(Ordering::Relaxed));
        assert_eq!(backend.kept, [3]);
        assert!(!q.skipping);
        assert_eq!(
            run(&mut q, b"Z1Z"),
            [Action::Ready(b'I'), Action::Forward, Action::Ready(b'I')]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_before_the_sync_arrived_skips_the_clients_next_messages() {
        let mut q = Queue::default();
        q.push(Expect::Reply { ends: PARSE });
        let mut backend = Backend::default();
        q.on_backend(b'E', b"", &mut backend).unwrap();
        assert!(q.skipping);
        assert!(q.is_empty());
    }

    #[test]
    fn errors_in_a_query_do_not_skip_and_hidden_replies_are_swallowed() {
        let mut q = Queue::default();
        q.push(Expect::Hidden);
        q.push(Expect::Reply { ends: READY });
        use Action::*;
        assert_eq!(run(&mut q, b"SCZ"), [Swallow, Swallow, Swallow]);
        assert_eq!(
            run(&mut q, b"TDCECZ"),
            [Forward, Forward, Forward, Forward, Forward, Ready(b'I')]
        );
    }

    #[test]
    fn extended_copy_in_owes_no_ready_for_its_first_sync() {
        let mut q = Queue::default();
        q.push(Expect::Reply { ends: BIND });
        q.push(Expect::Reply { ends: EXECUTE });
        q.push(Expect::Reply { ends: READY });
        // The client then sends CopyData, CopyDone, Sync.
        assert_eq!(run(&mut q, b"2G"), [Action::Forward, Action::Forward]);
        q.push(Expect::Reply { ends: READY });
        assert_eq!(run(&mut q, b"CZ"), [Action::Forward, Action::Ready(b'I')]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_reply_nobody_asked_for_is_an_error() {
        let mut q = Queue::default();
        let mut backend = Backend::default();
        assert!(q.on_backend(b'D', b"", &mut backend).is_err());
    }
}
