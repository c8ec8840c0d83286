//! Argon2id hashing on a fixed set of threads, one per core, fed by a queue: a flood
//! of sign-ins waits in line instead of allocating 19 MiB per request until memory
//! runs out, and async workers never block.
//!
//! The queue is bounded: a caller first reserves a `Slot` (a place in line or on a
//! core); when every slot is taken it gets none and answers 503 with `Retry-After`
//! instead of queueing work it would wait seconds for. A queued job whose requester
//! has gone is skipped, not computed: the request future was dropped, or it stopped
//! waiting after `max_wait` (HTTP/1 handlers are not cancelled when a client hangs
//! up, so the deadline is what bounds waiting for someone who left).
//!
//! Memory: each argon2 thread keeps one 19 MiB work area and reuses it for every
//! hash (argon2's `hash_password_into_with_memory`), so the process holds exactly
//! `threads × m` for hashing however many requests arrive. Letting the crate allocate
//! per hash on tokio's blocking pool was measured here at 370 MiB–1.1 GiB RSS under
//! load (allocator retention across many threads); this design stays near 60 MiB.

use std::cell::RefCell;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::crypto;

use crate::domain::Password;
use crate::metrics::Metrics;
use crate::settings::Argon2Cost;

type Job = Box<dyn FnOnce() + Send>;

pub struct PasswordHasher {
    params: Params,
    /// Jobs for the argon2 threads; they exit when this (the only sender) is dropped.
    queue: Mutex<mpsc::Sender<Job>>,
    /// One permit per job waiting or running: the bound on the queue.
    room: Arc<Semaphore>,
    /// How long a caller waits for its result before giving up (and its job, if not
    /// yet started, is skipped).
    max_wait: std::time::Duration,
    /// A real hash of a random password, verified against when the account does not
    /// exist, so a missing user costs the same time as a wrong password.
    dummy_hash: String,
    metrics: Arc<Metrics>,
}

