//! Where a program's tensor work runs. rayon runs a parallel loop called from outside its pool
//! by handing the loop to a worker thread and parking the caller until the loop is done: a
//! futex wake, a sleep and a wake-up around every parallel kernel, hundreds of them per
//! training step (moving a 1-thread DDPM step onto a worker made it 4–10% faster). Called from a
//! worker, the same loop splits in place, and on one thread runs straight through. Programs
//! run their tensor work on a worker with [`on_worker`]: the `kiln` binary, `step_rate` and
//! the training-step bench do.

/// Stack size of the global pool's threads where [`on_worker`] builds the pool: what a main
/// thread has on Linux, so work moved off the main thread keeps its stack (rayon's default
/// is Rust's 2 MiB).
const STACK_SIZE: usize = 8 << 20;

/// Runs `f` on a worker thread of rayon's global pool and returns what it returns; inline
/// when called on a worker of any rayon pool already (inside `ThreadPool::install`, or from
/// another `on_worker`). Builds the global pool first if nothing has yet (its size as
/// rayon's default: `RAYON_NUM_THREADS`, else every logical CPU). A panic in `f` goes on
/// unwinding in the caller.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // An error here only means the global pool was built before, with its own settings.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_SIZE)
        .build_global();
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        let outside = rayon::current_thread_index();
        let (inside, value) = on_worker(|| (rayon::current_thread_index(), 42));
        assert_eq!(value, 42);
        assert!(inside.is_some(), "ran on a worker");
        // Test threads are not rayon's: the call moved.
        assert!(outside.is_none());
    }

    #[test]
    fn runs_inline_on_a_worker_of_another_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (before, inside) = pool.install(|| {
            let before = std::thread::current().id();
            (before, on_worker(|| std::thread::current().id()))
        });
        assert_eq!(before, inside);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("in the worker")));
        let message = caught.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"in the worker"));
    }
}
