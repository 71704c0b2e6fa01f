//! The boot journal: each gateway's boots, their outcomes and the automatic fallback, as a
//! per-gateway state machine. Pure: no I/O, `now` passed in; the services load the state, apply
//! one transition, and write it back with a conditional write.
//!
//! A boot is `issued`, then `reached_linux` (its secrets URL was redeemed), then `healthy` (its
//! check-in URL was posted). It passes when it reaches its release's [`HealthGate`]. It is
//! `failed` when the gateway asks for a new boot script first, or when the deadline passes.
//! When the release a gateway is meant to boot (its target) has failed `fallback_after`
//! consecutive boots, the gateway boots its last known good release until the target changes
//! or an operator retries.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a release must reach for a boot of it to count as good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthGate {
    /// The booted system fetched its secrets: kernel, initrd and boot2container came up.
    #[default]
    ReachedLinux,
    /// The booted system posted its check-in URL: its services came up.
    Checkin,
}

impl HealthGate {
    pub fn is_default(&self) -> bool {
        *self == HealthGate::ReachedLinux
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthGate::ReachedLinux => "reached_linux",
            HealthGate::Checkin => "checkin",
        }
    }
}

/// Why a boot got the release it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootReason {
    /// The gateway is pinned to the release.
    Pin,
    /// The release is the current one of the gateway's channel.
    Channel,
    /// The target failed too often: the gateway's last known good release instead.
    Fallback,
}

impl BootReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BootReason::Pin => "pin",
            BootReason::Channel => "channel",
            BootReason::Fallback => "fallback",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Issued,
    ReachedLinux,
    Healthy,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::ReachedLinux => "reached_linux",
            Outcome::Healthy => "healthy",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The gateway asked for a new boot script before this boot passed its gate.
    Rebooted,
    /// The gate was not reached before the deadline.
    DeadlinePassed,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Rebooted => "rebooted",
            FailReason::DeadlinePassed => "deadline_passed",
        }
    }
}

/// A signal from a booted system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Its secrets token was redeemed.
    ReachedLinux,
    /// Its check-in URL was posted.
    Checkin,
}

/// One boot script issued, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootRecord {
    /// Random, 32 hex digits.
    pub id: String,
    /// The gateway's boot number (1, 2, …), in the order the boots were recorded.
    #[serde(default)]
    pub seq: u64,
    pub release: String,
    /// What the gateway was meant to boot (differs from `release` on a fallback).
    pub target: String,
    pub reason: BootReason,
    pub gate: HealthGate,
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The client certificate the gateway booted with (a gateway holds two during a renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<crate::domain::identity::Fingerprint>,
    pub issued_at: u64,
    /// The gate must be reached by then (unix seconds).
    pub deadline: u64,
    /// Id of the secrets token of this boot, when the gateway has secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_token: Option<String>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_linux_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<FailReason>,
}

impl BootRecord {
    /// Whether this boot reached its release's gate.
    pub fn passed(&self) -> bool {
        match self.gate {
            // A check-in also proves Linux came up (gateways without secrets signal only so).
            HealthGate::ReachedLinux => self.reached_linux_at.is_some() || self.healthy_at.is_some(),
            HealthGate::Checkin => self.healthy_at.is_some(),
        }
    }

    /// Still waiting for its gate.
    pub fn is_open(&self) -> bool {
        self.outcome != Outcome::Failed && !self.passed()
    }

    /// The outcome as of `now`: an open boot past its deadline has failed, even before the
    /// next boot closes it.
    pub fn outcome_at(&self, now: u64) -> Outcome {
        if self.is_open() && now > self.deadline {
            Outcome::Failed
        } else {
            self.outcome
        }
    }

    /// Ends an open boot as failed.
    fn close(&mut self, now: u64) {
        self.outcome = Outcome::Failed;
        let (at, reason) =
            if now > self.deadline { (self.deadline, FailReason::DeadlinePassed) } else { (now, FailReason::Rebooted) };
        self.failed_at = Some(at);
        self.fail_reason = Some(reason);
    }

    /// Seconds from issue to Linux, when it got there.
    pub fn time_to_linux(&self) -> Option<u64> {
        self.reached_linux_at.map(|t| t.saturating_sub(self.issued_at))
    }

    pub fn time_to_checkin(&self) -> Option<u64> {
        self.healthy_at.map(|t| t.saturating_sub(self.issued_at))
    }
}

