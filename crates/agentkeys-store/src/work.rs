//! A unit of work for a backend's writer: run against a [`Tx`], then told whether the
//! transaction holding it committed. [`typed`] wraps a closure so its caller gets the closure's
//! own result type back, checked by the compiler, and only after the commit.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tokio::sync::oneshot;

use crate::{Result, StoreError, Tx};

/// Only [`typed`] makes works (the trait is sealed), so every work catches its own closure's
/// panic and a backend's writer need not guard against any other implementation.
pub trait Work: Send + sealed::Sealed {
    /// Does the work inside an open transaction. An error means everything this call wrote
    /// must be rolled back (the backend runs each work in a savepoint of a batch).
    fn run(&mut self, tx: &mut dyn Tx) -> Result<()>;
    /// Called once the transaction ended: `Ok` when it committed, else why not.
    fn finish(self: Box<Self>, committed: Result<()>);
}

mod sealed {
    pub trait Sealed {}
}

impl<F, R> sealed::Sealed for Typed<F, R> {}

struct Typed<F, R> {
    f: Option<F>,
    /// What `f` returned; an error here is `f`'s own and is answered as is.
    result: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

pub(crate) fn typed<R, F>(f: F) -> (Box<dyn Work>, oneshot::Receiver<Result<R>>)
where
    F: FnOnce(&mut dyn Tx) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let work = Typed {
        f: Some(f),
        result: None,
        reply,
    };
    (Box::new(work), answer)
}

impl<F, R> Work for Typed<F, R>
where
    F: FnOnce(&mut dyn Tx) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn run(&mut self, tx: &mut dyn Tx) -> Result<()> {
        let Some(f) = self.f.take() else {
            return Err(StoreError::Database("a unit of work ran twice".into()));
        };
        // A panic in the broker's closure must not take the shared writer down with it: it
        // fails this work alone and its writes are rolled back.
        let result = catch_unwind(AssertUnwindSafe(|| f(tx))).unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the transaction's work panicked; nothing of it was written".into(),
            ))
        });
        let failed = result
            .as_ref()
            .err()
            .map(|e| StoreError::Database(e.to_string()));
        self.result = Some(result);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let answer = match (committed, self.result) {
            (Err(e), Some(Ok(_))) => Err(e),
            (_, Some(result)) => result,
            (Err(e), None) => Err(e),
            (Ok(()), None) => Err(StoreError::Database("a unit of work never ran".into())),
        };
        let _ = self.reply.send(answer);
    }
}
