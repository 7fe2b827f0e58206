//! /proc readers shared by the load drivers (Linux only).

use std::collections::HashSet;

/// Socket inodes of a process, from /proc/<pid>/fd.
pub fn socket_inodes(pid: u32) -> Option<HashSet<String>> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            if let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    Some(inodes)
}