/// The last release that passed its gate on a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastGood {
    pub release: String,
    /// The boot that proved it.
    pub boot: String,
    pub at: u64,
}

/// A gateway's boot state: what it is meant to boot, how that went, and what it falls back to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayJournal {
    /// The target of the latest boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Consecutive failed boots of `target`.
    #[serde(default)]
    pub failures: u32,
    /// The release served instead of `target`, until the target changes or an operator retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<LastGood>,
    /// The latest boot: the one a signal can still change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<BootRecord>,
}

/// What the next boot should get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The target.
    Target,
    /// The last known good release, because the target failed `failures` times in a row.
    Fallback { release: String },
}

/// The first half of a boot: the previous boot closed, the failures counted, the choice made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub target: String,
    pub failures: u32,
    pub choice: Choice,
    /// The previous boot, now failed, when it was still open.
    pub closed: Option<BootRecord>,
}

/// Why a signal changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalRefused {
    /// The boot is not the gateway's latest (a newer boot superseded it) or was never recorded.
    #[error("the boot was superseded or is unknown")]
    Superseded,
    /// This signal was already received for this boot.
    #[error("the boot already signalled this")]
    Repeated,
    /// The boot already failed (its deadline passed).
    #[error("the boot's deadline passed")]
    Late,
}

impl GatewayJournal {
    /// Plans a boot of `target` at `now`. `fallback_after` consecutive failures of the target
    /// switch the gateway to its last known good release (0: never).
    pub fn plan(&self, target: &str, fallback_after: u32, now: u64) -> BootPlan {
        let closed = self.latest.clone().filter(BootRecord::is_open).map(|mut boot| {
            boot.close(now);
            boot
        });
        let same_target = self.target.as_deref() == Some(target);
        let mut failures = if same_target { self.failures } else { 0 };
        if let Some(boot) =
            closed.as_ref().filter(|b| same_target && b.release == target && b.reason != BootReason::Fallback)
        {
            debug_assert_eq!(boot.outcome, Outcome::Failed);
            failures = failures.saturating_add(1);
        }
        let sticky = if same_target { self.fallback.clone() } else { None };
        let choice = match sticky {
            Some(release) if fallback_after > 0 => Choice::Fallback { release },
            _ => match &self.last_good {
                Some(good) if fallback_after > 0 && failures >= fallback_after && good.release != target => {
                    Choice::Fallback { release: good.release.clone() }
                }
                _ => Choice::Target,
            },
        };
        BootPlan { target: target.to_string(), failures, choice, closed }
    }

    /// The state after `boot` was issued as planned. `boot.reason` says what was served: the
    /// caller may have refused a planned fallback (release gone, no assets for the arch).
    pub fn after_boot(&self, plan: &BootPlan, mut boot: BootRecord) -> GatewayJournal {
        boot.seq = self.latest.as_ref().map_or(1, |b| b.seq + 1);
        GatewayJournal {
            target: Some(plan.target.clone()),
            failures: plan.failures,
            fallback: (boot.reason == BootReason::Fallback).then(|| boot.release.clone()),
            last_good: self.last_good.clone(),
            latest: Some(boot),
        }
    }

    /// The state after a signal; `key` names the boot: its secrets token id for
    /// [`Signal::ReachedLinux`], its own id for [`Signal::Checkin`] (check-in tokens carry the
    /// boot id, so several can be minted for one boot). The returned record is the boot as
    /// changed.
    pub fn signal(&self, key: &str, signal: Signal, now: u64) -> Result<(GatewayJournal, BootRecord), SignalRefused> {
        let latest = self.latest.as_ref().ok_or(SignalRefused::Superseded)?;
        let matches = match signal {
            Signal::ReachedLinux => latest.secrets_token.as_deref() == Some(key),
            Signal::Checkin => latest.id == key,
        };
        if !matches {
            return Err(SignalRefused::Superseded);
        }
        if latest.outcome == Outcome::Failed || now > latest.deadline {
            return Err(SignalRefused::Late);
        }
        let was_passed = latest.passed();
        let mut boot = latest.clone();
        match signal {
            Signal::ReachedLinux => {
                if boot.reached_linux_at.is_some() {
                    return Err(SignalRefused::Repeated);
                }
                boot.reached_linux_at = Some(now);
                if boot.outcome == Outcome::Issued {
                    boot.outcome = Outcome::ReachedLinux;
                }
            }
            Signal::Checkin => {
                if boot.healthy_at.is_some() {
                    return Err(SignalRefused::Repeated);
                }
                boot.healthy_at = Some(now);
                boot.outcome = Outcome::Healthy;
            }
        }
        let mut next = self.clone();
        if boot.passed() && !was_passed {
            next.last_good = Some(LastGood { release: boot.release.clone(), boot: boot.id.clone(), at: now });
            if next.target.as_deref() == Some(boot.release.as_str()) {
                next.failures = 0;
            }
        }
        next.latest = Some(boot.clone());
        Ok((next, boot))
    }

