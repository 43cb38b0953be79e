//! Key permissions (etcd's `range_perm_cache.go`): whether the union of a user's granted
//! intervals covers a requested key or range. Intervals are half-open `[key, end)`; a
//! permission without a range end covers one key, and the range end `"\0"` means "every key
//! from `key` on".

use etcd_proto::authpb::{permission::Type, Permission};

/// What an operation needs on its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// One granted interval: `[start, end)`, `end == None` meaning unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// The key just after `key` (the end of a single-key interval).
fn after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    let end = match range_end {
        [] => Some(after(key)),
        [0] => None,
        e => Some(e.to_vec()),
    };
    Interval {
        start: key.to_vec(),
        end,
    }
}

/// Whether `perm` grants `need`: READWRITE grants both.
fn grants(perm: &Permission, need: Need) -> bool {
    match Type::try_from(perm.perm_type) {
        Ok(Type::Readwrite) => true,
        Ok(Type::Read) => need == Need::Read,
        Ok(Type::Write) => need == Need::Write,
        Err(_) => false,
    }
}

/// True when `perms` (the permissions of all of a user's roles) cover `need` on the key
/// `key` (`range_end` empty) or on the range `[key, range_end)` (`"\0"`: to the end).
pub fn permitted<'a>(
    perms: impl IntoIterator<Item = &'a Permission>,
    need: Need,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let mut ivs: Vec<Interval> = perms
        .into_iter()
        .filter(|p| grants(p, need))
        .map(|p| interval(&p.key, &p.range_end))
        .collect();
    ivs.sort_by(|a, b| a.start.cmp(&b.start));
    let want = interval(key, range_end);
    // Sweep from the start of the wanted range: each interval that begins at or before the
    // covered point extends it; a gap before the wanted end means not covered.
    let mut covered_to: Vec<u8> = want.start.clone();
    for iv in ivs {
        if iv.start > covered_to {
            break;
        }
        match iv.end {
            None => return true,
            Some(end) if end > covered_to => covered_to = end,
            Some(_) => {}
        }
        if want.end.as_ref().is_some_and(|e| covered_to >= *e) {
            return true;
        }
    }
    false
}

/// etcd's `isValidPermissionRange`: a non-empty key, and a range end that is empty, `"\0"`
/// (open) or after the key.
pub fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || range_end > key || range_end[0] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    #[test]
    fn single_keys_ranges_and_unions() {
        let perms = [p(Type::Read, "a", ""), p(Type::Readwrite, "b", "d")];
        assert!(permitted(&perms, Need::Read, b"a", b""));
        assert!(!permitted(&perms, Need::Write, b"a", b""));
        assert!(
            !permitted(&perms, Need::Read, b"a", b"b"),
            "a\\0.. is not granted"
        );
        assert!(permitted(&perms, Need::Write, b"b", b"d"));
        assert!(permitted(&perms, Need::Read, b"bz", b""));
        assert!(!permitted(&perms, Need::Read, b"b", b"e"));
        assert!(!permitted(&perms, Need::Read, b"d", b""));
        // Two adjacent intervals make one.
        let perms = [p(Type::Write, "a", "c"), p(Type::Write, "c", "f")];
        assert!(permitted(&perms, Need::Write, b"a", b"f"));
        assert!(!permitted(&perms, Need::Write, b"a", b"g"));
        assert!(!permitted(&perms, Need::Write, b"a", b"\0"));
        // Open ends.
        let perms = [p(Type::Read, "m", "\0")];
        assert!(permitted(&perms, Need::Read, b"m", b"\0"));
        assert!(permitted(&perms, Need::Read, b"zzz", b""));
        assert!(!permitted(&perms, Need::Read, b"a", b"\0"));
        assert!(!permitted(&[], Need::Read, b"a", b""));
        // A bad type grants nothing.
        let bad = Permission {
            perm_type: 9,
            key: b"a".to_vec(),
            range_end: vec![],
        };
        assert!(!permitted(&[bad], Need::Read, b"a", b""));
    }

    #[test]
    fn permission_ranges() {
        assert!(valid_range(b"a", b""));
        assert!(valid_range(b"a", b"b"));
        assert!(valid_range(b"a", b"\0"));
        assert!(!valid_range(b"", b""));
        assert!(!valid_range(b"b", b"a"));
        assert!(!valid_range(b"b", b"b"));
    }
}
