//! A user who can log in with an identifier and a password.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique login name (an email address or user name), at most 255 bytes, stored in the
    /// form of [`normalize_identifier`]; compared byte for byte (a binary collation on MySQL).
    #[sea_orm(unique)]
    pub identifier: String,
    /// PHC string of an argon2id hash.
    #[sea_orm(column_type = "Text")]
    pub password_hash: String,
    pub verified: bool,
    pub created_at: i64,
    pub last_login_at: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}

/// The one form in which identifiers are stored, looked up and counted: trimmed, lower-cased
/// and in Unicode NFC, so `" Admin"`, `"ADMIN "` and `"admin"` are one identifier.
///
/// Lower-casing comes before NFC because it can produce sequences NFC composes.
pub fn normalize_identifier(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    raw.trim().to_lowercase().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::normalize_identifier;

    #[test]
    fn identifiers_have_one_form() {
        assert_eq!(normalize_identifier("  Admin \t"), "admin");
        // "é" precomposed and as "e" + combining acute are one identifier.
        assert_eq!(
            normalize_identifier("Jos\u{e9}"),
            normalize_identifier("JOSE\u{301}")
        );
        assert_eq!(normalize_identifier("Jos\u{e9}"), "jos\u{e9}");
        for s in ["ADMIN", " \u{130}stanbul ", "Stra\u{df}e", "A\u{30a}"] {
            let once = normalize_identifier(s);
            assert_eq!(normalize_identifier(&once), once, "{s}");
        }
    }
}