    /// An operator's retry: the target gets another chance.
    pub fn retry(&self) -> GatewayJournal {
        GatewayJournal { failures: 0, fallback: None, ..self.clone() }
    }

    /// Whether the gateway is on its fallback release.
    pub fn in_fallback(&self) -> bool {
        self.fallback.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: u64 = 600;

    fn issue(
        state: &GatewayJournal,
        target: &str,
        fallback_after: u32,
        gate: HealthGate,
        n: u64,
    ) -> (GatewayJournal, BootRecord, BootPlan) {
        let now = n * 100;
        let plan = state.plan(target, fallback_after, now);
        let (release, reason) = match &plan.choice {
            Choice::Target => (target.to_string(), BootReason::Channel),
            Choice::Fallback { release } => (release.clone(), BootReason::Fallback),
        };
        let boot = BootRecord {
            id: format!("{n:032x}"),
            seq: 0,
            release,
            target: target.into(),
            reason,
            gate,
            arch: "x86_64".into(),
            platform: None,
            mac: None,
            cert: None,
            issued_at: now,
            deadline: now + DEADLINE,
            secrets_token: Some(format!("s{n}")),
            outcome: Outcome::Issued,
            reached_linux_at: None,
            healthy_at: None,
            failed_at: None,
            fail_reason: None,
        };
        let next = state.after_boot(&plan, boot);
        let boot = next.latest.clone().unwrap();
        assert_eq!(boot.seq, state.latest.as_ref().map_or(1, |b| b.seq + 1));
        (next, boot, plan)
    }

    fn good(state: &GatewayJournal, boot: &BootRecord) -> GatewayJournal {
        state.signal(boot.secrets_token.as_deref().unwrap(), Signal::ReachedLinux, boot.issued_at + 5).unwrap().0
    }

    #[test]
    fn failed_boots_fall_back_to_last_good_and_a_new_target_clears_it() {
        let (s, a1, _) = issue(&GatewayJournal::default(), "A", 2, HealthGate::ReachedLinux, 1);
        let s = good(&s, &a1);
        assert_eq!(s.last_good.as_ref().unwrap().release, "A");
        let (s, b1, _) = issue(&s, "B", 2, HealthGate::ReachedLinux, 2);
        assert_eq!(b1.release, "B");
        let (s, b2, p) = issue(&s, "B", 2, HealthGate::ReachedLinux, 3);
        assert_eq!((b2.release.as_str(), p.failures), ("B", 1));
        assert_eq!(p.closed.as_ref().unwrap().fail_reason, Some(FailReason::Rebooted));
        let (s, f1, p) = issue(&s, "B", 2, HealthGate::ReachedLinux, 4);
        assert_eq!((f1.release.as_str(), f1.reason, p.failures), ("A", BootReason::Fallback, 2));
        assert!(s.in_fallback());
        // Sticky: a good fallback boot does not bring B back, nor does a failed one count.
        let s = good(&s, &f1);
        let (s, f2, p) = issue(&s, "B", 2, HealthGate::ReachedLinux, 5);
        assert_eq!((f2.release.as_str(), p.failures), ("A", 2));
        let (s, f3, p) = issue(&s, "B", 2, HealthGate::ReachedLinux, 6);
        assert_eq!((f3.release.as_str(), p.failures), ("A", 2));
        // A promote (new target) clears the fallback.
        let (s, c1, p) = issue(&s, "C", 2, HealthGate::ReachedLinux, 7);
        assert_eq!((c1.release.as_str(), c1.reason, p.failures), ("C", BootReason::Channel, 0));
        assert!(!s.in_fallback());
        // Retry clears it too.
        let (s, _, _) = issue(&s, "C", 2, HealthGate::ReachedLinux, 8);
        let (s, f, _) = issue(&s, "C", 2, HealthGate::ReachedLinux, 9);
        assert_eq!(f.release, "A");
        let s = s.retry();
        let (_, c, p) = issue(&s, "C", 2, HealthGate::ReachedLinux, 10);
        assert_eq!((c.release.as_str(), p.failures), ("C", 0));
    }

    #[test]
    fn no_fallback_without_last_good_or_when_disabled_or_to_the_target_itself() {
        let mut s = GatewayJournal::default();
        for n in 1..6 {
            let (next, b, _) = issue(&s, "B", 2, HealthGate::ReachedLinux, n);
            assert_eq!(b.release, "B", "no last good: the target is served");
            s = next;
        }
        assert_eq!(s.failures, 4);
        let (s, a, _) = issue(&GatewayJournal::default(), "A", 0, HealthGate::ReachedLinux, 1);
        let mut s = good(&s, &a);
        for n in 2..6 {
            let (next, b, _) = issue(&s, "B", 0, HealthGate::ReachedLinux, n);
            assert_eq!(b.release, "B", "fallback_after 0 disables");
            s = next;
        }
        // Last good is the target itself: nothing else to fall back to.
        let (s, a, _) = issue(&GatewayJournal::default(), "A", 1, HealthGate::ReachedLinux, 1);
        let mut s = good(&s, &a);
        for n in 2..5 {
            let (next, b, _) = issue(&s, "A", 1, HealthGate::ReachedLinux, n);
            assert_eq!(b.release, "A");
            s = next;
        }
    }

    #[test]
    fn checkin_gate_needs_the_checkin_and_reached_linux_alone_fails_it() {
        let (s, a, _) = issue(&GatewayJournal::default(), "A", 1, HealthGate::ReachedLinux, 1);
        let s = good(&s, &a);
        let (s, b, _) = issue(&s, "B", 1, HealthGate::Checkin, 2);
        let s = good(&s, &b);
        assert_eq!(s.latest.as_ref().unwrap().outcome, Outcome::ReachedLinux);
        assert_eq!(s.last_good.as_ref().unwrap().release, "A", "reached_linux does not pass a checkin gate");
        let (s, f, p) = issue(&s, "B", 1, HealthGate::Checkin, 3);
        assert_eq!((f.release.as_str(), p.failures), ("A", 1));
        // With the check-in it passes and becomes last good.
        let s = s.retry();
        let (s, b, _) = issue(&s, "B", 1, HealthGate::Checkin, 4);
        let (s, rec) = s.signal(&format!("{:032x}", 4), Signal::Checkin, 405).unwrap();
        assert_eq!(rec.outcome, Outcome::Healthy);
        assert_eq!(s.last_good.as_ref().unwrap().release, "B");
        assert_eq!(s.last_good.as_ref().unwrap().boot, b.id);
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn signals_are_single_use_bound_to_the_latest_boot_and_to_the_deadline() {
        let (s, b1, _) = issue(&GatewayJournal::default(), "A", 2, HealthGate::Checkin, 1);
        assert_eq!(
            s.signal(&format!("{:032x}", 1), Signal::ReachedLinux, 101),
            Err(SignalRefused::Superseded),
            "a check-in token is not a secrets token"
        );
        assert_eq!(s.signal("nope", Signal::Checkin, 101), Err(SignalRefused::Superseded));
        assert_eq!(s.signal(&format!("{:032x}", 1), Signal::Checkin, 100 + DEADLINE + 1), Err(SignalRefused::Late));
        let (s2, _) = s.signal(&format!("{:032x}", 1), Signal::Checkin, 101).unwrap();
        assert_eq!(s2.signal(&format!("{:032x}", 1), Signal::Checkin, 102), Err(SignalRefused::Repeated));
        // A check-in without a redemption passes a reached_linux gate too (no secrets).
        let (_, r) = issue(&GatewayJournal::default(), "A", 2, HealthGate::ReachedLinux, 1)
            .0
            .signal(&format!("{:032x}", 1), Signal::Checkin, 101)
            .unwrap();
        assert!(r.passed());
        // A newer boot supersedes the older one's tokens.
        let (s3, _, p) = issue(&s, "A", 2, HealthGate::Checkin, 2);
        assert_eq!(p.closed.unwrap().id, b1.id);
        assert_eq!(s3.signal(&format!("{:032x}", 1), Signal::Checkin, 201), Err(SignalRefused::Superseded));
    }

    #[test]
    fn outcomes_over_time() {
        let (s, b, _) = issue(&GatewayJournal::default(), "A", 2, HealthGate::ReachedLinux, 1);
        assert_eq!(b.outcome_at(101), Outcome::Issued);
        assert_eq!(b.outcome_at(100 + DEADLINE + 1), Outcome::Failed);
        let (_, _, p) = issue(&s, "A", 2, HealthGate::ReachedLinux, 20);
        let closed = p.closed.unwrap();
        assert_eq!((closed.outcome, closed.fail_reason), (Outcome::Failed, Some(FailReason::DeadlinePassed)));
        assert!(closed.failed_at.unwrap() <= closed.deadline);
        let (_, r) = s.signal("s1", Signal::ReachedLinux, 130).unwrap();
        assert_eq!((r.time_to_linux(), r.time_to_checkin()), (Some(30), None));
    }

    /// Every sequence of up to five events over two targets, three gates and two thresholds
    /// keeps the invariants.
    #[test]
    fn state_machine_invariants_hold_for_every_short_sequence() {
        #[derive(Clone, Copy, Debug)]
        enum Event {
            Boot(&'static str),
            Redeem,
            Checkin,
            Retry,
        }
        let events = [Event::Boot("A"), Event::Boot("B"), Event::Redeem, Event::Checkin, Event::Retry];
        let mut checked = 0;
        for fallback_after in [0u32, 1, 2] {
            for gate in [HealthGate::ReachedLinux, HealthGate::Checkin] {
                let mut stack: Vec<(GatewayJournal, Vec<Event>)> = vec![(GatewayJournal::default(), vec![])];
                while let Some((state, path)) = stack.pop() {
                    if path.len() == 6 {
                        continue;
                    }
                    for event in events {
                        let n = path.len() as u64 + 1;
                        let next = match event {
                            Event::Boot(target) => {
                                let (next, boot, plan) = issue(&state, target, fallback_after, gate, n);
                                // Never fall back to the target, to nothing good, or when disabled.
                                if boot.reason == BootReason::Fallback {
                                    assert!(fallback_after > 0, "{path:?}");
                                    assert_ne!(boot.release, target, "{path:?}");
                                    assert_eq!(
                                        Some(&boot.release),
                                        state.last_good.as_ref().map(|g| &g.release),
                                        "{path:?}"
                                    );
                                } else {
                                    assert_eq!(boot.release, target);
                                }
                                if state.target.as_deref() != Some(target) {
                                    assert_eq!(plan.failures, 0, "{path:?}");
                                }
                                assert!(plan.failures <= state.failures + 1, "{path:?}");
                                if let Some(closed) = &plan.closed {
                                    assert_eq!(closed.outcome, Outcome::Failed);
                                    assert!(!closed.passed());
                                }
                                next
                            }
                            Event::Redeem | Event::Checkin => {
                                let Some(latest) = &state.latest else { continue };
                                let (signal, token) = match event {
                                    Event::Redeem => (Signal::ReachedLinux, latest.secrets_token.clone().unwrap()),
                                    _ => (Signal::Checkin, latest.id.clone()),
                                };
                                match state.signal(&token, signal, latest.issued_at + 1) {
                                    Ok((next, boot)) => {
                                        assert_eq!(next.latest.as_ref(), Some(&boot));
                                        if boot.passed() {
                                            assert_eq!(
                                                next.last_good.as_ref().map(|g| g.release.as_str()),
                                                Some(boot.release.as_str()),
                                                "{path:?}"
                                            );
                                        }
                                        // A signal never changes the target or the fallback.
                                        assert_eq!((&next.target, &next.fallback), (&state.target, &state.fallback));
                                        next
                                    }
                                    Err(_) => {
                                        continue;
                                    }
                                }
                            }
                            Event::Retry => state.retry(),
                        };
                        // The fallback release is always the last good one, and never the target.
                        if let Some(fallback) = &next.fallback {
                            assert_ne!(Some(fallback), next.target.as_ref(), "{path:?} {event:?}");
                        }
                        let json = serde_json::to_string(&next).unwrap();
                        assert_eq!(serde_json::from_str::<GatewayJournal>(&json).unwrap(), next);
                        checked += 1;
                        let mut path = path.clone();
                        path.push(event);
                        stack.push((next, path));
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
