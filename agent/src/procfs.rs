//! Small readers of procfs and filesystem facts shared by the inventory (`hardware`) and
//! the telemetry sampler (`telemetry`), so neither depends on the other.

use std::path::Path;

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
}

/// Parses `/proc/self/mounts` (octal escapes such as `\040` for a space are decoded).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                let code: String = chars.by_ref().take(3).collect();
                match u8::from_str_radix(&code, 8) {
                    Ok(b) => out.push(b as char),
                    Err(_) => {
                        out.push('\\');
                        out.push_str(&code);
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Mount {
                device: unescape(f.next()?),
                mountpoint: unescape(f.next()?),
                fstype: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The mount holding `path` (the longest mountpoint that is a prefix of it).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.len())
}

/// Size and free space of the filesystem holding `path`: (size, available to
/// unprivileged users, free), in bytes.
pub fn statvfs_bytes(path: &Path) -> Option<(u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = s.fragment_size() as u64;
    Some((
        s.blocks() as u64 * unit,
        s.blocks_available() as u64 * unit,
        s.blocks_free() as u64 * unit,
    ))
}

/// `/proc/meminfo`: a field in bytes.
pub fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}
