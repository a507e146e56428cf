//! Permissions, stored on a role as comma-separated names and held in memory as a bit set so
//! that a permission check on the hot path is one AND.

use async_graphql::Enum;

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    SuperAdmin,
    ReadSession,
    RevokeSession,
    ReadUser,
    WriteUser,
    ReadChannel,
    WriteChannel,
    ReadOrder,
    WriteOrder,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::SuperAdmin,
        Permission::ReadSession,
        Permission::RevokeSession,
        Permission::ReadUser,
        Permission::WriteUser,
        Permission::ReadChannel,
        Permission::WriteChannel,
        Permission::ReadOrder,
        Permission::WriteOrder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::SuperAdmin => "SUPER_ADMIN",
            Permission::ReadSession => "READ_SESSION",
            Permission::RevokeSession => "REVOKE_SESSION",
            Permission::ReadUser => "READ_USER",
            Permission::WriteUser => "WRITE_USER",
            Permission::ReadChannel => "READ_CHANNEL",
            Permission::WriteChannel => "WRITE_CHANNEL",
            Permission::ReadOrder => "READ_ORDER",
            Permission::WriteOrder => "WRITE_ORDER",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of permissions as a bit mask.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PermissionSet(pub u16);

impl PermissionSet {
    /// Every permission.
    pub fn all() -> PermissionSet {
        Permission::ALL.into_iter().collect()
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Whether every permission of `other` is in this set.
    pub fn contains_all(self, other: PermissionSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    pub fn union(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 | other.0)
    }

    /// The permissions of the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    pub fn to_vec(self) -> Vec<Permission> {
        self.iter().collect()
    }

    /// Parses the stored form; unknown names (from a newer version) are ignored.
    pub fn from_stored(s: &str) -> PermissionSet {
        let mut set = PermissionSet::default();
        for name in s.split(',').map(str::trim) {
            if let Some(p) = Permission::ALL.into_iter().find(|p| p.name() == name) {
                set.insert(p);
            }
        }
        set
    }

    pub fn to_stored(self) -> String {
        self.to_vec()
            .into_iter()
            .map(Permission::name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = PermissionSet::default();
        for p in iter {
            set.insert(p);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        let set: PermissionSet = [Permission::ReadSession, Permission::WriteOrder]
            .into_iter()
            .collect();
        assert_eq!(set.to_stored(), "READ_SESSION,WRITE_ORDER");
        assert_eq!(PermissionSet::from_stored(&set.to_stored()), set);
        assert!(set.contains(Permission::ReadSession));
        assert!(!set.contains(Permission::SuperAdmin));
        assert_eq!(
            PermissionSet::from_stored("BOGUS,,READ_USER").to_vec(),
            vec![Permission::ReadUser]
        );
    }
}