impl PasswordHasher {
    /// `concurrency` threads compute; at most `queue_limit` jobs wait or run at once.
    pub fn new(
        cost: Argon2Cost,
        concurrency: usize,
        queue_limit: usize,
        max_wait: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| anyhow!("argon2 parameters: {e}"))?;
        // On a short-lived thread, so its work area is freed with it.
        let dummy_hash = {
            let params = params.clone();
            std::thread::spawn(move || hash_with(&params, &crypto::random_token()))
                .join()
                .map_err(|_| anyhow!("argon2 start-up hash panicked"))??
        };
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..concurrency.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking the next job.
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the hasher is gone
                        }
                    }
                })
                .context("starting argon2 threads")?;
        }
        Ok(Self {
            params,
            queue: Mutex::new(sender),
            room: Arc::new(Semaphore::new(queue_limit.max(concurrency).max(1))),
            max_wait,
            dummy_hash,
            metrics,
        })
    }

    /// A place in the queue, or `None` when it is full: then the caller must not
    /// start work that needs a hash (and answers 503), rather than wait in a line
    /// that only grows.
    pub fn reserve(&self) -> Option<Slot> {
        self.room.clone().try_acquire_owned().ok().map(Slot)
    }

    /// PHC string (`$argon2id$v=19$m=…`) of a new password.
    pub async fn hash(&self, slot: Slot, password: &Password) -> Result<String, HashError> {
        let params = self.params.clone();
        let secret = password.expose().to_string();
        self.run(slot, move || hash_with(&params, &secret))
            .await?
            .map_err(HashError::Failed)
    }

    /// Whether `password` matches `stored`; with `None` (no such account) it does the
    /// same work against the dummy hash and answers false.
    pub async fn verify(
        &self,
        slot: Slot,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<bool, HashError> {
        let (hash, real) = match stored {
            Some(h) => (h.to_string(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let secret = password.expose().to_string();
        let matched = self.run(slot, move || verify_with(&secret, &hash)).await?;
        Ok(real && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        slot: Slot,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        let metrics = self.metrics.clone();
        metrics.argon2_waiting.inc();
        let job: Job = Box::new(move || {
            // The slot is given back when the job ends, computed or skipped.
            let _slot = slot;
            metrics.argon2_waiting.dec();
            if done.is_closed() {
                // Nobody is waiting for the answer: the request was dropped.
                metrics.argon2_skipped.inc();
                return;
            }
            metrics.argon2_running.inc();
            let value = work();
            metrics.argon2_running.dec();
            let _ = done.send(value);
        });
        self.queue
            .lock()
            .map_err(|_| HashError::Failed(anyhow!("argon2 queue poisoned")))?
            .send(job)
            .map_err(|_| HashError::Failed(anyhow!("argon2 threads stopped")))?;
        match tokio::time::timeout(self.max_wait, result).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(HashError::Failed(anyhow!("argon2 job dropped"))),
            // Dropping `result` here is what makes the job skip itself.
            Err(_) => Err(HashError::TimedOut),
        }
    }
}

/// Why a hash could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Waited longer than `max_wait` in the queue: the server is overloaded.
    #[error("password hashing queue wait exceeded")]
    TimedOut,
    #[error("password hashing failed")]
    Failed(#[source] anyhow::Error),
}

/// A reserved place in the argon2 queue (see `PasswordHasher::reserve`).
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

thread_local! {
    /// This thread's argon2 work area, kept between hashes.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn argon2id_into(
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    MEMORY.with_borrow_mut(|memory| {
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
    })
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for a new password.
fn hash_with(params: &Params, secret: &str) -> anyhow::Result<String> {
    let salt = crypto::random_bytes::<16>();
    let mut out = [0u8; 32];
    argon2id_into(params, secret.as_bytes(), &salt, &mut out)
        .map_err(|e| anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| anyhow!("argon2 params: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow!("argon2 salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Checks `secret` against a stored PHC string with the parameters stored in it.
/// Anything but a well-formed Argon2id v19 hash never matches.
fn verify_with(secret: &str, stored: &str) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    if phc.algorithm != Algorithm::Argon2id.ident() || phc.version != Some(Version::V0x13.into()) {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) = (Params::try_from(&phc), &phc.salt, &phc.hash)
    else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    argon2id_into(&params, secret.as_bytes(), salt.as_ref(), &mut out).is_ok()
        && crypto::constant_time_eq(&out, expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(cost: Argon2Cost) -> PasswordHasher {
        PasswordHasher::new(
            cost,
            2,
            8,
            std::time::Duration::from_secs(30),
            Arc::new(Metrics::new().unwrap()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn production_hashes_are_argon2id_with_the_documented_cost() {
        let h = hasher(Argon2Cost::PRODUCTION);
        let pw = Password::new_password("correct horse battery staple").unwrap();
        let phc = h.hash(h.reserve().unwrap(), &pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            h.verify(h.reserve().unwrap(), &pw, Some(&phc))
                .await
                .unwrap()
        );
        // Interoperable with the crate's own PHC verification, both ways.
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        assert!(
            Argon2::default()
                .verify_password(pw.expose().as_bytes(), phc.as_str())
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(pw.expose().as_bytes())
            .unwrap()
            .to_string();
        assert!(
            h.verify(h.reserve().unwrap(), &pw, Some(&theirs))
                .await
                .unwrap()
        );
        assert!(
            !h.verify(
                h.reserve().unwrap(),
                &pw,
                Some("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(h.reserve().unwrap(), &pw, Some("not a hash"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn near_misses_and_missing_accounts_fail() {
        let h = hasher(Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        });
        let long = "0123456789".repeat(8);
        let pw = Password::new_password(&long).unwrap();
        let phc = h.hash(h.reserve().unwrap(), &pw).await.unwrap();
        // L5: no truncation at 72 bytes, no case folding.
        let prefix = Password::for_verification(&long[..72]).unwrap();
        assert!(
            !h.verify(h.reserve().unwrap(), &prefix, Some(&phc))
                .await
                .unwrap()
        );
        let upper = Password::new_password("Correct Horse").unwrap();
        let lower_phc = h
            .hash(
                h.reserve().unwrap(),
                &Password::new_password("correct horse").unwrap(),
            )
            .await
            .unwrap();
        assert!(
            !h.verify(h.reserve().unwrap(), &upper, Some(&lower_phc))
                .await
                .unwrap()
        );
        assert!(!h.verify(h.reserve().unwrap(), &pw, None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_gives_no_slot_and_slots_come_back() {
        // Defect 9: the queue is bounded.
        let h = PasswordHasher::new(
            Argon2Cost {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            1,
            2,
            std::time::Duration::from_secs(30),
            Arc::new(Metrics::new().unwrap()),
        )
        .unwrap();
        let a = h.reserve().unwrap();
        let b = h.reserve().unwrap();
        assert!(h.reserve().is_none(), "a third job does not queue");
        drop(a);
        let pw = Password::new_password("correct horse battery").unwrap();
        let phc = h.hash(b, &pw).await.unwrap();
        assert!(
            h.verify(h.reserve().unwrap(), &pw, Some(&phc))
                .await
                .unwrap()
        );
        assert!(h.reserve().is_some() && h.reserve().is_some());
    }

    #[tokio::test]
    async fn a_job_whose_requester_is_gone_is_skipped() {
        // Defect 9: work nobody waits for is not computed.
        let metrics = Arc::new(Metrics::new().unwrap());
        let h = Arc::new(
            PasswordHasher::new(
                Argon2Cost::PRODUCTION,
                1,
                8,
                std::time::Duration::from_secs(30),
                metrics.clone(),
            )
            .unwrap(),
        );
        let pw = Password::new_password("correct horse battery").unwrap();
        // The first job occupies the only thread; the second waits behind it and
        // its requester gives up.
        let busy = {
            let (h, pw) = (
                h.clone(),
                Password::new_password("correct horse battery").unwrap(),
            );
            tokio::spawn(async move { h.hash(h.reserve().unwrap(), &pw).await })
        };
        let waiting = {
            let h2 = h.clone();
            tokio::spawn(async move { h2.hash(h2.reserve().unwrap(), &pw).await })
        };
        // Until the first job runs and the second waits behind it.
        for _ in 0..500 {
            if metrics.argon2_running.get() == 1 && metrics.argon2_waiting.get() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        waiting.abort();
        assert!(busy.await.unwrap().is_ok());
        for _ in 0..200 {
            if metrics.argon2_skipped.get() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.argon2_skipped.get(), 1);
        assert_eq!(metrics.argon2_waiting.get(), 0);
    }
}
