//! Shares of the engine's global limits, so that no one guest user fills one: a user
//! other than root holds at most a quarter of each, and all of them together leave an
//! eighth to root and the host.

use crate::error::{Errno, Error, Result};
use crate::security::Uid;

/// Whether one more entry owned by `uid` fits a limit of `cap` `what` of which `total`
/// are held; `held_by_uid` counts `uid`'s own, and runs only when that can matter.
pub(crate) fn admit(
    what: &str,
    subject: &str,
    cap: usize,
    total: usize,
    uid: Uid,
    held_by_uid: impl FnOnce() -> usize,
) -> Result<()> {
    let refuse = |reason: String| Err(Error::new(Errno::Enomem, subject, reason));
    if total >= cap {
        return refuse(format!("at most {cap} {what}"));
    }
    if uid == 0 {
        return Ok(());
    }
    let kept = cap / 8;
    if total >= cap - kept {
        return refuse(format!(
            "the last {kept} of the {cap} {what} are kept for root"
        ));
    }
    let share = cap / 4;
    if total >= share {
        let held = held_by_uid();
        if held >= share {
            return refuse(format!(
                "uid {uid} holds {held} of the {cap} {what}, one user's share"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_a_quarter_and_root_the_last_eighth() {
        let ok = |total, uid, held| admit("things", "x", 64, total, uid, || held).is_ok();
        assert!(ok(15, 1000, 15));
        assert!(!ok(16, 1000, 16), "a quarter is one user's share");
        assert!(
            ok(40, 1000, 8),
            "others' entries do not count against this user"
        );
        assert!(!ok(56, 1001, 0), "the last eighth is kept for root");
        assert!(ok(63, 0, 63));
        assert!(!ok(64, 0, 64), "root is bound by the limit itself");
        let counted = std::cell::Cell::new(false);
        assert!(admit("things", "x", 64, 3, 1000, || {
            counted.set(true);
            3
        })
        .is_ok());
        assert!(!counted.get(), "below a quarter in all, nobody is counted");
    }
}
