//! The worker's stop signal: fired once, remembered by every holder (a task that starts waiting
//! after it fired returns at once).

use tokio::sync::watch;

/// Fires the stop signal.
pub struct Trigger(watch::Sender<bool>);

/// Waits for the stop signal; cheap to clone, one per task.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new stop signal and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Fires: every `recv`, current and future, returns.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Returns once the signal fired (at once if it already has, or if the trigger is gone).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// Whether the signal has fired.
    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fired_signal_is_remembered_by_every_holder() {
        let (trigger, shutdown) = channel();
        let mut early = shutdown.clone();
        let waiting = tokio::spawn(async move { early.recv().await });
        assert!(!shutdown.fired());
        trigger.fire();
        waiting.await.expect("woken");
        let mut late = shutdown.clone();
        late.recv().await;
        assert!(late.fired());
    }
}
