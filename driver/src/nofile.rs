//! The plugin's open-file limit. The plugin holds about three files per task it runs (the
//! shim's control socket and two cgroup counter files, docs/operator-guide.md), so a node
//! with thousands of tasks needs more than the usual soft limit of 1,024: the plugin raises
//! its soft RLIMIT_NOFILE to the hard limit at start, and says so in its log.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// What the plugin could do about its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// The soft limit went from `from` to `to` (the hard limit).
    To { from: u64, to: u64 },
    /// The soft limit already was the hard limit.
    AlreadyAtHard(u64),
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
pub fn raise() -> nix::Result<Raised> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(Raised::AlreadyAtHard(soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(Raised::To {
        from: soft,
        to: hard,
    })
}

/// Raises the limit and logs the outcome with the number of tasks it allows.
pub fn raise_and_log() {
    match raise() {
        Ok(Raised::To { from, to }) => tracing::info!(
            from,
            to,
            tasks_at_3_fds_each = to / 3,
            "raised the plugin's open-file limit (soft RLIMIT_NOFILE) to the hard limit"
        ),
        Ok(Raised::AlreadyAtHard(limit)) => tracing::info!(
            limit,
            tasks_at_3_fds_each = limit / 3,
            "the plugin's open-file limit (RLIMIT_NOFILE) is already at the hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot raise the plugin's open-file limit (RLIMIT_NOFILE); raise LimitNOFILE of the Nomad agent's service instead (docs/operator-guide.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower the soft limit by one (allowed for any process; harmless to the tests
        // running beside this one), then raise it back.
        setrlimit(Resource::RLIMIT_NOFILE, hard - 1, hard).unwrap();
        assert_eq!(
            raise().unwrap(),
            Raised::To {
                from: hard - 1,
                to: hard
            }
        );
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        assert_eq!(raise().unwrap(), Raised::AlreadyAtHard(hard));
    }
}
