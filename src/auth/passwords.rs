//! Argon2id hashing on the blocking pool behind a semaphore: a flood of sign-ins
//! queues instead of allocating 19 MiB per request until memory runs out.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;
use crate::metrics::Metrics;
use crate::settings::Argon2Cost;

pub struct PasswordHasher {
    params: Params,
    permits: Semaphore,
    /// A real hash of a random password, verified against when the account does not
    /// exist, so a missing user costs the same time as a wrong password.
    dummy_hash: String,
    metrics: Arc<Metrics>,
}

impl PasswordHasher {
    pub fn new(
        cost: Argon2Cost,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| anyhow!("argon2 parameters: {e}"))?;
        let dummy_hash = hash_with(&params, &crate::crypto::random_token())?;
        Ok(Self {
            params,
            permits: Semaphore::new(concurrency.max(1)),
            dummy_hash,
            metrics,
        })
    }

    /// PHC string (`$argon2id$v=19$m=…`) of a new password.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let params = self.params.clone();
        let secret = password.expose().to_string();
        self.run(move || hash_with(&params, &secret)).await?
    }

    /// Whether `password` matches `stored`; with `None` (no such account) it does the
    /// same work against the dummy hash and answers false.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> anyhow::Result<bool> {
        let (hash, real) = match stored {
            Some(h) => (h.to_string(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let secret = password.expose().to_string();
        let matched = self
            .run(move || {
                Argon2::default()
                    .verify_password(secret.as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await?;
        Ok(real && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.metrics.argon2_waiting.inc();
        let permit = self.permits.acquire().await;
        self.metrics.argon2_waiting.dec();
        let _permit = permit.context("argon2 semaphore closed")?;
        self.metrics.argon2_running.inc();
        let result = tokio::task::spawn_blocking(work).await;
        self.metrics.argon2_running.dec();
        result.context("argon2 task failed")
    }
}

fn hash_with(params: &Params, secret: &str) -> anyhow::Result<String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow!("argon2 hash: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(cost: Argon2Cost) -> PasswordHasher {
        PasswordHasher::new(cost, 2, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn production_hashes_are_argon2id_with_the_documented_cost() {
        let h = hasher(Argon2Cost::PRODUCTION);
        let pw = Password::new_password("correct horse battery staple").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify(&pw, Some(&phc)).await.unwrap());
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
        let phc = h.hash(&pw).await.unwrap();
        // L5: no truncation at 72 bytes, no case folding.
        let prefix = Password::for_verification(&long[..72]).unwrap();
        assert!(!h.verify(&prefix, Some(&phc)).await.unwrap());
        let upper = Password::new_password("Correct Horse").unwrap();
        let lower_phc = h
            .hash(&Password::new_password("correct horse").unwrap())
            .await
            .unwrap();
        assert!(!h.verify(&upper, Some(&lower_phc)).await.unwrap());
        assert!(!h.verify(&pw, None).await.unwrap());
    }
}
