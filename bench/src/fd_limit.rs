//! The open-file limit of the bench, and of the `flashsale-api` it starts, which inherits
//! it: live-stock holds 10,000 connections open at both ends, one descriptor each, and a
//! usual soft limit is 1,024. The bench raises its own limit; the product is left as an
//! operator would run it.

use anyhow::bail;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (which needs no
/// privilege), before any server is started; fails when the result is below `needed`.
pub fn raise(needed: u64) -> anyhow::Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    if limit < needed {
        let (_, hard) = rlimit::Resource::NOFILE.get()?;
        bail!(
            "live-stock needs {needed} open files in the bench and in the server, but the \
             hard limit is {hard}: raise it (`ulimit -Hn {needed}` as root, or `LimitNOFILE=` \
             in the service manager) and run the bench again"
        );
    }
    Ok(limit)
}
