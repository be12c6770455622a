//! Account lookup in the sprite's own /etc/passwd and /etc/group.

use super::files::read_text_or_empty;
use std::path::Path;

/// Largest account file PID 1 reads (a sprite controls its own /etc).
const ACCOUNT_FILE_MAX: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    pub groups: Vec<u32>,
}

/// Finds `name` (or a numeric uid) in passwd/group text.
pub fn find_account(passwd: &str, group: &str, name: &str) -> Option<Account> {
    let numeric: Option<u32> = name.parse().ok();
    let fields: Vec<&str> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 7 && (f[0] == name || numeric.is_some_and(|n| f[2].parse() == Ok(n)))
        })?;
    let uid = fields[2].parse().ok()?;
    let gid = fields[3].parse().ok()?;
    let account_name = fields[0].to_string();
    let mut groups = vec![gid];
    for line in group.lines() {
        let g: Vec<&str> = line.split(':').collect();
        if g.len() >= 4 && g[3].split(',').any(|m| m == account_name) {
            if let Ok(id) = g[2].parse::<u32>() {
                if !groups.contains(&id) {
                    groups.push(id);
                }
            }
        }
    }
    Some(Account {
        name: account_name,
        uid,
        gid,
        home: fields[5].to_string(),
        shell: fields[6].to_string(),
        groups,
    })
}

/// Looks up an account in the running sprite's files.
pub fn lookup(name: &str) -> Option<Account> {
    let passwd = read_text_or_empty(Path::new("/etc/passwd"), ACCOUNT_FILE_MAX);
    let group = read_text_or_empty(Path::new("/etc/group"), ACCOUNT_FILE_MAX);
    find_account(&passwd, &group, name).or_else(|| {
        (name == "root").then(|| Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
            groups: vec![0],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nsprite:x:1000:1000::/home/sprite:/bin/bash\n";
    const GROUP: &str =
        "root:x:0:\nsudo:x:27:sprite\ntty:x:5:\nsprite:x:1000:\nusers:x:100:other,sprite\n";

    #[test]
    fn finds_user_and_groups() {
        let account = find_account(PASSWD, GROUP, "sprite").expect("found");
        assert_eq!(account.uid, 1000);
        assert_eq!(account.home, "/home/sprite");
        assert_eq!(account.groups, vec![1000, 27, 100]);
        assert_eq!(
            find_account(PASSWD, GROUP, "1000").map(|a| a.name),
            Some("sprite".into())
        );
        assert_eq!(find_account(PASSWD, GROUP, "nobody"), None);
    }
}
