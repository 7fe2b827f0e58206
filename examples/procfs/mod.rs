//! /proc readers shared by the load drivers (Linux only).

// Each driver includes this file as a module of its own and uses a part of it.
#![allow(dead_code)]

use std::collections::HashSet;

/// Socket inodes of a process, from /proc/<pid>/fd.
pub(crate) fn socket_inodes(pid: u32) -> Option<HashSet<String>> {
    descriptors(pid).map(|(sockets, _)| sockets)
}

/// A process's file descriptors in one pass over /proc/<pid>/fd: the inodes
/// of its sockets, and how many others it holds (files, pipes, eventfds,
/// epoll and timer descriptors). One pass, so that the two agree with each
/// other while descriptors come and go.
pub(crate) fn descriptors(pid: u32) -> Option<(HashSet<String>, usize)> {
    let mut inodes = HashSet::new();
    let mut other = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        // A descriptor closed between the listing and this read is gone.
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        match target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            Some(inode) => {
                inodes.insert(inode.to_owned());
            }
            None => other += 1,
        }
    }
    Some((inodes, other))
}
